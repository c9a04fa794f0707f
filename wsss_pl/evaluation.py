"""mIoU of a folder of label maps (predictions or pseudo-labels) against a folder of ground truth.

Both folders hold PNGs (palette 'P' or greyscale 'L') whose pixel values are class ids:
0..C-1 (0 = background) and 255 = ignore; files are matched by stem. Each file pair is reduced to
one joint histogram ``np.bincount(gt * 256 + pred)`` (65,536 bins), summed over files, optionally in
worker processes; the confusion matrix, the validity checks and the IoUs are read off the sum.

Conventions:
- ``confusion[g, p]`` counts pixels with ground truth ``g`` and prediction ``p`` (rows = truth).
- Ground-truth 255 pixels are left out.
- A prediction of 255 on a valid ground-truth pixel (a pseudo-label that abstains) is a miss: it
  counts in ``pred_ignored[g]`` and so in the union of class ``g`` but never in an intersection;
  abstaining therefore costs IoU and is not a free way to raise it.
- A ground-truth id with no prediction file is left out of the matrix and listed in
  ``missing_predictions``; with ``missing_as_background=True`` it counts as an all-background
  prediction instead.
- A class absent from both truth and prediction has IoU NaN and does not enter the mIoU.

This module imports numpy and PIL only at the top, so worker processes start fast.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsss_pl.errors import DataError, WsssError
from wsss_pl.label_files import png_stems, read_label_array
from wsss_pl.label_scores import (  # noqa: F401  (format_table, to_json: re-exported)
    LabelEvaluation,
    format_table,
    to_json,
)
from wsss_pl.options import CommandParser
from wsss_pl.progress import Progress

_BINS = 256 * 256
_SERIAL_CHUNK = 64  # file pairs per progress update in the single-process path
PROGRESS_MIN_IMAGES = 100  # fewer images finish too fast to need a progress display
_Task = tuple[str, str, str | None]  # (id, gt path, prediction path or None = all background)


def _bad_values(counts: np.ndarray, num_classes: int) -> list[int]:
    """Values with a non-zero count [256] outside [0, num_classes) and not 255."""
    bad = np.flatnonzero(counts[num_classes:255]) + num_classes
    return bad.tolist()


def _histogram_chunk(args: tuple[list[_Task], int]) -> np.ndarray:
    """Sum of the joint (gt, pred) histograms, int64 [65536], of the file pairs of one chunk."""
    tasks, num_classes = args
    total = np.zeros(_BINS, dtype=np.int64)
    for sample_id, gt_path, pred_path in tasks:
        gt = read_label_array(gt_path, "ground-truth")
        if pred_path is None:
            pred = np.zeros_like(gt)
        else:
            pred = read_label_array(pred_path, "prediction")
            if pred.shape != gt.shape:
                raise DataError(
                    f"prediction file {pred_path} is {pred.shape[1]}x{pred.shape[0]} (WxH) but its "
                    f"ground truth {gt_path} is {gt.shape[1]}x{gt.shape[0]}; id {sample_id!r}"
                )
        joint = (gt.astype(np.uint16) << 8) | pred
        hist = np.bincount(joint.ravel(), minlength=_BINS).reshape(256, 256)
        bad_pred = _bad_values(hist.sum(axis=0), num_classes)
        if bad_pred:
            raise DataError(
                f"prediction file {pred_path} has values {bad_pred} outside 0..{num_classes - 1} "
                f"and 255; wrong --num_classes, or not a class-id map?"
            )
        bad_gt = _bad_values(hist.sum(axis=1), num_classes)
        if bad_gt:
            raise DataError(
                f"ground-truth file {gt_path} has values {bad_gt} outside 0..{num_classes - 1} "
                f"and 255; wrong --num_classes?"
            )
        total += hist.ravel()
    return total


def _sized_histogram_chunk(args: tuple[list[_Task], int]) -> tuple[int, np.ndarray]:
    """(number of file pairs, their summed histogram): the count drives the progress display."""
    return len(args[0]), _histogram_chunk(args)


def default_workers() -> int:
    """CPUs this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def evaluate_label_dirs(
    pred_dir: str | Path,
    gt_dir: str | Path,
    num_classes: int,
    *,
    ids: Sequence[str] | None = None,
    ignore_index: int = 255,
    workers: int = 0,
    missing_as_background: bool = False,
    progress: bool = False,
) -> LabelEvaluation:
    """Confusion matrix and IoU of the label PNGs in ``pred_dir`` against those in ``gt_dir``.

    Args:
        pred_dir: predictions / pseudo-labels, ``<id>.png``.
        gt_dir: ground truth, ``<id>.png``.
        num_classes: C including background (21 for VOC).
        ids: evaluate these ids only (each must have ground truth); default all ground-truth ids.
        ignore_index: the ignore value; only 255 is supported (uint8 maps).
        workers: processes to use; 0 or 1 runs in this process.
        missing_as_background: count ground-truth ids without a prediction as all background
            instead of leaving them out (they are listed in ``missing_predictions`` either way).
        progress: show progress on stderr (a bar on a terminal, else plain lines) when there
            are at least ``PROGRESS_MIN_IMAGES`` images; stdout stays clean (``--format json``).

    Raises:
        DataError: missing directory, unknown ids, no ids in common, a file that cannot be read,
            size mismatch, or values outside [0, C) other than 255 (the message names the file).
    """
    if ignore_index != 255:
        raise ValueError("only ignore_index=255 is supported (labels are uint8 PNGs)")
    if not 1 <= num_classes <= 255:
        raise ValueError(f"num_classes must be in 1..255, got {num_classes}")
    gt_files = png_stems(Path(gt_dir), "ground-truth")
    pred_files = png_stems(Path(pred_dir), "prediction")
    if ids is None:
        wanted = sorted(gt_files)
    else:
        wanted = list(dict.fromkeys(ids))
        unknown = [i for i in wanted if i not in gt_files]
        if unknown:
            raise DataError(
                f"{len(unknown)} requested ids have no ground truth in {gt_dir} "
                f"(first: {unknown[:5]})"
            )
    missing = [i for i in wanted if i not in pred_files]
    if len(missing) == len(wanted):
        raise DataError(
            f"no ids in common between predictions {pred_dir} ({len(pred_files)} PNGs) and ground "
            f"truth {gt_dir} ({len(wanted)} ids); files are matched by name without extension"
        )
    wanted_set = set(wanted)
    extra = sorted(i for i in pred_files if i not in wanted_set)
    tasks: list[_Task] = [
        (i, gt_files[i], pred_files.get(i))
        for i in wanted
        if i in pred_files or missing_as_background
    ]

    total = np.zeros(_BINS, dtype=np.int64)
    shown = Progress(
        len(tasks), "evaluating", unit="img", enabled=progress and len(tasks) >= PROGRESS_MIN_IMAGES
    )
    if workers <= 1 or len(tasks) < 2 * workers:
        # In chunks only so that progress moves; the sum is the same.
        for start in range(0, len(tasks), _SERIAL_CHUNK):
            total += _histogram_chunk((tasks[start : start + _SERIAL_CHUNK], num_classes))
            shown.update(len(tasks[start : start + _SERIAL_CHUNK]))
    else:
        # Several chunks per worker balance uneven image sizes; each returns one summed histogram.
        num_chunks = min(len(tasks), workers * 8)
        chunks = [(tasks[k::num_chunks], num_classes) for k in range(num_chunks)]
        with multiprocessing.get_context().Pool(workers) as pool:
            for count, hist in pool.imap_unordered(_sized_histogram_chunk, chunks):
                total += hist
                shown.update(count)
    shown.close()
    joint = total.reshape(256, 256)
    confusion = joint[:num_classes, :num_classes].copy()
    pred_ignored = joint[:num_classes, 255].copy()
    # torch only here, in the calling process: workers stay numpy-only and start fast.
    import torch

    from wsss_pl.metrics import iou_from_confusion

    iou = iou_from_confusion(torch.from_numpy(confusion), torch.from_numpy(pred_ignored)).numpy()
    miou = float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan")
    return LabelEvaluation(
        confusion=confusion,
        pred_ignored=pred_ignored,
        iou=iou,
        miou=miou,
        num_images=len(tasks),
        missing_predictions=sorted(missing),
        extra_predictions=extra,
        missing_as_background=missing_as_background,
    )


