"""How well the review queue finds the worst pseudo-labels, where ground truth exists.

No pretrained Grounding DINO / SAM weights are reachable here, so the pseudo-labels are made by a
SIMULATED labeller from real ground truth (the numbers measure the ranking's mechanics on a noise
model, not the real models' failure modes):

- VOC: the real ``SegmentationClassAug`` masks of the first ``--voc-images`` ids of ``train.txt``
  and their real image-level labels; instances are the connected components of each class.
- COCO: the real instance annotations of the 318 sample images (``coco_sample``).

Per image a hidden difficulty ``d`` ~ Beta(1.2, 3) drives what the labeller does, and the cache
records what a real one would: an instance is missed with probability 0.5 d (a class without any
box is a missing class), its box is jittered by 5 d of its size, its mask is dilated or eroded by
up to 12 d pixels or, with probability 0.2 d, replaced by its whole box; its score is 0.85 - 0.5 d
plus noise; unmatched boxes ~ Poisson(3 d); with probability 0.5 d a false instance of a present
class (a random rectangle, score 0.3-0.5) is added. A second, independent difficulty ``s`` (that
no cache field shows) swaps an instance's class to another present class with probability 0.5 s:
errors the queue cannot see. Masks are painted in random order, later wins.

The label's quality is its per-image mIoU against the ground truth (classes present in either,
background included, 255 ignored). The figure: the share of the 10 % lowest-IoU images among the
top 10 % of the queue (chance: 0.10). Weights are chosen by grid search on VOC and reported on
COCO. Run: ``python scripts/review_queue_benchmark.py --data "$WSSS_PL_SAMPLE_DATA"``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from wsss_pl.classes import COCO, VOC
from wsss_pl.review_queue import (
    DEFAULT_WEIGHTS,
    SIGNALS,
    combine,
    image_signals,
    recall_of_worst,
)

GRID = (0.0, 0.5, 1.0, 2.0)
USED = [s for s in SIGNALS if s != "disagreement"]  # no second labeller in the simulation


def _box(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def simulate(
    gt: np.ndarray, instances: list[tuple[int, np.ndarray]], prompted: list[int],
    names: tuple[str, ...], rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, Any], list[np.ndarray]]:  # fmt: skip
    """(label uint8 [H, W], cache metadata, raw masks) of one image by the simulated labeller."""
    h, w = gt.shape
    d, s = rng.beta(1.2, 3.0), rng.beta(1.2, 3.0)
    kept: list[tuple[int, np.ndarray, list[float], float]] = []
    for cid, mask in instances:
        if rng.random() < 0.5 * d:
            continue
        box = np.array(_box(mask))
        size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
        box = np.clip(box + rng.normal(0, 0.05 * d, 4) * size, 0, [w, h, w, h])
        if box[2] <= box[0] + 1 or box[3] <= box[1] + 1:
            box = np.array(_box(mask))
        raw = mask
        radius = int(round(12 * d * rng.random()))
        if radius:
            op = ndimage.binary_dilation if rng.random() < 0.6 else ndimage.binary_erosion
            raw = op(mask, iterations=radius)
        if rng.random() < 0.2 * d:
            raw = np.zeros_like(mask)
            x0, y0, x1, y1 = (int(v) for v in box)
            raw[y0:y1, x0:x1] = True
        if not raw.any():
            raw = mask
        others = [c for c in prompted if c != cid]
        if others and rng.random() < 0.5 * s:
            cid = int(rng.choice(others))
        score = float(np.clip(0.85 - 0.5 * d + rng.normal(0, 0.1), 0.31, 0.99))
        kept.append((cid, raw, [float(v) for v in box], score))
    if prompted and rng.random() < 0.5 * d:
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = int(rng.integers(x0 + 8, w + 1)), int(rng.integers(y0 + 8, h + 1))
        raw = np.zeros((h, w), dtype=bool)
        raw[y0:y1, x0:x1] = True
        kept.append(
            (int(rng.choice(prompted)), raw, [x0, y0, x1, y1], float(rng.uniform(0.3, 0.5)))
        )
    order = rng.permutation(len(kept))
    label = np.zeros((h, w), dtype=np.uint8)
    for i in order:
        label[kept[i][1]] = kept[i][0]
    detected = {c for c, *_ in kept}
    metadata = {
        "instances": [
            {"label": c, "class": names[c - 1], "score": sc, "box": b, "rle": {"size": [h, w]}}
            for c, _, b, sc in kept
        ],
        "missing_classes": [names[c - 1] for c in prompted if c not in detected],
        "num_unmatched_boxes": int(rng.poisson(3 * d)),
    }
    return label, metadata, [m for _, m, *_ in kept]


def image_miou(label: np.ndarray, gt: np.ndarray) -> float:
    valid = gt != 255
    classes = np.union1d(np.unique(label[valid]), np.unique(gt[valid]))
    ious = []
    for c in classes:
        p, g = (label == c) & valid, (gt == c) & valid
        ious.append((p & g).sum() / max(1, (p | g).sum()))
    return float(np.mean(ious))


def voc_images(
    data: Path, limit: int
) -> list[tuple[np.ndarray, list[tuple[int, np.ndarray]], list[int]]]:
    root = data / "voc_sample"
    labels = json.loads((root / "image_labels.json").read_text())
    ids = (root / "train.txt").read_text().split()[:limit]
    out = []
    for sample_id in ids:
        gt = np.asarray(Image.open(root / "SegmentationClassAug" / f"{sample_id}.png"))
        instances = []
        for c in np.unique(gt):
            if c in (0, 255):
                continue
            parts, n = ndimage.label(gt == c)
            for k in range(1, n + 1):
                if (parts == k).sum() >= 20:
                    instances.append((int(c), parts == k))
        out.append((gt, instances, [VOC.label_id(n) for n in labels[sample_id]]))
    return out


def coco_images(data: Path) -> list[tuple[np.ndarray, list[tuple[int, np.ndarray]], list[int]]]:
    from pycocotools.coco import COCO as CocoApi

    out = []
    index = {cid: i + 1 for i, cid in enumerate(COCO.category_ids or ())}
    for split in ("train2017", "val2017"):
        api = CocoApi(str(data / "coco_sample" / "annotations" / f"instances_{split}.json"))
        for image_id in sorted(api.getImgIds()):
            info = api.loadImgs(image_id)[0]
            gt = np.zeros((info["height"], info["width"]), dtype=np.uint8)
            instances = []
            for ann in api.loadAnns(api.getAnnIds(imgIds=image_id)):
                mask = api.annToMask(ann).astype(bool)
                cid = index[ann["category_id"]]
                if ann.get("iscrowd"):
                    gt[mask] = 255
                    continue
                gt[mask] = cid
                if mask.sum() >= 20:
                    instances.append((cid, mask))
            prompted = sorted({c for c, _ in instances})
            if prompted:
                out.append((gt, instances, prompted))
    return out


def signals_and_ious(
    images: list, names: tuple[str, ...], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """[N, len(USED)] signal values and [N] per-image mIoU of the simulated labels."""
    rng = np.random.default_rng(seed)
    rows, ious = [], []
    for gt, instances, prompted in images:
        label, metadata, masks = simulate(gt, instances, prompted, names, rng)
        values, _ = image_signals(metadata, label, names, masks=masks)
        rows.append([values[s] for s in USED])
        ious.append(image_miou(label, gt))
    return np.asarray(rows), np.asarray(ious)


def score_with(signals: np.ndarray, weights: dict[str, float]) -> np.ndarray:
    """The queue's scores (``combine``, vectorised over images: every signal is present here)."""
    w = np.array([weights.get(s, 0.0) for s in USED])
    return signals @ w / w.sum() if w.sum() > 0 else np.zeros(len(signals))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared sample data folder")
    parser.add_argument("--voc-images", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    one = dict(zip(USED, np.linspace(0.1, 0.7, len(USED)), strict=True))
    probe = np.random.default_rng(1).random((5, len(USED)))
    assert np.allclose(
        score_with(probe, one), [combine(dict(zip(USED, r, strict=True)), one) for r in probe]
    )
    voc_s, voc_iou = signals_and_ious(
        voc_images(args.data, args.voc_images), VOC.class_names, args.seed
    )
    coco_s, coco_iou = signals_and_ious(coco_images(args.data), COCO.class_names, args.seed + 1)
    best, best_recall = None, -1.0
    for combo in itertools.product(GRID, repeat=len(USED)):
        if not any(combo):
            continue
        weights = dict(zip(USED, combo, strict=True))
        recall = recall_of_worst(score_with(voc_s, weights), voc_iou)
        if recall > best_recall:
            best, best_recall = weights, recall
    assert best is not None
    print(f"simulated labels: VOC {len(voc_iou)} images (mean mIoU {voc_iou.mean():.3f}), "
          f"COCO {len(coco_iou)} images (mean mIoU {coco_iou.mean():.3f})")  # fmt: skip
    print("share of the 10 % lowest-IoU images among the queue's top 10 % (chance 0.10)")
    print(f"{'weights':<44} {'VOC':>6} {'COCO':>6}")
    rows = [("chosen on VOC: " + json.dumps(best), best), ("shipped defaults", DEFAULT_WEIGHTS)]
    rows += [(f"{s} alone", {s: 1.0}) for s in USED]
    for name, weights in rows:
        voc_r = recall_of_worst(score_with(voc_s, weights), voc_iou)
        coco_r = recall_of_worst(score_with(coco_s, weights), coco_iou)
        print(f"{name:<44} {voc_r:>6.2f} {coco_r:>6.2f}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
