"""The closing summary a Lightning command prints: the run's folders, its metrics and the
per-class IoU table. Used by ``wsss_pl.lightning_cli``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from wsss_pl.callbacks import (
    PaletteWriter,
    RunSummary,
    review_dir,
)
from wsss_pl.cli_errors import PROG
from wsss_pl.lightning_setup import SaveRunConfig
from wsss_pl.progress import format_duration


def _iou_table(names: list[str], iou: list[float], miou: float, split: str) -> list[str]:
    width = max(12, *(len(n) for n in names))
    lines = [f"  {'class':<{width}}  {'IoU':>6}"]
    for name, value in zip(names, iou, strict=True):
        shown = "-" if value != value else f"{100 * value:6.2f}"
        lines.append(f"  {name:<{width}}  {shown:>6}")
    lines.append(f"  {split + ' mIoU':<{width}}  {100 * miou:6.2f}")
    return lines


def summary_lines(command: str, trainer: Any, model: Any) -> list[str]:
    """The closing summary of a fit/validate/test/predict run (plain text lines)."""
    callbacks = trainer.callbacks
    summary = next((c for c in callbacks if isinstance(c, RunSummary)), None)
    lines = []
    if command == "fit":
        took = format_duration(time.perf_counter() - summary.start) if summary else "?"
        state = "interrupted" if trainer.interrupted else "finished"
        lines.append(
            f"{PROG} fit {state}: {trainer.current_epoch} epochs, {trainer.global_step} steps "
            f"in {took}"
        )
        history = summary.val_history if summary else []
        if history:
            last_epoch, last = history[-1]
            best_epoch, best = max(history, key=lambda item: item[1])
            lines.append(
                f"  val mIoU: last {100 * last:.2f} (epoch {last_epoch}), "
                f"best {100 * best:.2f} (epoch {best_epoch})"
            )
        else:
            lines.append("  no validation ran")
        quality = trainer.callback_metrics.get("train_labels/mIoU")
        labels = getattr(trainer.datamodule, "train_labels", None)
        if quality is not None and type(labels).__name__ != "GroundTruthLabels":
            lines.append(
                f"  training labels vs ground truth: mIoU {float(quality):.2f} (last epoch's "
                "augmented crops as fed to the net; `wsss_pl label` scores the full-size labels)"
            )
        folders = {
            str(c.dirpath)
            for c in trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint) and c.dirpath
        }
        for folder in sorted(folders):
            lines.append(f"  checkpoints folder: {folder}")
        for checkpoint in trainer.checkpoint_callbacks:
            if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_path:
                what = f"best by {checkpoint.monitor}" if checkpoint.monitor else "latest"
                lines.append(f"  checkpoint ({what}): {checkpoint.best_model_path}")
    elif command in ("validate", "test"):
        split = "val" if command == "validate" else "test"
        scores = getattr(model, "last_scores", {}).get(split)
        if scores is None:
            lines.append(f"{PROG} {command}: no {split} scores (empty split?)")
        else:
            lines.append(f"{PROG} {command}: {split} mIoU {100 * float(scores['miou']):.2f}")
            lines += _iou_table(
                model.label_names, scores["iou"].tolist(), float(scores["miou"]), split
            )
    elif command == "predict":
        writers = [c for c in callbacks if isinstance(c, PaletteWriter)]
        if not writers:
            lines.append(
                f"{PROG} predict: nothing written (add wsss_pl.callbacks.PaletteWriter to "
                "trainer.callbacks to write palette PNGs)"
            )
        for writer in writers:
            ranks = f" (rank 0 of {trainer.world_size})" if trainer.world_size > 1 else ""
            lines.append(
                f"{PROG} predict: wrote {writer.num_written} palette PNGs{ranks} to "
                f"{writer.output_dir}"
            )
        if not trainer.loggers:
            lines.append("  no W&B run for predict (it logs nothing; --trainer.logger sets one)")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            run = logger.experiment
            run_dir = Path(run.dir).parent
            if getattr(run.settings, "_offline", False):
                lines.append(f"  W&B run (offline): {run_dir}; upload: wandb sync {run_dir}")
            else:
                lines.append(f"  W&B run: {run.url} (local files: {run_dir})")
        elif getattr(logger, "log_dir", None):
            lines.append(f"  logs ({type(logger).__name__}): {logger.log_dir}")
        if isinstance(logger, WandbLogger) and logger._experiment is None:
            continue
        review = review_dir(logger)
        if review is not None and review.is_dir():
            count = sum(1 for _ in review.glob("*.png"))
            lines.append(f"  review images ({count} PNGs, titled, with a colour legend): {review}")
    saver = next((c for c in callbacks if isinstance(c, SaveRunConfig)), None)
    if saver is not None and saver.saved_path is not None:
        lines.append(f"  resolved config: {saver.saved_path}")
    return lines
