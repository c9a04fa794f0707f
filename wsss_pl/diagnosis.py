"""Where pseudo-labels (or predictions) disagree with ground truth: per-class recall and precision,
the top confusions, and the images that contribute most to each class's errors.

This is the diagnosis of what the paper calls "semantic obscurity": a class whose annotation
differs from SAM's notion of the object (VOC's dining table includes everything on it) shows as
low recall with its pixels labelled background or another class (plate -> background, food ->
diningtable missing), concentrated in a few images.

Conventions as ``wsss_pl.evaluation``: rows = ground truth, ground-truth 255 left out, a predicted
255 on a valid pixel is a miss (it lowers recall, column ``ignore``, never precision).

- recall[c] = TP / (ground-truth pixels of c), precision[c] = TP / (pixels predicted c).
- a confusion (X -> Y) counts ground-truth X pixels labelled Y (Y may be ``background`` or
  ``ignore``); ``share`` = that count / ground-truth pixels of X.
- an image's error for class c = its pixels of c missed (FN, incl. ignore) + its pixels wrongly
  labelled c (FP): the images with the largest error explain most of c's lost IoU.
"""

from __future__ import annotations

import heapq
import multiprocessing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsss_pl.label_files import png_stems, read_label_array

IGNORE = 255


@dataclass
class Diagnosis:
    """Per-class disagreement with ground truth.

    Attributes:
        class_names: C names, background first.
        confusion: int64 [C, C + 1], rows ground truth, columns prediction, last column = 255.
        top_images: class name -> [(id, error pixels, missed, false)] largest error first
            (empty when per-image counts were not collected).
        num_images: images counted.
    """

    class_names: list[str]
    confusion: np.ndarray
    top_images: dict[str, list[tuple[str, int, int, int]]] = field(default_factory=dict)
    num_images: int = 0

    @property
    def gt_pixels(self) -> np.ndarray:
        return self.confusion.sum(axis=1)

    @property
    def pred_pixels(self) -> np.ndarray:
        return self.confusion[:, :-1].sum(axis=0)

    @property
    def true_positives(self) -> np.ndarray:
        return np.diag(self.confusion[:, :-1])

    @property
    def recall(self) -> np.ndarray:
        """float64 [C], NaN for a class without ground-truth pixels."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.true_positives / self.gt_pixels

    @property
    def precision(self) -> np.ndarray:
        """float64 [C], NaN for a class never predicted."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.true_positives / self.pred_pixels

    def confusions(self, top_k: int = 10) -> list[dict[str, Any]]:
        """The ``top_k`` largest off-diagonal cells (X labelled Y), most pixels first."""
        num = len(self.class_names)
        cells = self.confusion.copy()
        cells[np.arange(num), np.arange(num)] = 0
        order = np.argsort(cells, axis=None, kind="stable")[::-1][:top_k]
        result = []
        for flat in order:
            row, col = divmod(int(flat), num + 1)
            pixels = int(cells[row, col])
            if pixels == 0:
                break
            result.append(
                {
                    "class": self.class_names[row],
                    "labelled_as": "ignore" if col == num else self.class_names[col],
                    "pixels": pixels,
                    "share": pixels / int(self.gt_pixels[row]),
                }
            )
        return result


