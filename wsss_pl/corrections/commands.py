"""``export-review`` (cache entries -> Label Studio tasks or COCO for CVAT) and ``import-labels``
(a reviewed Label Studio export or COCO file -> the corrections layer)."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from wsss_pl.errors import DataError, WsssError
from wsss_pl.options import CommandParser


def _ids(args: argparse.Namespace, cache: Any) -> list[str]:
    """The ids to export: --ids, else the first --top of --queue, else every cache entry."""
    if args.ids:
        ids = [i for i in args.ids.split(",") if i]
    elif args.queue:
        queue = Path(args.queue)
        if not queue.is_file():
            raise DataError(f"--queue {queue} does not exist; run review-queue first")
        with queue.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "id" not in rows[0]:
            raise DataError(f"--queue {queue} has no id column; give review-queue's queue.csv")
        ids = [row["id"] for row in rows][: args.top]
    else:
        ids = cache.ids()
    missing = [i for i in ids if not cache.has(i)]
    if missing:
        raise DataError(f"{cache.directory} has no label for id {missing[0]!r} (--ids / --queue)")
    if not ids:
        raise DataError("no ids to export")
    return ids


def export_review(argv: list[str] | None = None) -> int:
    """``python -m wsss_pl export-review --cache DIR --output FILE [--queue CSV --top N | --ids]``."""
    from wsss_pl.corrections.formats import label_studio_config, label_studio_tasks
    from wsss_pl.io import check_output_file, write_bytes
    from wsss_pl.labeling.storage.cache import PseudoLabelCache
    from wsss_pl.labeling.storage.export import _vocabulary_of, export_coco_json

    parser = CommandParser(
        prog="wsss_pl export-review",
        description="Pseudo-labels for human review: Label Studio tasks with pre-annotations "
        "(brush RLE) or COCO instance JSON (CVAT).",
    )
    parser.add_argument("--cache", required=True, help="<cache_root>/<dataset>/<fingerprint>")
    parser.add_argument("--output", required=True, help="tasks JSON (label-studio) or COCO JSON")
    parser.add_argument("--format", choices=("label-studio", "coco"), default="label-studio")
    parser.add_argument("--queue", help="review-queue's queue.csv: export its first --top ids")
    parser.add_argument("--top", type=int, default=50, help="with --queue (default 50)")
    parser.add_argument("--ids", help="comma-separated ids instead of --queue")
    parser.add_argument(
        "--image_url",
        default="/data/local-files/?d={id}.jpg",
        help="Label Studio image URL of an id ({id} is replaced)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = parser.parse_args(argv)
    try:
        cache = PseudoLabelCache.from_directory(args.cache)
        names = list(_vocabulary_of(cache).class_names)
        ids = _ids(args, cache)
        output = Path(args.output)
        check_output_file(output, args.overwrite, "--output")
        if args.format == "coco":
            vocabulary = _vocabulary_of(cache)
            coco = export_coco_json(cache, vocabulary, output, ids=ids)
            print(f"wrote {output}: {len(coco['images'])} images for CVAT (COCO 1.0 import)")
            return 0
        config = output.with_name(output.stem + "_label_config.xml")
        check_output_file(config, args.overwrite, "--output's label config")
        tasks = label_studio_tasks(cache, ids, names, lambda i: args.image_url.format(id=i))
        write_bytes(config, label_studio_config(names).encode("utf-8"))
        write_bytes(output, json.dumps(tasks).encode("utf-8"))
        print(f"wrote {output} ({len(tasks)} Label Studio tasks) and its interface {config}")
        return 0
    except WsssError as error:
        print(f"wsss_pl export-review: error: {error}", file=sys.stderr)
        return 2


def _source_and_root(config: Path) -> tuple[Any, Path]:
    import yaml

    from wsss_pl.compare_labels import load_source

    if not config.is_file():
        raise DataError(f"config file {config} does not exist")
    content = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    source = load_source(argparse.Namespace(source=None, data=str(config)))
    labels = (content.get("data") or {}).get("train_labels") or {}
    root = (labels.get("init_args") or {}).get("cache_root") or "pseudo_labels"
    return source, Path(root)


def import_labels(argv: list[str] | None = None) -> int:
    """``python -m wsss_pl import-labels FILE --config CONFIG [--overwrite]``."""
    from PIL import Image

    from wsss_pl.corrections.formats import ReviewFileError, read_review_file
    from wsss_pl.labeling.storage.corrections import CorrectionsLayer, corrections_dir

    parser = CommandParser(
        prog="wsss_pl import-labels",
        description="Read a Label Studio JSON export or a COCO file (CVAT) into the corrections "
        "layer <cache_root>/<dataset>/corrections/, which training uses before the cache.",
    )
    parser.add_argument("file", help="Label Studio JSON export or COCO instance JSON")
    parser.add_argument("--config", required=True, help="the training config (dataset, cache_root)")
    parser.add_argument("--stage", default="train", help="split the ids belong to (default train)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing corrections")
    args = parser.parse_args(argv)
    path = Path(args.file)
    try:
        source, root = _source_and_root(Path(args.config))
        source.prepare_data()
        dataset = source.dataset(args.stage)
        known = set(dataset.ids)

        def sizes(sample_id: str) -> tuple[int, int]:
            if sample_id not in known:
                raise ReviewFileError(
                    f"{path}: id {sample_id!r} is not in the {args.stage} split of {source.name}"
                )
            with Image.open(dataset.image_path(sample_id)) as image:
                return image.height, image.width

        imported = read_review_file(path, source.vocabulary.class_names, sizes)
        if not imported:
            raise ReviewFileError(f"{path}: no annotated task/image in it; nothing imported")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        run = {"source_file": str(path.resolve()), "sha256": digest, "imported_at": when}
        layer = CorrectionsLayer(corrections_dir(root, source.name), source.vocabulary.palette())
        layer.store_all(
            {i: item.label for i, item in imported.items()},
            {i: {"id": i, **run, **item.provenance} for i, item in imported.items()},
            run,
            overwrite=args.overwrite,
        )
    except WsssError as error:
        print(f"wsss_pl import-labels: error: {error}", file=sys.stderr)
        return 2
    print(f"imported {len(imported)} corrected labels from {path} into {layer.directory}")
    return 0
