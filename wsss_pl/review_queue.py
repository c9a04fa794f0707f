"""``python -m wsss_pl review-queue``: which cached pseudo-labels to look at first, without ground truth.

Every cache entry is scored from what the cache already holds (its label PNG and its metadata JSON,
see ``wsss_pl.labeling.storage.cache``); each signal is a number in [0, 1], 1 = suspicious:

- ``missing_class``: share of the image-level classes that got no box (``missing_classes``);
- ``unmatched_boxes``: share of the detector's boxes whose phrase matched no class
  (``num_unmatched_boxes`` against the kept instances);
- ``low_score``: 1 - the mean detection score of the kept instances;
- ``mask_box_fit``: 1 - the mean IoU between each instance's detection box and the tight box of
  its stored SAM mask. SAM's own predicted IoU is not stored in the cache (the segmenters do not
  return it), so this proxy is computed from the stored RLE masks instead: a mask that leaks out
  of its box, or fills a sliver of it, is what a low predicted IoU usually means;
- ``overlap``: share of the masked pixels claimed by instances of two different classes;
- ``area_extreme``: share of the detected classes whose pixels in the label map cover almost none
  (< ``TINY_AREA``) or almost all (> ``HUGE_AREA``) of the image;
- ``disagreement``: share of pixels where a second labeller's cache of the same ids (e.g. one
  that ``compare-labels`` made) gives another label; only with ``--second-cache``.

The score is the weighted mean of the signals (``DEFAULT_WEIGHTS``; ``--weights`` overrides);
the reason column names, in words, the signals that contributed most. Output: ``queue.csv``
(rank, id, score, reason, every signal), composites of the top N (image | pseudo-label
[| ground truth]) under ``composites/``, and the top 10 printed.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsss_pl.errors import DataError, WsssError
from wsss_pl.options import CommandParser

PROG = "wsss_pl review-queue"
SIGNALS = (
    "missing_class",
    "unmatched_boxes",
    "low_score",
    "mask_box_fit",
    "overlap",
    "area_extreme",
    "disagreement",
)
# Chosen by grid search on the simulated VOC set of scripts/review_queue_benchmark.py and
# reported there on the simulated COCO set (docs/review-and-correct.md).
DEFAULT_WEIGHTS: dict[str, float] = {
    "missing_class": 2.0,
    "unmatched_boxes": 0.0,
    "low_score": 2.0,
    "mask_box_fit": 0.5,
    "overlap": 0.5,
    "area_extreme": 1.0,
    "disagreement": 2.0,  # not in the simulation (no second labeller): not tuned
}
TINY_AREA = 0.002
HUGE_AREA = 0.95
REASON_MIN = 0.15  # a signal below this is not named in the reason


class ReviewQueueError(WsssError):
    """Bad review-queue input (printed as one line)."""


@dataclass
class QueueEntry:
    """One ranked cache entry: ``signals`` maps signal name -> value in [0, 1]."""

    id: str
    score: float
    reason: str
    signals: dict[str, float] = field(default_factory=dict)


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two [x0, y0, x1, y1] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _tight_box(mask: np.ndarray) -> list[float] | None:
    """[x0, y0, x1, y1] (pixel edges) of a bool [H, W] mask, None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def image_signals(
    metadata: Mapping[str, Any],
    label: np.ndarray,
    class_names: Sequence[str],
    second_label: np.ndarray | None = None,
    masks: Sequence[np.ndarray] | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """The signals of one cache entry and, per signal, a phrase saying why.

    Args:
        metadata: the entry's metadata JSON (``instances`` with label / class / score / box /
            rle, ``missing_classes``, ``num_unmatched_boxes``, the image-level ``classes``).
        label: uint8 [H, W] cached label map (0 background, 1..C, 255 ignore).
        class_names: names of label ids 1..C (``class_names[i - 1]``).
        second_label: uint8 [H, W] another labeller's map of the same image, or None.
        masks: bool [H, W] raw instance masks in ``instances`` order (decoded from the RLEs when
            None).

    Returns:
        ({signal: value in [0, 1]}, {signal: phrase}); ``disagreement`` only with a second label.
    """
    from wsss_pl.labeling.storage.cache import decode_rle

    instances = list(metadata.get("instances", []))
    missing = [str(c) for c in metadata.get("missing_classes", [])]
    unmatched = int(metadata.get("num_unmatched_boxes", 0))
    if masks is None:
        masks = [decode_rle(inst["rle"]).numpy() for inst in instances]
    detected = sorted({str(inst["class"]) for inst in instances})
    prompted = len(set(metadata.get("classes") or ()) | set(detected) | set(missing))
    values: dict[str, float] = {}
    why: dict[str, str] = {}

    values["missing_class"] = len(missing) / prompted if prompted else 0.0
    why["missing_class"] = f"no box for {', '.join(missing)}"
    boxes = len(instances) + unmatched
    values["unmatched_boxes"] = unmatched / boxes if boxes else 0.0
    why["unmatched_boxes"] = f"{unmatched} of {boxes} boxes matched no class"

    scores = [float(inst["score"]) for inst in instances]
    values["low_score"] = 1.0 - float(np.mean(scores)) if scores else 0.0
    why["low_score"] = f"weak detections (mean score {np.mean(scores) if scores else 0:.2f})"

    fits = []
    for inst, mask in zip(instances, masks, strict=True):
        tight = _tight_box(mask)
        fits.append(0.0 if tight is None else _box_iou(inst["box"], tight))
    values["mask_box_fit"] = 1.0 - float(np.mean(fits)) if fits else 0.0
    why["mask_box_fit"] = (
        f"masks fit their boxes poorly (mean box IoU {np.mean(fits) if fits else 0:.2f})"
    )

    claimed = np.zeros(label.shape, dtype=np.int64)  # bit per class id would overflow; count sets
    seen_any = np.zeros(label.shape, dtype=bool)
    per_class: dict[int, np.ndarray] = {}
    for inst, mask in zip(instances, masks, strict=True):
        cid = int(inst["label"])
        per_class[cid] = per_class.get(cid, np.zeros(label.shape, dtype=bool)) | mask
    for mask in per_class.values():
        claimed += mask
        seen_any |= mask
    contested = claimed >= 2
    values["overlap"] = float(contested.sum() / seen_any.sum()) if seen_any.any() else 0.0
    why["overlap"] = f"{values['overlap']:.0%} of masked pixels claimed by two classes"

    area = label.size
    extremes = []
    for name in detected:
        cid = list(class_names).index(name) + 1 if name in class_names else None
        share = float((label == cid).sum() / area) if cid is not None else 0.0
        if share < TINY_AREA:
            extremes.append(f"{name} covers {share:.1%}")
        elif share > HUGE_AREA:
            extremes.append(f"{name} covers {share:.0%}")
    values["area_extreme"] = len(extremes) / len(detected) if detected else 0.0
    why["area_extreme"] = "; ".join(extremes) + " of the image"

    if second_label is not None:
        if second_label.shape != label.shape:
            raise ReviewQueueError(
                f"{metadata.get('id')}: the second labeller's map is {second_label.shape}, the "
                f"cached one {label.shape}; --second-cache must label the same images"
            )
        values["disagreement"] = float((second_label != label).mean())
        why["disagreement"] = f"second labeller differs on {values['disagreement']:.0%} of pixels"
    return values, why


def combine(values: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted mean of the available signals (0 when every weight is 0)."""
    total = sum(weights.get(k, 0.0) for k in values)
    if total <= 0:
        return 0.0
    return sum(weights.get(k, 0.0) * v for k, v in values.items()) / total


def reason(
    values: Mapping[str, float], why: Mapping[str, str], weights: Mapping[str, float]
) -> str:
    """The phrases of the signals that add most to the score (at most three), or 'no warning'."""
    parts = sorted(
        (k for k, v in values.items() if v >= REASON_MIN and weights.get(k, 0.0) > 0),
        key=lambda k: -weights.get(k, 0.0) * values[k],
    )
    return "; ".join(why[k] for k in parts[:3]) or "no warning sign"


def parse_weights(text: str | None) -> dict[str, float]:
    """``"missing_class=2,overlap=0"`` -> DEFAULT_WEIGHTS with those replaced."""
    weights = dict(DEFAULT_WEIGHTS)
    if not text:
        return weights
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SIGNALS:
            raise ReviewQueueError(
                f"--weights item {item!r} must be SIGNAL=NUMBER with SIGNAL one of {', '.join(SIGNALS)}"
            )
        try:
            weights[key] = float(value)
        except ValueError:
            raise ReviewQueueError(f"--weights {key}: {value!r} is not a number") from None
        if weights[key] < 0:
            raise ReviewQueueError(f"--weights {key} must be >= 0, got {value}")
    return weights


def rank_cache(
    cache: Any,
    class_names: Sequence[str],
    weights: Mapping[str, float] | None = None,
    second_cache: Any | None = None,
    ids: Sequence[str] | None = None,
) -> list[QueueEntry]:
    """Score every complete entry of ``cache`` (a ``PseudoLabelCache``), highest score first.

    An entry without readable metadata is ranked first with reason "metadata missing"; an id
    the second cache lacks gets no disagreement signal.
    """
    weights = dict(weights or DEFAULT_WEIGHTS)
    entries = []
    for sample_id in ids if ids is not None else cache.ids():
        label_t = cache.load(sample_id)
        metadata = cache.load_metadata(sample_id)
        if label_t is None or metadata is None:
            entries.append(QueueEntry(sample_id, 1.0, "metadata or label missing/unreadable"))
            continue
        second = second_cache.load(sample_id) if second_cache is not None else None
        values, why = image_signals(
            metadata,
            label_t.numpy(),
            class_names,
            None if second is None else second.numpy(),
        )
        entries.append(
            QueueEntry(sample_id, combine(values, weights), reason(values, why, weights), values)
        )
    entries.sort(key=lambda e: (-e.score, e.id))
    return entries


def queue_csv(entries: Sequence[QueueEntry]) -> str:
    """CSV text: rank, id, score, reason, then one column per signal (empty when absent)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "id", "score", "reason", *SIGNALS])
    for rank, e in enumerate(entries, start=1):
        signals = [f"{e.signals[k]:.4f}" if k in e.signals else "" for k in SIGNALS]
        writer.writerow([rank, e.id, f"{e.score:.4f}", e.reason, *signals])
    return buffer.getvalue()


