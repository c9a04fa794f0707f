"""Segmentation scores from a confusion matrix (rows = target class, columns = predicted class).

Counts are the only state: under DDP the ranks' counts are summed and the scores computed once
from the sum, which is the mIoU of the whole split (the mean of per-rank mIoUs is not).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from wsss_pl.classes import IGNORE_INDEX


def _check_range(values: Tensor, num_classes: int, what: str, ignore_index: int | None) -> None:
    """Raise ValueError naming the ids of int64 ``values`` outside [0, num_classes)."""
    bad = (values < 0) | (values >= num_classes)
    if bool(bad.any()):
        found = torch.unique(values[bad]).tolist()
        shown = found[:8] + (["..."] if len(found) > 8 else [])
        raise ValueError(
            f"{what} contains label ids {shown} outside [0, {num_classes}) "
            f"(ignore_index={ignore_index}): the labels do not belong to a {num_classes}-class "
            "vocabulary"
        )


def count_labels(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Confusion matrix of label maps plus the pixels the prediction left as ignore.

    Counting happens on ``pred``'s device in one ``bincount``. A prediction equal to
    ``ignore_index`` (a pseudo-label that abstained) is not a class: it is counted per target
    class in ``pred_ignored`` and scores as a miss (false negative), as in ``wsss_pl.evaluation``.

    Args:
        pred: integer class ids, any shape (e.g. [B, H, W] or [H, W]), values in [0, C) or
            ``ignore_index``.
        target: integer class ids (uint8 or int64) of the same shape; pixels equal to
            ``ignore_index`` are not counted, any other value outside [0, C) raises ValueError.
        num_classes: C, including background.
        ignore_index: the ignore value (None: none).

    Returns:
        (confmat int64 [C, C], entry [t, p] = pixels of target class t predicted as p;
        pred_ignored int64 [C], pixels of target class t predicted as ``ignore_index``).
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("pred and target must be integer class ids (argmax logits first)")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long().to(pred.device)
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    _check_range(target, num_classes, "target", ignore_index)
    # An ignore_index inside [0, C) is a real class for predictions (it only masks targets).
    abstained = (
        pred == ignore_index
        if ignore_index is not None and not 0 <= ignore_index < num_classes
        else torch.zeros_like(pred, dtype=torch.bool)
    )
    _check_range(pred[~abstained], num_classes, "prediction", ignore_index)
    # Column C of a [C, C + 1] histogram collects the abstentions.
    column = torch.where(abstained, num_classes, pred)
    counts = torch.bincount(
        target * (num_classes + 1) + column, minlength=num_classes * (num_classes + 1)
    ).reshape(num_classes, num_classes + 1)
    return counts[:, :num_classes].contiguous(), counts[:, num_classes].contiguous()


def confusion_from_labels(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> Tensor:
    """int64 [C, C] confusion matrix (rows target, columns pred) of label maps.

    Same arguments as ``count_labels``, but every counted prediction must be a class in
    [0, C): an abstaining (``ignore_index``) prediction raises ValueError, since a [C, C] matrix
    cannot hold it; use ``count_labels`` for pseudo-labels with ignore regions.
    """
    confmat, pred_ignored = count_labels(pred, target, num_classes, ignore_index)
    if bool(pred_ignored.any()):
        raise ValueError(
            f"prediction contains label ids [{ignore_index}] (ignore) on {int(pred_ignored.sum())} "
            f"counted pixels; a [{num_classes}, {num_classes}] confusion matrix cannot hold them: "
            "use count_labels (counts them as misses) or map them to a class first"
        )
    return confmat


def _as_float(counts: Tensor) -> Tensor:
    # float64 keeps counts of whole datasets exact; MPS has no float64, so score those on the CPU.
    return counts.cpu().double() if counts.device.type == "mps" else counts.double()


def iou_from_confusion(confmat: Tensor, pred_ignored: Tensor | None = None) -> Tensor:
    """Per-class IoU TP / (TP + FP + FN) of an int [C, C] matrix (rows target, columns pred).

    ``pred_ignored`` (int [C], target pixels predicted as ignore) adds to FN. Returns float64
    [C]; NaN for a class absent from both target and prediction (0 / 0), so ``nanmean``
    averages over the classes that occur.
    """
    counts = _as_float(confmat)
    tp = counts.diagonal()
    union = counts.sum(0) + counts.sum(1) - tp
    if pred_ignored is not None:
        union = union + _as_float(pred_ignored).to(union.device)
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def scores_from_confusion(confmat: Tensor, pred_ignored: Tensor | None = None) -> dict[str, Tensor]:
    """All scores of an int [C, C] matrix (rows target, columns pred), float64 tensors.

    ``pred_ignored`` (int [C]) counts target pixels the prediction left as ignore: misses.

    Returns:
        "iou": [C] per-class IoU, NaN for classes absent from target and prediction;
        "miou": scalar, nanmean of "iou";
        "pixel_acc": scalar, correct / counted pixels (NaN when nothing was counted);
        "mean_acc": scalar, nanmean over classes of recall TP / (TP + FN), classes absent from
            the target being NaN.
    """
    counts = _as_float(confmat)
    tp = counts.diagonal()
    per_target = counts.sum(1)
    if pred_ignored is not None:
        per_target = per_target + _as_float(pred_ignored).to(per_target.device)
    nan = torch.full_like(tp, float("nan"))
    iou = iou_from_confusion(confmat, pred_ignored)
    recall = torch.where(per_target > 0, tp / per_target.clamp_min(1), nan)
    total = per_target.sum()
    pixel_acc = tp.sum() / total if total > 0 else total.new_tensor(float("nan"))
    return {
        "iou": iou,
        "miou": iou.nanmean(),
        "pixel_acc": pixel_acc,
        "mean_acc": recall.nanmean(),
    }


class ConfusionMatrix(Metric):
    """Confusion-matrix segmentation metric; ``compute()`` returns ``scores_from_confusion``.

    States, summed across processes (``dist_reduce_fx="sum"``) before any score is computed:
    ``confmat`` int64 [C, C], rows = target, columns = prediction; ``pred_ignored`` int64 [C],
    target pixels predicted as ``ignore_index`` (pseudo-labels that abstained), scored as misses.

    Args:
        num_classes: C, including background.
        ignore_index: target value that is not counted (255 in wsss_pl label maps).
        **kwargs: passed to ``torchmetrics.Metric`` (e.g. ``sync_on_compute``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confmat: Tensor
    pred_ignored: Tensor

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state(
            "confmat",
            default=torch.zeros(num_classes, num_classes, dtype=torch.int64),
            dist_reduce_fx="sum",
        )
        self.add_state(
            "pred_ignored",
            default=torch.zeros(num_classes, dtype=torch.int64),
            dist_reduce_fx="sum",
        )

    def update(
        self,
        preds: Tensor | None,
        target: Tensor | None,
        counts: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """Count one batch.

        Args:
            preds: int class ids [B, H, W] (``ignore_index`` allowed: a miss), or float
                logits/probabilities [B, C, H, W] (argmax over C is taken).
            target: uint8 or int64 [B, H, W], ``ignore_index`` for pixels not to count.
            counts: instead of preds/target, counts already made by ``count_labels``
                (confmat [C, C], pred_ignored [C]), so a caller that needs per-image counts
                anyway does not count every pixel twice.
        """
        if counts is not None:
            self.confmat += counts[0].to(self.confmat.device)
            self.pred_ignored += counts[1].to(self.pred_ignored.device)
            return
        if preds is None or target is None:
            raise ValueError("ConfusionMatrix.update needs preds and target, or counts")
        if preds.is_floating_point():
            if preds.ndim != target.ndim + 1 or preds.shape[1] != self.num_classes:
                raise ValueError(
                    f"float preds must be logits [B, {self.num_classes}, H, W] for target "
                    f"{tuple(target.shape)}, got {tuple(preds.shape)}"
                )
            preds = preds.argmax(dim=1)
        confmat, pred_ignored = count_labels(preds, target, self.num_classes, self.ignore_index)
        self.confmat += confmat
        self.pred_ignored += pred_ignored

    def compute(self) -> dict[str, Tensor]:
        """Scores of the (process-summed) matrix: "iou" [C], "miou", "pixel_acc", "mean_acc"."""
        return scores_from_confusion(self.confmat, self.pred_ignored)
