"""compare-labels' measurements: each labeller run over the same ids with its time, memory and
box counts (``LabellerStats``), its labels scored against ground truth, and the per-image
disagreement between labellers. Used by ``wsss_pl.compare_labels``."""

from __future__ import annotations

import itertools
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_pl.classes import IGNORE_INDEX


@dataclass
class LabellerStats:
    """What one labeller did on the compared ids."""

    name: str
    fingerprint: str
    labelled_now: int = 0
    images: int = 0  # labelled images over all runs of this fingerprint (for img/s)
    seconds: float = 0.0
    load_seconds: float = 0.0
    peak_memory_mib: float | None = None
    memory_kind: str = ""
    confusion: np.ndarray | None = None  # int64 [C, C + 1], last column: predicted ignore
    boxes: int = 0
    unmatched: int = 0
    missing: int = 0
    counted: int = 0  # ids with metadata
    per_image_iou: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return peak / 1024.0


def label_ids(
    name: str, labels: Any, source: Any, dataset: Any, ids: list[str], options: Any
) -> LabellerStats:
    """Label the ``ids`` that ``labels``' cache lacks; returns the timing of this run + before."""
    from wsss_pl.io import read_json, write_json
    from wsss_pl.labeling.invariance import deterministic_labelling
    from wsss_pl.labeling.label_pass import image_size

    device = _device(options.device)
    labels.bind_device(device)
    labels.setup(source)
    cache = labels.cache
    stats = LabellerStats(name, cache.fingerprint)
    timing_path = Path(options.output_dir) / "timing" / f"{cache.fingerprint}.json"
    previous = read_json(timing_path) if timing_path.is_file() else {}
    stats.images = int(previous.get("images", 0))
    stats.seconds = float(previous.get("seconds", 0.0))
    stats.peak_memory_mib = previous.get("peak_memory_mib")
    stats.memory_kind = previous.get("memory_kind", "")
    todo = [i for i in ids if not cache.has(i)]
    print(f"{name}: {len(ids) - len(todo)} of {len(ids)} ids cached in {cache.directory}")
    if not todo:
        return stats
    start = time.perf_counter()
    labeler = labels.labeler(device)
    stats.load_seconds = time.perf_counter() - start
    # Same-shape images share calls (the label pass's order), in chunks of batch_size.
    shapes = {i: labels.detector_input_size(*image_size(dataset.image_path(i))) for i in todo}
    todo.sort(key=lambda i: (shapes[i], ids.index(i)))
    groups = [list(g) for _, g in itertools.groupby(todo, key=lambda i: shapes[i])]
    chunks = [
        g[k : k + options.batch_size] for g in groups for k in range(0, len(g), options.batch_size)
    ]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bf16 = labels.precision == "bf16"
    for chunk in chunks:
        images = [dataset.load_image(i).to(device) for i in chunk]
        present = [dataset.image_labels(i) for i in chunk]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        with (
            deterministic_labelling(device, labels.cpu_threads),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
        ):
            results = labeler(images, present)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats.seconds += time.perf_counter() - tic
        for sample_id, result in zip(chunk, results, strict=True):
            cache.store(sample_id, result.label.cpu(), {"id": sample_id, **result.metadata})
        stats.images += len(chunk)
        stats.labelled_now += len(chunk)
    if device.type == "cuda":
        stats.peak_memory_mib = torch.cuda.max_memory_allocated(device) / 2**20
        stats.memory_kind = "CUDA peak allocated"
    else:
        stats.peak_memory_mib = _peak_rss_mib()
        stats.memory_kind = "process peak RSS"
    write_json(
        timing_path,
        {
            "name": name, "images": stats.images, "seconds": stats.seconds,
            "peak_memory_mib": stats.peak_memory_mib, "memory_kind": stats.memory_kind,
            "device": str(device),
        },
    )  # fmt: skip
    return stats


def score(
    stats: LabellerStats, labels: Any, dataset: Any, ids: list[str], num_classes: int
) -> None:
    """Confusion against the ground truth, per-image IoU, box counts from the metadata."""
    from wsss_pl.metrics import count_labels

    confusion = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    for sample_id in ids:
        label = labels.cache.load(sample_id)
        metadata = labels.cache.load_metadata(sample_id) or {}
        if metadata:
            stats.counted += 1
            stats.boxes += len(metadata.get("instances") or ())
            stats.unmatched += int(metadata.get("num_unmatched_boxes") or 0)
            stats.missing += len(metadata.get("missing_classes") or ())
        gt = dataset.load_gt(sample_id)
        if gt is None or label is None:
            continue
        matrix, ignored = count_labels(label, gt, num_classes)
        confusion[:, :num_classes] += matrix.numpy()
        confusion[:, num_classes] += ignored.numpy()
        stats.per_image_iou[sample_id] = _miou(matrix.numpy(), ignored.numpy(), present_only=True)
    stats.confusion = confusion if confusion.any() else None


def _iou(matrix: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """float [C] IoU per class (NaN where a class is in neither map); ignore = miss."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(1) + ignored + matrix.sum(0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def _miou(matrix: np.ndarray, ignored: np.ndarray, present_only: bool = False) -> float:
    values = _iou(matrix, ignored)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def disagreements(labellers: dict[str, Any], ids: list[str], top: int) -> list[dict[str, Any]]:
    """The ``top`` ids with the highest mean pairwise fraction of differing pixels (pixels that
    are ignore in either label excluded), most disputed first."""
    if len(labellers) < 2:
        return []
    rows = []
    for sample_id in ids:
        maps = [labels.cache.load(sample_id) for labels in labellers.values()]
        if any(m is None for m in maps):
            continue
        fractions = []
        for a, b in itertools.combinations(maps, 2):
            valid = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            fractions.append(float(((a != b) & valid).sum()) / max(int(valid.sum()), 1))
        rows.append({"id": sample_id, "disagreement": float(np.mean(fractions))})
    rows.sort(key=lambda r: (-r["disagreement"], r["id"]))
    return rows[:top]
