"""``python -m wsss_pl label``: warm the pseudo-label cache of the training split on all devices.

Runs as a Lightning predict loop, so ``--trainer.devices N --trainer.strategy ddp`` shards the ids
across processes (Lightning's unrepeated sampler: every id on exactly one rank). Ids already in
the cache are read, not relabelled, so a crashed pass resumes where it stopped. At the end the
pseudo-labels are scored against the ground truth when the split has it (the paper's Tables 1, 3).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from wsss_pl.classes import IGNORE_INDEX
from wsss_pl.data.base import prepare_source
from wsss_pl.data.collate import collate_samples
from wsss_pl.data.datamodule import WSSSDataModule
from wsss_pl.data.label_sources import LabeledDataset
from wsss_pl.diagnosis import ImageErrors, format_diagnosis, from_totals, log_wandb
from wsss_pl.errors import CacheError, DataError
from wsss_pl.evaluation import LabelEvaluation, format_table
from wsss_pl.io import write_json
from wsss_pl.labeling.online import OnlinePseudoLabels
from wsss_pl.metrics import ConfusionMatrix, count_labels, iou_from_confusion
from wsss_pl.progress import Progress
from wsss_pl.review_callback import disagreement, log_review, review_dir

log = logging.getLogger(__name__)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image file's header, without decoding it; (0, 0) if unreadable
    (the sample then fails or is skipped where it is loaded, with the dataset's own error)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, SyntaxError):
        return 0, 0
    return height, width


class _ShapeBatches(torch.utils.data.Dataset):
    """Item k is the k-th shape-batch of ``dataset``: a list of samples of one detector input
    shape. A distributed sampler over these items hands whole batches to ranks, so the rank
    count never changes which images share a detector forward."""

    def __init__(self, dataset: LabeledDataset, batches: list[list[int]]) -> None:
        self.dataset = dataset
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[Any]:
        return [self.dataset[i] for i in self.batches[index]]


def _collate_shape_batch(items: list[list[Any]]) -> dict[str, Any]:
    return collate_samples(items[0])


def pack(batches: list[list[int]], limit: int) -> list[list[int]]:
    """Consecutive shape-batches joined into labelling calls of at most ``limit`` images (a
    batch larger than ``limit`` stays whole): the detector still runs each shape-batch at its
    fixed size, and the SAM encoder pads only the last of its fixed batches per call."""
    calls: list[list[int]] = []
    for batch in batches:
        if calls and len(calls[-1]) + len(batch) <= limit:
            calls[-1].extend(batch)
        else:
            calls.append(list(batch))
    return calls


def shape_batches(
    dataset: LabeledDataset, labels: OnlinePseudoLabels, batch_size: int
) -> list[list[int]]:
    """Indices of ``dataset`` sorted by detector input shape (then size and index), cut into
    batches of at most ``batch_size`` images of one shape: only each shape's last batch is short.
    Image sizes come from the file headers (no decoding); an unreadable file gets a batch of its
    own and fails where it is loaded, with the dataset's error."""
    base = dataset.dataset
    paths = [base.image_path(i) for i in base.ids]  # type: ignore[attr-defined]
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = list(pool.map(image_size, paths))
    keys = sorted(
        (labels.detector_input_size(h, w) if h and w else (1 << 30, index), h, w, index)
        for index, (h, w) in enumerate(sizes)
    )
    batches: list[list[int]] = []
    previous: tuple[int, int] | None = None
    for shape, _, _, index in keys:
        if shape != previous or len(batches[-1]) == batch_size:
            batches.append([])
        batches[-1].append(index)
        previous = shape
    return batches


