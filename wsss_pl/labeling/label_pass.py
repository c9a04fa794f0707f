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
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ProgressBar

from wsss_pl.classes import IGNORE_INDEX
from wsss_pl.data.datamodule import WSSSDataModule
from wsss_pl.diagnosis import ImageErrors
from wsss_pl.errors import CacheError, DataError
from wsss_pl.io import write_json
from wsss_pl.labeling.label_batches import (  # noqa: F401  (image_size, shape_batches: re-exported)
    LabelingData,
    image_size,
    pack,
    shape_batches,
    spread,
)
from wsss_pl.labeling.label_report import (  # noqa: F401
    _report,
    report_padding,
    worst_records,
)
from wsss_pl.labeling.online import OnlinePseudoLabels
from wsss_pl.metrics import ConfusionMatrix, count_labels, iou_from_confusion
from wsss_pl.progress import Progress
from wsss_pl.review_callback import disagreement

log = logging.getLogger(__name__)


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