def confusion_with_ignore(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, C + 1] of one pair of uint8 maps (last column: predicted 255; gt 255 left out)."""
    valid = gt != IGNORE
    p = pred[valid].astype(np.int64)
    p[p == IGNORE] = num_classes
    if p.size and int(p.max()) > num_classes:
        raise ValueError(f"prediction values outside 0..{num_classes - 1} and 255")
    joint = gt[valid].astype(np.int64) * (num_classes + 1) + p
    return np.bincount(joint, minlength=num_classes * (num_classes + 1)).reshape(
        num_classes, num_classes + 1
    )


class ImageErrors:
    """Keeps, per class, the ``top_n`` images with the largest error (FN + FP pixels)."""

    def __init__(self, num_classes: int, top_n: int = 5) -> None:
        self.num_classes = num_classes
        self.top_n = top_n
        self.total = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
        self.heaps: list[list[tuple[int, str, int, int]]] = [[] for _ in range(num_classes)]
        self.num_images = 0

    def add(self, sample_id: str, confusion: np.ndarray) -> None:
        """Count one image's [C, C + 1] confusion."""
        self.total += confusion
        self.num_images += 1
        tp = np.diag(confusion[:, :-1])
        missed = confusion.sum(axis=1) - tp
        false = confusion[:, :-1].sum(axis=0) - tp
        for c in np.flatnonzero(missed + false):
            item = (int(missed[c] + false[c]), sample_id, int(missed[c]), int(false[c]))
            heap = self.heaps[c]
            if len(heap) < self.top_n:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)

    def update(
        self, ids: Sequence[str], preds: Iterable[np.ndarray], gts: Iterable[np.ndarray]
    ) -> None:
        """Count a batch of uint8 label maps (each pred/gt pair of one image, same shape)."""
        for sample_id, pred, gt in zip(ids, preds, gts, strict=True):
            self.add(sample_id, confusion_with_ignore(pred, gt, self.num_classes))

    def update_batch(self, batch: dict[str, Any]) -> None:
        """Count the samples with ground truth of a collated batch (``target`` vs ``gt``)."""
        rows = [i for i, flag in enumerate(batch["has_gt"].tolist()) if flag]
        sizes = [batch["size"][i].tolist() for i in rows]
        self.update(
            [batch["id"][i] for i in rows],
            [
                batch["target"][i, :h, :w].cpu().numpy()
                for i, (h, w) in zip(rows, sizes, strict=True)
            ],
            [batch["gt"][i, :h, :w].cpu().numpy() for i, (h, w) in zip(rows, sizes, strict=True)],
        )

    def merge(self, other: ImageErrors) -> None:
        self.total += other.total
        self.num_images += other.num_images
        for c in range(self.num_classes):
            for item in other.heaps[c]:
                if len(self.heaps[c]) < self.top_n:
                    heapq.heappush(self.heaps[c], item)
                elif item > self.heaps[c][0]:
                    heapq.heapreplace(self.heaps[c], item)

    def diagnosis(self, class_names: Sequence[str]) -> Diagnosis:
        names = list(class_names)
        top = {
            names[c]: [(i, e, m, f) for e, i, m, f in sorted(self.heaps[c], reverse=True)]
            for c in range(self.num_classes)
            if self.heaps[c]
        }
        return Diagnosis(names, self.total.copy(), top, self.num_images)


def from_totals(
    confmat: np.ndarray,
    pred_ignored: np.ndarray,
    class_names: Sequence[str],
    errors: ImageErrors | None = None,
    num_images: int = 0,
) -> Diagnosis:
    """Diagnosis of summed counts (e.g. all ranks of the label pass): ``confmat`` int [C, C] and
    ``pred_ignored`` int [C]; the worst images come from ``errors`` (may cover fewer images)."""
    confusion = np.concatenate([confmat, pred_ignored[:, None]], axis=1).astype(np.int64)
    top = errors.diagnosis(class_names).top_images if errors is not None else {}
    return Diagnosis(list(class_names), confusion, top, num_images)


def _chunk(args: tuple[list[tuple[str, str, str]], int, int]) -> ImageErrors:
    tasks, num_classes, top_n = args
    errors = ImageErrors(num_classes, top_n)
    for sample_id, gt_path, pred_path in tasks:
        gt = read_label_array(gt_path, "ground-truth")
        pred = read_label_array(pred_path, "prediction")
        if pred.shape != gt.shape:
            from wsss_pl.errors import DataError

            raise DataError(f"prediction {pred_path} is {pred.shape} but {gt_path} is {gt.shape}")
        errors.add(sample_id, confusion_with_ignore(pred, gt, num_classes))
    return errors