def spread(calls: list[list[int]], ranks: int) -> list[list[int]]:
    """At least one call per rank where there are enough images (every rank must run the
    predict loop, whose epoch end gathers across ranks): the largest calls are halved."""
    calls = [list(c) for c in calls]
    while len(calls) < ranks and any(len(c) > 1 for c in calls):
        k = max(range(len(calls)), key=lambda j: len(calls[j]))
        call = calls.pop(k)
        calls[k:k] = [call[: len(call) // 2], call[len(call) // 2 :]]
    return calls


class LabelingData(pl.LightningDataModule):
    """The training split of a WSSSDataModule with raw uint8 images (no augmentation).

    When the labeller batches images (``batch_mode`` ``fixed`` or ``free``), the ids are sorted
    by detector input shape (image sizes from the file headers) and cut into whole shape-batches
    of ``detector_batch_size`` (``fixed``) or ``data.batch_size`` (``free``) images; ranks get
    whole batches, packed into calls of up to ``data.batch_size`` images. With ``fixed`` the
    labels are the same whatever the order, batch or rank.
    """

    def __init__(self, data: WSSSDataModule) -> None:
        super().__init__()
        self.data = data

    def prepare_data(self) -> None:
        prepare_source(self.data.source, ("train",))  # the val split need not be there
        self.data.bind_label_device(self.trainer)
        self.data.train_labels.prepare_data(self.data.source)

    def setup(self, stage: str) -> None:
        self.data.bind_label_device(self.trainer)
        self.data.setup("label")

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        labels = self.data.train_labels
        train = self.data.datasets["train"]
        if (
            not isinstance(labels, OnlinePseudoLabels)
            or labels.batch_mode == "per_image"
            or not hasattr(train.dataset, "image_path")
        ):
            return self.data._loader("train", self.data.batch_size, shuffle=False)
        size = labels.detector_batch_size if labels.batch_mode == "fixed" else self.data.batch_size
        start = time.perf_counter()
        world = self.trainer.world_size if self.trainer is not None else 1
        batches = spread(
            pack(shape_batches(train, labels, size), max(size, self.data.batch_size)), world
        )
        log.info(
            "sorted %d ids into %d shape-batches in %.1f s",
            len(train), len(batches), time.perf_counter() - start,
        )  # fmt: skip
        dataset = _ShapeBatches(train, batches)
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)  # whole batches
        workers = self.data.num_workers
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=1,
            sampler=sampler,
            num_workers=workers,
            collate_fn=_collate_shape_batch,
            pin_memory=self.data.pin_memory,
            persistent_workers=workers > 0,
        )


