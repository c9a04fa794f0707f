"""The score of a set of label maps against ground truth: ``LabelEvaluation`` (confusion
matrix, per-class IoU, mIoU) and its plain-text table and JSON form. Made by ``evaluate-labels``
(``wsss_pl.evaluation``) and by the label pass; below both, so neither imports the other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LabelEvaluation:
    """Result of ``evaluate_label_dirs``.

    Attributes:
        confusion: int64 [C, C], rows = ground truth, columns = prediction.
        pred_ignored: int64 [C], valid ground-truth pixels of each class predicted as 255.
        iou: float64 [C], NaN for classes absent from both truth and prediction.
        miou: mean of the non-NaN entries of ``iou`` (NaN if all are NaN).
        num_images: image pairs counted (including missing predictions counted as background).
        missing_predictions: ground-truth ids with no prediction file, sorted.
        extra_predictions: prediction ids with no ground truth (ignored), sorted.
        missing_as_background: whether missing predictions were counted as all background.
    """

    confusion: np.ndarray
    pred_ignored: np.ndarray
    iou: np.ndarray
    miou: float
    num_images: int
    missing_predictions: list[str] = field(default_factory=list)
    extra_predictions: list[str] = field(default_factory=list)
    missing_as_background: bool = False

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def ignored_fraction(self) -> float:
        """Fraction of valid ground-truth pixels that the predictions marked 255."""
        total = int(self.confusion.sum() + self.pred_ignored.sum())
        return float(self.pred_ignored.sum() / total) if total else float("nan")


def _full_names(result: LabelEvaluation, class_names: Sequence[str]) -> list[str]:
    """C names including background; foreground-only lists (C - 1 names) get "background" first."""
    names = list(class_names)
    if len(names) == result.num_classes - 1:
        names = ["background", *names]
    if len(names) != result.num_classes:
        raise ValueError(
            f"{len(names)} class names given for {result.num_classes} classes (with background)"
        )
    return names


def format_table(result: LabelEvaluation, class_names: Sequence[str]) -> str:
    """Per-class IoU (percent; '-' for absent classes) and the mIoU as a plain-text table."""
    names = _full_names(result, class_names)
    width = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  {'IoU':>6}", "-" * (width + 8)]
    for name, value in zip(names, result.iou, strict=True):
        shown = "-" if np.isnan(value) else f"{100 * value:6.2f}"
        lines.append(f"{name:<{width}}  {shown:>6}")
    lines.append("-" * (width + 8))
    lines.append(f"{'mIoU':<{width}}  {100 * result.miou:6.2f}")
    lines.append(f"{result.num_images} images")
    if result.missing_predictions:
        how = "counted as background" if result.missing_as_background else "left out"
        lines.append(f"{len(result.missing_predictions)} ids without prediction ({how})")
    if result.pred_ignored.any():
        lines.append(f"{100 * result.ignored_fraction:.2f}% of pixels predicted 255 (misses)")
    return "\n".join(lines)


def to_json(result: LabelEvaluation, class_names: Sequence[str]) -> dict[str, Any]:
    """JSON-ready dict; mIoU and IoUs in percent (``"unit": "percent"``), as the printed table,
    absent classes null; ``ignored_fraction`` stays a fraction in [0, 1]."""
    names = _full_names(result, class_names)
    return {
        "unit": "percent",
        "miou": None if np.isnan(result.miou) else 100 * result.miou,
        "iou": {
            n: None if np.isnan(v) else 100 * float(v)
            for n, v in zip(names, result.iou, strict=True)
        },
        "num_images": result.num_images,
        "num_classes": result.num_classes,
        "class_names": names,
        "missing_predictions": result.missing_predictions,
        "missing_as_background": result.missing_as_background,
        "num_extra_predictions": len(result.extra_predictions),
        "ignored_fraction": result.ignored_fraction,
        "pred_ignored": result.pred_ignored.tolist(),
        "confusion": result.confusion.tolist(),
    }