def diagnose_label_dirs(
    pred_dir: str | Path,
    gt_dir: str | Path,
    class_names: Sequence[str],
    ids: Sequence[str] | None = None,
    top_n: int = 5,
    workers: int = 0,
) -> Diagnosis:
    """Diagnosis of the ``<id>.png`` label maps in ``pred_dir`` against ``gt_dir`` (ids in both)."""
    gt_files = png_stems(Path(gt_dir), "ground-truth")
    pred_files = png_stems(Path(pred_dir), "prediction")
    wanted = [i for i in (ids if ids is not None else sorted(gt_files)) if i in pred_files]
    tasks = [(i, gt_files[i], pred_files[i]) for i in wanted]
    num_classes = len(class_names)
    if workers <= 1 or len(tasks) < 2 * workers:
        errors = _chunk((tasks, num_classes, top_n))
    else:
        chunks = [(tasks[k :: workers * 4], num_classes, top_n) for k in range(workers * 4)]
        errors = ImageErrors(num_classes, top_n)
        with multiprocessing.get_context().Pool(workers) as pool:
            for part in pool.imap_unordered(_chunk, chunks):
                errors.merge(part)
    return errors.diagnosis(class_names)


def _pct(value: float) -> str:
    return "-" if np.isnan(value) else f"{100 * value:5.1f}"


def format_diagnosis(d: Diagnosis, top_k: int = 10) -> str:
    """Per-class recall/precision table, top confusions and top images as plain text."""
    width = max(len(n) for n in d.class_names)
    lines = [f"{'class':<{width}}  recall  precision  gt pixels   worst images (error px)"]
    for c, name in enumerate(d.class_names):
        if d.gt_pixels[c] == 0 and d.pred_pixels[c] == 0:
            continue
        worst = ", ".join(f"{i} ({e})" for i, e, _, _ in d.top_images.get(name, [])[:3])
        lines.append(
            f"{name:<{width}}  {_pct(d.recall[c]):>6}  {_pct(d.precision[c]):>9}  "
            f"{int(d.gt_pixels[c]):>9}   {worst}"
        )
    lines.append(f"top confusions (ground-truth pixels of X labelled Y), {d.num_images} images:")
    for item in d.confusions(top_k):
        lines.append(
            f"  {item['class']:<{width}} -> {item['labelled_as']:<{width}} "
            f"{item['pixels']:>10} px  {100 * item['share']:5.1f}% of {item['class']}"
        )
    return "\n".join(lines)


def diagnosis_to_json(d: Diagnosis, top_k: int = 10) -> dict[str, Any]:
    def num(value: float) -> float | None:
        return None if np.isnan(value) else round(float(value), 6)

    return {
        "num_images": d.num_images,
        "classes": {
            name: {
                "recall": num(d.recall[c]),
                "precision": num(d.precision[c]),
                "gt_pixels": int(d.gt_pixels[c]),
                "pred_pixels": int(d.pred_pixels[c]),
                "top_images": [
                    {"id": i, "error_pixels": e, "missed": m, "false": f}
                    for i, e, m, f in d.top_images.get(name, [])
                ],
            }
            for c, name in enumerate(d.class_names)
        },
        "top_confusions": d.confusions(top_k),
    }


def log_wandb(d: Diagnosis, run: Any = None, prefix: str = "diagnosis", top_k: int = 10) -> bool:
    """Log the per-class table and the confusions as W&B tables to ``run`` (default: the active
    run); returns False when there is no run."""
    import wandb

    run = run if run is not None else wandb.run
    if run is None:
        return False
    classes = wandb.Table(columns=["class", "recall", "precision", "gt_pixels", "worst_images"])
    for c, name in enumerate(d.class_names):
        classes.add_data(
            name,
            None if np.isnan(d.recall[c]) else float(d.recall[c]),
            None if np.isnan(d.precision[c]) else float(d.precision[c]),
            int(d.gt_pixels[c]),
            ", ".join(i for i, *_ in d.top_images.get(name, [])),
        )
    confusions = wandb.Table(columns=["class", "labelled_as", "pixels", "share"])
    for item in d.confusions(top_k):
        confusions.add_data(item["class"], item["labelled_as"], item["pixels"], item["share"])
    run.log({f"{prefix}/classes": classes, f"{prefix}/confusions": confusions})
    return True