def _class_names(spec: str | None, num_classes: int | None) -> list[str]:
    """Names with background from 'voc', 'coco', a file (one foreground name per line) or N."""
    if spec is None:
        if num_classes is None:
            spec = "voc"
        else:
            return ["background", *(f"class_{i}" for i in range(1, num_classes))]
    if spec in ("voc", "coco"):
        from wsss_pl.classes import VOCABULARIES  # torch import: keep it out of worker start-up

        names = ["background", *VOCABULARIES[spec].class_names]
    else:
        path = Path(spec)
        if not path.is_file():
            raise DataError(f"--classes {spec!r} is neither 'voc', 'coco' nor an existing file")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        if not names:
            raise DataError(f"class names file {path} is empty")
        if names[0].lower() != "background":
            names = ["background", *names]
    if num_classes is not None and num_classes != len(names):
        raise DataError(
            f"--num_classes {num_classes} disagrees with --classes {spec!r}, which has "
            f"{len(names)} classes including background"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="wsss_pl evaluate-labels",
        description="mIoU of a folder of label PNGs against a folder of ground-truth PNGs.",
    )
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted <id>.png")
    parser.add_argument("--gt", required=True, type=Path, help="folder of ground-truth <id>.png")
    parser.add_argument(
        "--num_classes", type=int, help="C with background (default from --classes)"
    )
    parser.add_argument(
        "--classes", help="voc, coco, or a file with one class name per line (default voc)"
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument(
        "--no_progress",
        action="store_true",
        help=f"no progress display on stderr (shown from {PROGRESS_MIN_IMAGES} images on)",
    )
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument(
        "--missing_as_background",
        action="store_true",
        help="count ground-truth ids without a prediction as all background (default: leave out)",
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="also per-class recall/precision, top confusions and worst images (wsss_pl.diagnosis)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns 0 on success, 2 on bad input (message on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse already printed usage / help
        return int(exit_.code or 0)
    try:
        names = _class_names(args.classes, args.num_classes)
        result = evaluate_label_dirs(
            args.pred,
            args.gt,
            len(names),
            workers=args.workers,
            missing_as_background=args.missing_as_background,
            progress=not args.no_progress,
        )
    except (WsssError, ValueError) as error:
        print(f"wsss_pl evaluate-labels: error: {error}", file=sys.stderr)
        return 2
    if result.missing_predictions and not result.missing_as_background:
        print(
            f"wsss_pl evaluate-labels: warning: {len(result.missing_predictions)} ground-truth ids have no prediction and "
            f"were left out (first: {result.missing_predictions[:5]}); "
            "--missing_as_background counts them",
            file=sys.stderr,
        )
    diagnosis = None
    if args.diagnose:
        from wsss_pl import diagnosis as diag

        diagnosis = diag.diagnose_label_dirs(args.pred, args.gt, names, workers=args.workers)
        diag.log_wandb(diagnosis)  # only when a W&B run is active
    if args.format == "json":
        report = to_json(result, names)
        if diagnosis is not None:
            report["diagnosis"] = diag.diagnosis_to_json(diagnosis)
        print(json.dumps(report, indent=1))
    else:
        print(format_table(result, names))
        if diagnosis is not None:
            print(diag.format_diagnosis(diagnosis))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
