"""What the label pass reports at its end: the pseudo-labels' score against ground truth
(table, JSON, W&B, diagnosis), the padding warnings, the worst images for review. ``module`` is
the pass's ``LabelingModule`` (typed ``Any``: naming it would import the pass back)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from wsss_pl.data.datamodule import WSSSDataModule
from wsss_pl.diagnosis import format_diagnosis, from_totals, log_wandb
from wsss_pl.io import write_json
from wsss_pl.label_scores import LabelEvaluation, format_table
from wsss_pl.labeling.online import OnlinePseudoLabels
from wsss_pl.review_callback import log_review, review_dir

log = logging.getLogger(__name__)


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
# where every decoder row costs real time: on a CPU (about 0.2 s per padded row for ViT-B at 1 thread,
# measured by scripts/bench_decoder_chunks.py). On a GPU its share is printed, not warned about: a VOC image
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
def _report(trainer: pl.Trainer, data: WSSSDataModule, module: Any, seconds: float) -> None:
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


def _log_review(trainer: pl.Trainer, module: Any) -> None:
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