class LabelingModule(pl.LightningModule):
    """Labels each batch's uncached samples and scores every pseudo-label against ground truth.

    Per image it keeps the IoU against ground truth (mean over the classes in either map), the
    image-level classes and the missed ones (prompted, but no pixel in the pseudo-label); the
    ``num_review`` worst images (or, without ground truth, the first ones) are kept for review.
    """

    def __init__(
        self, labels: OnlinePseudoLabels, label_names: list[str], num_review: int = 8
    ) -> None:
        super().__init__()
        self.labels = labels
        self.label_names = list(label_names)  # of label ids 0..C-1, background first
        self.num_classes = len(label_names)
        self.num_review = num_review
        self.quality = ConfusionMatrix(self.num_classes, IGNORE_INDEX)
        self.image_errors = ImageErrors(self.num_classes)  # worst images per class (this rank's)
        self.labelled_ids: list[str] = []
        self.num_cached = 0
        self.scores: dict[str, torch.Tensor] | None = None
        self.totals: tuple[torch.Tensor, torch.Tensor] | None = (
            None  # all ranks' (confmat, pred_ignored)
        )
        self.records: list[dict[str, Any]] = []  # this rank's per-image records
        self.all_records: list[dict[str, Any]] = []  # every rank's, after the epoch
        self._review: list[tuple[float, int, dict[str, Any]]] = []  # heap of (-IoU, n, row)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> int:
        todo = [
            i for i, flag in zip(batch["id"], batch["needs_label"].tolist(), strict=True) if flag
        ]
        self.num_cached += len(batch["id"]) - len(todo)
        if todo:
            self.labels.label_batch(batch)
            self.labelled_ids.extend(todo)
        self._record(batch)
        return len(todo)  # not None: Lightning warns about a None prediction on every call

    def _record(self, batch: dict[str, Any]) -> None:
        """Per image: IoU, missed classes, review rows; pixels are counted once per image and
        the counts feed the quality matrix and the per-class worst images too."""
        names = self.label_names
        totals: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, sample_id in enumerate(batch["id"]):
            height, width = batch["size"][i].tolist()
            label = batch["target"][i, :height, :width]
            classes = [names[c + 1] for c in torch.nonzero(batch["labels"][i]).flatten().tolist()]
            present = torch.bincount(label[label != IGNORE_INDEX].long(), minlength=len(names))
            missed = [n for n in classes if int(present[names.index(n)]) == 0]
            iou = None
            gt = None
            if bool(batch["has_gt"][i]):
                gt = batch["gt"][i, :height, :width]
                confmat, ignored = count_labels(label, gt, self.num_classes, IGNORE_INDEX)
                totals.append((confmat, ignored))
                confusion = torch.cat([confmat, ignored[:, None]], dim=1)
                self.image_errors.add(sample_id, confusion.cpu().numpy())
                per_class = iou_from_confusion(confmat, ignored)
                if not bool(per_class.isnan().all()):
                    iou = float(per_class.nanmean())
            self.records.append({"id": sample_id, "iou": iou, "classes": classes, "missed": missed})
            # Keep the worst (lowest IoU) images; without ground truth, the first ones.
            key = -(iou if iou is not None else float(len(self.records)))
            if len(self._review) >= self.num_review and key <= self._review[0][0]:
                continue
            row = {
                "id": sample_id,
                "image": batch["image"][i, :, :height, :width].permute(1, 2, 0).cpu().numpy(),
                "pseudo_label": label.cpu().numpy(),
            }
            if gt is not None:
                row["ground_truth"] = gt.cpu().numpy()
                row["disagreement"] = disagreement(row["pseudo_label"], row["ground_truth"])
            heapq.heappush(self._review, (key, len(self.records), row))
            if len(self._review) > self.num_review:
                heapq.heappop(self._review)
        if totals:
            confmats, ignored_counts = zip(*totals, strict=True)
            counts = (torch.stack(confmats).sum(0), torch.stack(ignored_counts).sum(0))
            self.quality.update(None, None, counts=counts)

    def review_rows(self) -> list[dict[str, Any]]:
        """This rank's kept images, worst first, with their detections as boxes when cached."""
        rows = [row for _, _, row in sorted(self._review, key=lambda item: -item[0])]
        cache = self.labels.cache
        for row in rows:
            metadata = cache.load_metadata(row["id"]) if cache is not None else None
            if metadata and metadata.get("instances") is not None:
                row["boxes"] = metadata["instances"]
        return rows

    def on_predict_epoch_end(self) -> None:
        self.labels.flush()  # every label on disk before the pass reports it (raises a failure)
        if not self.quality.update_called:
            # No ground truth on this rank (a folder without masks): count nothing, so compute()
            # neither warns that it ran before update() nor skips the ranks' collective sum.
            zeros = torch.zeros_like(self.quality.confmat)
            self.quality.update(None, None, counts=(zeros, zeros[0]))
        self.scores = self.quality.compute()  # sums the confusion matrices of all ranks
        with self.quality.sync_context():
            self.totals = (self.quality.confmat.clone(), self.quality.pred_ignored.clone())
        self.all_records = list(self.records)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.records)
            self.all_records = [r for rank_records in gathered for r in rank_records]


class LabelProgress(Callback):
    """Progress on rank 0 in images (all ranks together) with images/s and ETA: a tqdm bar on a
    terminal, plain lines when stderr is a file."""

    def __init__(self) -> None:
        self.progress: Progress | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            total = len(trainer.datamodule.data.datasets["train"])  # type: ignore[attr-defined]
            self.progress = Progress(total, "labelling", unit="img")

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        progress = self.progress
        if progress is not None and progress.total is not None:
            # Ranks advance in step, so rank 0's count times the world size tracks the total.
            step = min(len(batch["id"]) * trainer.world_size, progress.total - progress.done)
            progress.update(step, labelled=len(pl_module.labelled_ids), cached=pl_module.num_cached)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.progress is not None:
            self.progress.close()


