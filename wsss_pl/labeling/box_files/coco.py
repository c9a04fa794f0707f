"""Boxes of a COCO instances JSON (``bbox`` xywh -> xyxy, ``iscrowd`` -> crowd)."""

from __future__ import annotations

import math
from pathlib import Path

from wsss_pl.classes import ClassVocabulary
from wsss_pl.errors import DataError, UnknownClassError
from wsss_pl.io import read_json
from wsss_pl.labeling.box_files.boxes import ImageBoxes


def coco_boxes(annotation_file: str | Path, vocabulary: ClassVocabulary) -> dict[str, ImageBoxes]:
    """Boxes of a COCO instances JSON, keyed by image file stem; ``bbox`` xywh -> xyxy.

    Annotations without a positive-size ``bbox`` are skipped (they cannot prompt SAM).
    """
    path = Path(annotation_file)
    content = read_json(path)
    if not isinstance(content, dict) or "images" not in content or "annotations" not in content:
        raise DataError(f"{path} is not a COCO instances file (needs 'images' and 'annotations')")
    if vocabulary.category_ids is None:
        raise DataError(f"{path}: COCO boxes need a vocabulary with COCO category ids")
    to_label = {c: i + 1 for i, c in enumerate(vocabulary.category_ids)}
    stems = {image["id"]: Path(image["file_name"]).stem for image in content["images"]}
    rows: dict[str, list[tuple[list[float], int, bool]]] = {stem: [] for stem in stems.values()}
    for annotation in content["annotations"]:
        if annotation.get("image_id") not in stems:
            raise DataError(
                f"{path}: annotation {annotation.get('id')} has image_id "
                f"{annotation.get('image_id')!r}, which no entry of 'images' has"
            )
        label = to_label.get(annotation["category_id"])
        if label is None:
            raise UnknownClassError(
                f"{path}: annotation {annotation.get('id')} has unknown category id "
                f"{annotation['category_id']}"
            )
        bbox = annotation.get("bbox") or [0, 0, 0, 0]
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
        ):
            raise DataError(f"{path}: annotation {annotation.get('id')} has bbox {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            continue
        rows[stems[annotation["image_id"]]].append(
            ([x, y, x + w, y + h], label, bool(annotation.get("iscrowd", 0)))
        )
    return {stem: ImageBoxes.from_rows(r) for stem, r in rows.items()}
