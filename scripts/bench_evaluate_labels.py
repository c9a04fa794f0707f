"""Benchmark wsss_pl.evaluation.evaluate_label_dirs on the real VOC SegmentationClassAug masks.

Runs, on the same machine and in the same process:
- evaluate_label_dirs(gt, gt) and evaluate_label_dirs(perturbed, gt), with workers=1 and workers=N;
- a naive baseline: per file, decode both PNGs and accumulate per-class intersection and union with
  boolean ops (21 classes x 2 masks), no bincount. It runs on an evenly strided subset (it is slow)
  and its images/s is compared with the fast path's; its IoUs are checked against the fast path's
  on the same subset.

Usage: python scripts/bench_evaluate_labels.py [--data DIR] [--workers N] [--baseline-images K]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from wsss_pl.classes import voc_palette
from wsss_pl.evaluation import default_workers, evaluate_label_dirs

NUM_CLASSES = 21


def _perturb_one(args: tuple[str, str, int]) -> None:
    """Write a shifted / class-swapped / partly abstaining copy of one mask (palette PNG)."""
    source, target, seed = args
    rng = np.random.default_rng(seed)
    with Image.open(source) as image:
        gt = np.asarray(image)
    pred = np.roll(gt, (int(rng.integers(-8, 9)), int(rng.integers(-8, 9))), axis=(0, 1)).copy()
    pred[pred == 255] = 0
    if rng.random() < 0.2:
        fg = (pred > 0) & (pred < 255)
        pred[fg] = pred[fg] % 20 + 1
    if rng.random() < 0.2:
        pred[: gt.shape[0] // 4, : gt.shape[1] // 4] = 255
    out = Image.fromarray(pred, mode="P")
    out.putpalette(voc_palette())
    out.save(target)


def naive_iou(pred_dir: Path, gt_dir: Path, ids: list[str]) -> np.ndarray:
    """Per-class IoU with boolean ops per file and class; 255 predictions count as misses."""
    inter = np.zeros(NUM_CLASSES, dtype=np.int64)
    union = np.zeros(NUM_CLASSES, dtype=np.int64)
    for sample_id in ids:
        with Image.open(gt_dir / f"{sample_id}.png") as image:
            gt = np.array(image)
        with Image.open(pred_dir / f"{sample_id}.png") as image:
            pred = np.array(image)
        valid = gt != 255
        for c in range(NUM_CLASSES):
            g = (gt == c) & valid
            p = (pred == c) & valid
            inter[c] += int(np.logical_and(g, p).sum())
            union[c] += int(np.logical_or(g, p).sum())
    with np.errstate(invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def _timed(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - tiny local helper
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    sample_data = os.environ.get("WSSS_PL_SAMPLE_DATA")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(sample_data) / "voc_sample/SegmentationClassAug" if sample_data else None,
        help="folder of ground-truth PNGs (default: $WSSS_PL_SAMPLE_DATA/voc_sample/"
        "SegmentationClassAug)",
    )
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--baseline-images", type=int, default=1500)
    parser.add_argument("--limit", type=int, default=0, help="use only the first K masks (0 = all)")
    args = parser.parse_args()
    if args.data is None or not args.data.is_dir():
        parser.error(
            f"no ground-truth PNG folder {args.data}: pass --data or set WSSS_PL_SAMPLE_DATA"
        )

    gt_dir = args.data
    ids = sorted(p.stem for p in gt_dir.glob("*.png"))
    if args.limit:
        ids = ids[: args.limit]
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    try:
        pred_dir = tmp / "pred"
        pred_dir.mkdir()
        jobs = [
            (str(gt_dir / f"{i}.png"), str(pred_dir / f"{i}.png"), k) for k, i in enumerate(ids)
        ]
        start = time.perf_counter()
        with multiprocessing.get_context().Pool(args.workers) as pool:
            pool.map(_perturb_one, jobs, chunksize=64)
        print(f"wrote {len(ids)} perturbed masks in {time.perf_counter() - start:.1f} s")
        for i in ids:  # warm the page cache so the first timed run is not penalised
            (gt_dir / f"{i}.png").read_bytes()

        subset = ids[:: max(1, len(ids) // args.baseline_images)][: args.baseline_images]
        base_iou, base_s = _timed(naive_iou, pred_dir, gt_dir, subset)
        fast_sub = evaluate_label_dirs(pred_dir, gt_dir, NUM_CLASSES, ids=subset)
        agree = np.allclose(base_iou, fast_sub.iou, atol=1e-12, equal_nan=True)
        base_rate = len(subset) / base_s

        rows = [("naive baseline (per-class bool ops)", "perturbed", 1, len(subset), base_s)]
        results = {}
        for name, pred in (("self", gt_dir), ("perturbed", pred_dir)):
            for workers in (1, args.workers):
                result, seconds = _timed(
                    evaluate_label_dirs, pred, gt_dir, NUM_CLASSES, ids=ids, workers=workers
                )
                results[(name, workers)] = result
                rows.append(("evaluate_label_dirs", name, workers, result.num_images, seconds))

        print(f"\n{os.cpu_count()} CPUs visible, {default_workers()} usable; N = {args.workers}")
        header = f"{'method':<38}{'pred':<11}{'workers':>8}{'images':>8}{'s':>9}{'img/s':>9}{'x base':>8}"
        print(header + "\n" + "-" * len(header))
        for method, pred, workers, n, seconds in rows:
            rate = n / seconds
            print(
                f"{method:<38}{pred:<11}{workers:>8}{n:>8}{seconds:>9.2f}{rate:>9.0f}"
                f"{rate / base_rate:>8.1f}"
            )
        print(f"\nbaseline IoUs == fast IoUs on its {len(subset)} images: {agree}")
        same = all(
            np.array_equal(results[(n, 1)].confusion, results[(n, args.workers)].confusion)
            for n in ("self", "perturbed")
        )
        print(f"workers=1 and workers={args.workers} confusion matrices identical: {same}")
        print(
            f"self mIoU {100 * results[('self', 1)].miou:.2f}, perturbed mIoU "
            f"{100 * results[('perturbed', 1)].miou:.2f}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