def run_label_pass(trainer: pl.Trainer, data: WSSSDataModule) -> int:
    """Label every uncached id of the training split; print pseudo-label mIoU; return an exit code."""
    labels = data.train_labels
    if not isinstance(labels, OnlinePseudoLabels):
        raise DataError(
            "the label command needs data.train_labels to be wsss_pl.labeling.online.OnlinePseudoLabels "
            f"(the config has {type(labels).__name__})"
        )
    data_for_pass = LabelingData(data)
    # The pass writes the cache itself: no prediction writers, and its own progress bar.
    skip = (ProgressBar, BasePredictionWriter)
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, skip)]
    trainer.callbacks.append(LabelProgress())
    module = LabelingModule(labels, ["background", *data.class_names])
    start = time.perf_counter()
    try:
        trainer.predict(module, datamodule=data_for_pass, return_predictions=False)
    except BaseException:
        with contextlib.suppress(CacheError):  # keep the labels already made; show the crash
            labels.flush()
        raise
    seconds = time.perf_counter() - start
    assert labels.cache is not None
    report = labels.cache.directory / "label_pass" / f"rank{trainer.global_rank}.json"
    padding = {
        name: {"rows": count.rows, "padding_rows": count.padding, "share": round(count.share, 4)}
        for name, count in labels.padding().items()
    }
    clipped = getattr(labels, "num_clipped_boxes", None)  # box prompts only
    try:
        write_json(
            report,
            {"labelled": module.labelled_ids, "cached": module.num_cached, "seconds": round(seconds, 3),
             "missing_classes": dict(labels.missing_counts), "unmatched_boxes": labels.num_unmatched_boxes,
             "padding": padding, **({} if clipped is None else {"clipped_boxes": clipped})},
        )  # fmt: skip
    except OSError as error:  # e.g. a complete cache on read-only storage: the labels are fine
        log.warning("label-pass report %s not written (%s); skipped", report, error.strerror)
    _report(trainer, data, module, seconds)
    return 0


def _write_quality(data: WSSSDataModule, result: LabelEvaluation) -> None:
    """All ranks' pseudo-label mIoU and per-class IoU as ``label_pass/quality.json`` (rank 0)."""
    names = ["background", *data.class_names]
    path = data.train_labels.cache.directory / "label_pass" / "quality.json"  # type: ignore[union-attr]
    payload = {  # percent, as printed (older caches hold fractions and no "unit")
        "unit": "percent",
        "miou": 100 * result.miou,
        "iou": {
            n: (None if np.isnan(v) else 100 * float(v))
            for n, v in zip(names, result.iou, strict=True)
        },
        "num_images": result.num_images,
    }
    try:
        write_json(path, payload)
    except OSError as error:  # a read-only cache: the numbers were printed above
        log.warning("pseudo-label quality %s not written (%s); skipped", path, error.strerror)


PADDING_WARNING = 0.25  # warn when more than this share of a model's rows were padding
# The setting that lowers each model's padding, as a config key.
PADDING_SETTINGS = {
    "detector": (
        "data.train_labels.init_args.detector_batch_size (same-shape images per detector "
        "forward; mixed image sizes leave most forwards short)"
    ),
    "sam_encoder": (
        "data.train_labels.init_args.sam_encoder_batch_size (or raise data.batch_size: each "
        "labelling call pads only its last encoder batch)"
    ),
    "sam_decoder": (
        "data.train_labels.init_args.sam_decoder_batch_size (boxes per decoder call; fewer "
        "pad less but make more calls for crowded images)"
    ),
}


# SAM's decoder is about 1 % of a label's compute on a GPU, so its padding is worth a warning only
# where every decoder row costs real time: on a CPU (about 1 s per padded row for ViT-B, measured
# by scripts/bench_decoder_chunks.py). On a GPU its share is printed, not warned about: a VOC image
# has 1-4 boxes, so a chunk of 8 is mostly padding on every run.
WARN_ONLY_ON_CPU = frozenset({"sam_decoder"})


def report_padding(labels: OnlinePseudoLabels) -> None:
    """Print each model's share of padding rows (this rank; ``batch_mode: fixed`` pads short
    batches to a fixed size) and warn, naming the setting that lowers it, above 25 % (the SAM
    decoder only when labelling on a CPU)."""
    counts = labels.padding()
    if not counts:
        return
    shown = ", ".join(
        f"{name} {100 * c.share:.0f} % ({c.padding} of {c.rows} rows)" for name, c in counts.items()
    )
    print(f"padding rows per model (rank 0): {shown}")
    on_cpu = labels.device is None or labels.device.type == "cpu"
    for name, count in counts.items():
        if name in WARN_ONLY_ON_CPU and not on_cpu:
            continue
        if count.share > PADDING_WARNING:
            log.warning(
                "%s: %.0f %% of its rows were padding (compute spent on no image or box); "
                "to pad less, lower %s",
                name, 100 * count.share, PADDING_SETTINGS.get(name, "its batch size"),
            )  # fmt: skip


WORST_TABLE_ROWS = 100  # rows of the W&B table of the worst pseudo-labels