def recall_of_worst(scores: Sequence[float], ious: Sequence[float], share: float = 0.1) -> float:
    """Share of the ``share`` lowest-IoU images found among the ``share`` highest-scored ones
    (ties broken by position). 1.0 = the queue's top is exactly the worst labels."""
    n = len(scores)
    if n == 0 or len(ious) != n:
        raise ValueError(f"need as many scores as IoUs, got {n} and {len(ious)}")
    k = max(1, round(n * share))
    top = set(np.argsort(-np.asarray(scores), kind="stable")[:k].tolist())
    worst = set(np.argsort(np.asarray(ious), kind="stable")[:k].tolist())
    return len(top & worst) / k


# --------------------------------------------------------------------------- the command


def _cache_from_config(config: Path, cache: str | None) -> tuple[Any, Path]:
    """(dataset source, cache directory) of a training config: ``cache`` when given, else the
    single cache under ``data.train_labels.init_args.cache_root/<dataset>/``."""
    import yaml

    from wsss_pl.compare_labels import load_source

    if not config.is_file():
        raise ReviewQueueError(f"config file {config} does not exist")
    try:
        content = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ReviewQueueError(f"config file {config} is not valid YAML: {error}") from None
    source = load_source(argparse.Namespace(source=None, data=str(config)))
    if cache is not None:
        return source, Path(cache)
    labels = (content.get("data") or {}).get("train_labels") or {}
    root = Path(((labels.get("init_args") or {}).get("cache_root")) or "pseudo_labels")
    found = sorted(p.parent for p in (root / source.name).glob("*/manifest.json"))
    if not found:
        raise ReviewQueueError(
            f"no pseudo-label cache under {root / source.name} (data.train_labels.init_args."
            f"cache_root of {config}): run `wsss_pl label --config {config}` first"
        )
    if len(found) > 1:
        raise ReviewQueueError(
            f"{len(found)} caches under {root / source.name} ({', '.join(p.name for p in found)}): "
            "pick one with --cache <that directory>"
        )
    return source, found[0]


