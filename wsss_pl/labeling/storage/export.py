"""Export cached pseudo-labels as a COCO instance-segmentation JSON (one annotation per instance)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from wsss_pl.classes import ClassVocabulary
from wsss_pl.errors import DataError
from wsss_pl.io import check_output_file, write_bytes
from wsss_pl.labeling.storage.cache import PseudoLabelCache, decode_rle


def _image_ids(sample_ids: list[str]) -> dict[str, int]:
    """Integer COCO image ids: the numeric value when every id is a distinct number (COCO file
    stems such as "000000139077", so the export lines up with real COCO annotations), else 1..N."""
    if all(s.isdigit() for s in sample_ids):
        numeric = {s: int(s) for s in sample_ids}
        if len(set(numeric.values())) == len(numeric):
            return numeric
    return {s: index + 1 for index, s in enumerate(sample_ids)}


def _annotation(
    mask: np.ndarray, annotation_id: int, image_id: int, category_id: int, score: float
) -> dict[str, Any]:
    """COCO annotation of a uint8 [H, W] mask (RLE counts as str so it serialises to JSON)."""
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()},
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
        "score": float(score),
    }


def export_coco_json(
    cache: PseudoLabelCache,
    vocabulary: ClassVocabulary,
    output: str | Path,
    *,
    image_file_names: Mapping[str, str] | None = None,
    visible_only: bool = True,
    ids: list[str] | None = None,
) -> dict[str, Any]:
    """Write every complete cache entry as COCO JSON to ``output`` (atomically) and return it.

    Args:
        cache: the pseudo-label cache to export (entries need their metadata JSON).
        vocabulary: class names; category ids are ``vocabulary.category_ids`` when set, else 1..C.
        output: path of the JSON file.
        image_file_names: sample id -> image file name; default ``"<id>.jpg"``.
        visible_only: intersect each instance's raw SAM mask with the merged label map's pixels
            of its class, so the annotations agree with the label map (overlaps resolved, ignored
            pixels dropped); instances left with no pixel are skipped (counted in ``info``).

    Returns:
        The COCO dict: ``images`` (id, file_name, height, width, wsss_pl_id), ``categories``
        (id, name), ``annotations`` (id, image_id, category_id, RLE segmentation, area, bbox xywh,
        iscrowd 0, score), ``info``.
    """
    category_ids = vocabulary.category_ids or tuple(range(1, len(vocabulary.class_names) + 1))
    names = image_file_names or {}
    sample_ids = cache.ids() if ids is None else list(ids)
    image_ids = _image_ids(sample_ids)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    skipped_empty = 0
    skipped_images: list[str] = []
    for sample_id in sample_ids:
        metadata = cache.load_metadata(sample_id)
        label = cache.load(sample_id) if visible_only else None
        if metadata is None or (visible_only and label is None):
            skipped_images.append(sample_id)
            continue
        label_np = label.numpy() if isinstance(label, torch.Tensor) else None
        image_id = image_ids[sample_id]
        images.append(
            {
                "id": image_id,
                "file_name": names.get(sample_id, f"{sample_id}.jpg"),
                "height": int(metadata["height"]),
                "width": int(metadata["width"]),
                "wsss_pl_id": sample_id,
            }
        )
        for instance in metadata["instances"]:
            class_id = int(instance["label"])
            if not 1 <= class_id <= len(vocabulary.class_names) or (
                "class" in instance and vocabulary.class_names[class_id - 1] != instance["class"]
            ):
                raise DataError(
                    f"cache entry {cache.metadata_path(sample_id)} has an instance of class "
                    f"{instance.get('class')!r} with label {class_id}, which does not match "
                    f"vocabulary {vocabulary.name!r}; export with the vocabulary that made it"
                )
            mask = decode_rle(instance["rle"]).numpy().astype(np.uint8)
            if label_np is not None:
                mask &= (label_np == class_id).astype(np.uint8)
                if not mask.any():
                    skipped_empty += 1
                    continue
            annotations.append(
                _annotation(
                    mask,
                    len(annotations) + 1,
                    image_id,
                    category_ids[class_id - 1],
                    instance["score"],
                )
            )
    if skipped_images:
        warnings.warn(
            f"{len(skipped_images)} cache entries had no readable metadata or label and were left "
            f"out of the export (first: {skipped_images[:5]})",
            RuntimeWarning,
            stacklevel=2,
        )
    coco: dict[str, Any] = {
        "info": {
            "description": f"wsss_pl pseudo-labels, cache {cache.fingerprint}",
            "cache_settings": cache.settings,
            "visible_only": visible_only,
            "skipped_empty_instances": skipped_empty,
        },
        "images": images,
        "categories": [
            {"id": int(cid), "name": name}
            for cid, name in zip(category_ids, vocabulary.class_names, strict=True)
        ],
        "annotations": annotations,
    }
    write_bytes(output, json.dumps(coco, separators=(",", ":")).encode("utf-8"))
    return coco


def _vocabulary_of(cache: PseudoLabelCache) -> ClassVocabulary:
    """The vocabulary a cache was labelled with (its manifest's class list); COCO keeps its ids."""
    from wsss_pl.classes import VOCABULARIES

    classes = tuple(cache.settings.get("classes", ()))
    if not classes:
        raise DataError(f"{cache.manifest_path} lists no classes; cannot name the categories")
    for known in VOCABULARIES.values():
        if known.class_names == classes:
            return known
    return ClassVocabulary(name=cache.dataset, class_names=classes)


def main(argv: list[str] | None = None) -> int:
    """``python -m wsss_pl export-labels --cache DIR --output FILE``: cache -> COCO JSON."""
    import sys

    from wsss_pl.options import CommandParser

    parser = CommandParser(
        prog="wsss_pl export-labels",
        description="Export a pseudo-label cache as COCO instance JSON (RLE masks), e.g. for CVAT "
        "or Label Studio review.",
    )
    parser.add_argument(
        "--cache", required=True, help="<cache_root>/<dataset>/<fingerprint> directory"
    )
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --output if it exists (else an error)"
    )
    parser.add_argument(
        "--image_ext", default=".jpg", help="file name suffix of the images (default .jpg)"
    )
    parser.add_argument(
        "--raw_masks",
        action="store_true",
        help="export SAM's raw masks instead of the visible parts",
    )
    args = parser.parse_args(argv)
    from wsss_pl.errors import WsssError

    try:
        check_output_file(args.output, args.overwrite, "--output")
        cache = PseudoLabelCache.from_directory(args.cache)
        vocabulary = _vocabulary_of(cache)
        names = {sample_id: f"{sample_id}{args.image_ext}" for sample_id in cache.ids()}
        exported = export_coco_json(
            cache, vocabulary, args.output, image_file_names=names, visible_only=not args.raw_masks
        )
    except WsssError as error:
        print(f"wsss_pl export-labels: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. a read-only folder: the temp file cannot be made
        print(
            f"wsss_pl export-labels: error: cannot write {args.output}: {error.strerror or error}",
            file=sys.stderr,
        )
        return 2
    print(
        f"wrote {args.output}: {len(exported['images'])} images, "
        f"{len(exported['annotations'])} annotations, {len(exported['categories'])} categories"
    )
    return 0