def worst_records(records: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The ``count`` records with ground truth and the lowest IoU, worst first (ties by id)."""
    scored = [r for r in records if r["iou"] is not None]
    return sorted(scored, key=lambda r: (r["iou"], r["id"]))[:count]


@rank_zero_only
def _report(
    trainer: pl.Trainer, data: WSSSDataModule, module: LabelingModule, seconds: float
) -> None:
    labelled = len(module.labelled_ids)
    rate = labelled / seconds if seconds > 0 else float("nan")
    print(
        f"labelled {labelled} images on rank 0 ({trainer.world_size} ranks), {module.num_cached} read "
        f"from the cache, in {seconds:.1f} s ({rate:.2f} labelled img/s on rank 0); "
        f"cache: {data.train_labels.cache.directory}"  # type: ignore[union-attr]
    )
    missing = data.train_labels.missing_counts  # type: ignore[attr-defined]
    if missing:
        print("prompted classes without a box (rank 0):", dict(missing.most_common()))
    clipped = getattr(data.train_labels, "num_clipped_boxes", None)
    if clipped is not None:
        print(f"boxes past the image edge, clipped to it (rank 0): {clipped}")
    report_padding(data.train_labels)  # type: ignore[arg-type]
    _log_review(trainer, module)
    scores = module.scores
    if scores is None or module.totals is None or int(module.totals[0].sum()) == 0:
        print("no ground truth in this split: pseudo-label quality not measured")
        return
    result = LabelEvaluation(
        confusion=module.totals[0].cpu().numpy(),
        pred_ignored=module.totals[1].cpu().numpy(),
        iou=scores["iou"].cpu().numpy().astype(np.float64),
        miou=float(scores["miou"]),
        num_images=len(data.datasets["train"]),
    )
    print(
        "pseudo-label quality against ground truth (every label at full image size, ground truth "
        "255 ignored, label 255 counted as a miss; fit's training-label mIoU scores augmented "
        "crops instead):"
    )
    print(format_table(result, data.class_names))
    _write_quality(data, result)
    names = ["background", *data.class_names]
    errors, num_images = module.image_errors, result.num_images
    diagnosis = from_totals(result.confusion, result.pred_ignored, names, errors, num_images)
    print(format_diagnosis(diagnosis).replace("worst images", "worst images (rank 0)"))
    if isinstance(trainer.logger, WandbLogger):
        log_wandb(diagnosis, trainer.logger.experiment, prefix="label_pass/diagnosis")
    worst = worst_records(module.all_records, 5)
    if worst:
        shown = ", ".join(
            f"{r['id']} {100 * r['iou']:.1f}" + (f" (missed {'/'.join(r['missed'])})" if r["missed"] else "")
            for r in worst
        )  # fmt: skip
        print(f"worst pseudo-labels (image IoU %): {shown}")
    if trainer.logger is not None:
        values = {"label_pass/mIoU": 100 * float(scores["miou"])}  # percent, as every metric
        names = ["background", *data.class_names]
        values.update(
            {
                f"label_pass/IoU/{n}": 100 * float(v)
                for n, v in zip(names, scores["iou"], strict=True)
                if not torch.isnan(v)
            }
        )
        trainer.logger.log_metrics(values)


def _log_review(trainer: pl.Trainer, module: LabelingModule) -> None:
    """W&B (or other logger) review of the pass: image | pseudo-label | ground truth with the
    detector's boxes for the worst images of rank 0, and a table of the worst pseudo-labels of
    all ranks by IoU against ground truth (id, IoU, classes, missed classes)."""
    logger = trainer.logger
    if logger is None:
        return
    if isinstance(logger, WandbLogger):
        print(
            f"review: W&B run {Path(logger.experiment.dir).parent} "
            "(label_pass/review images, label_pass/worst_labels table)"
        )
    rows = module.review_rows()
    if rows:
        log_review(logger, "label_pass/review", rows, module.label_names, step=0)
        print(f"review images (titled, with a colour legend): {review_dir(logger)}")
    worst = worst_records(module.all_records, WORST_TABLE_ROWS)
    if worst and isinstance(logger, WandbLogger):
        import wandb

        table = wandb.Table(columns=["id", "IoU", "classes", "missed classes"])
        for record in worst:
            table.add_data(
                record["id"],
                round(100 * record["iou"], 2),
                ", ".join(record["classes"]),
                ", ".join(record["missed"]),
            )
        logger.experiment.log({"label_pass/worst_labels": table, "trainer/global_step": 0})