def _rows_for_composites(
    entries: Sequence[QueueEntry], cache: Any, dataset: Any, images: Path | None
) -> list[dict[str, Any]]:
    """Review rows (image, pseudo-label, ground truth when known) of ``entries``."""
    from wsss_pl.io import read_image

    index = {sample_id: i for i, sample_id in enumerate(dataset.ids)} if dataset else {}
    rows = []
    for entry in entries:
        label = cache.load(entry.id)
        if label is None:
            continue
        gt = None
        if entry.id in index:
            image = dataset.load_image(entry.id)
            gt = dataset.load_gt(entry.id)
        elif images is not None:
            found = sorted(images.glob(f"{entry.id}.*"))
            if not found:
                raise ReviewQueueError(f"--images {images} has no image file {entry.id}.*")
            image = read_image(found[0])
        else:
            continue
        row: dict[str, Any] = {
            "id": entry.id,
            "image": image.permute(1, 2, 0).numpy(),
            "pseudo_label": label.numpy(),
        }
        if gt is not None:
            row["ground_truth"] = gt.numpy()
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=PROG,
        renamed={"--out": "--output_dir"},
        description="Rank cached pseudo-labels by warning signs (no ground truth needed): CSV, "
        "composites of the top N, top 10 printed.",
    )
    parser.add_argument("--config", help="training config: its data.source and cache_root")
    parser.add_argument(
        "--cache", help="<cache_root>/<dataset>/<fingerprint> (instead of or with --config)"
    )
    parser.add_argument("--second_cache", help="a second labeller's cache of the same ids")
    parser.add_argument(
        "--stage", default="train", help="split of --config's source (default train)"
    )
    parser.add_argument(
        "--images", help="folder of <id>.<ext> images for composites without --config"
    )
    parser.add_argument(
        "--top", type=int, default=20, help="composites of the N first (default 20)"
    )
    parser.add_argument("--output_dir", default="runs/review_queue", help="output folder")
    parser.add_argument("--weights", help="SIGNAL=W,... overriding the default weights")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier queue in --output_dir"
    )
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (2 on bad input, one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except WsssError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from PIL import Image

    from wsss_pl.io import write_bytes
    from wsss_pl.labeling.storage.cache import PseudoLabelCache
    from wsss_pl.labeling.storage.export import _vocabulary_of
    from wsss_pl.review import compose, safe_name

    if args.config is None and args.cache is None:
        raise ReviewQueueError("give --config CONFIG (a training config) or --cache DIR")
    if args.top < 0:
        raise ReviewQueueError(f"--top must be >= 0, got {args.top}")
    weights = parse_weights(args.weights)
    out = Path(args.output_dir)
    csv_path = out / "queue.csv"
    if csv_path.exists() and not args.overwrite:
        raise ReviewQueueError(
            f"{csv_path} exists; pass --overwrite to replace it or another --out"
        )
    source = None
    if args.config is not None:
        source, cache_dir = _cache_from_config(Path(args.config), args.cache)
    else:
        cache_dir = Path(args.cache)
    cache = PseudoLabelCache.from_directory(cache_dir)
    second = PseudoLabelCache.from_directory(args.second_cache) if args.second_cache else None
    names = list(_vocabulary_of(cache).class_names)
    if not cache.ids():
        raise ReviewQueueError(f"pseudo-label cache {cache.directory} holds no labels")
    entries = rank_cache(cache, names, weights, second)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(csv_path, queue_csv(entries).encode("utf-8"))
    dataset = None
    if source is not None:
        try:
            source.prepare_data()
            dataset = source.dataset(args.stage)
        except DataError as error:
            raise ReviewQueueError(f"{args.config}: {error}") from None
    images = Path(args.images) if args.images else None
    rows = _rows_for_composites(entries[: args.top], cache, dataset, images)
    composites = out / "composites"
    for stale in composites.glob("rank*.png"):  # an earlier queue's (only with --overwrite)
        stale.unlink()
    if rows:
        composites.mkdir(exist_ok=True)
    ranks = {e.id: i for i, e in enumerate(entries, start=1)}
    for row in rows:
        path = composites / f"rank{ranks[row['id']]:04d}_{safe_name(row['id'])}.png"
        Image.fromarray(compose(row, ["background", *names])).save(path)
    print(f"review queue of {len(entries)} labels in {cache.directory} -> {csv_path}")
    print(f"{'rank':>4}  {'score':>5}  id  reason")
    for rank, e in enumerate(entries[:10], start=1):
        print(f"{rank:>4}  {e.score:.3f}  {e.id}  {e.reason}")
    if rows:
        print(f"{len(rows)} composites in {composites}")
    elif args.top:
        print("no composites: give --config (its dataset has the images) or --images DIR")
    return 0
