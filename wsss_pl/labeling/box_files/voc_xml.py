"""Boxes of one VOC annotation XML (``<object><bndbox>``, 1-based inclusive -> 0-based xyxy)."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from wsss_pl.classes import ClassVocabulary
from wsss_pl.errors import CorruptFileError, UnknownClassError
from wsss_pl.labeling.box_files.boxes import ImageBoxes, check_box, check_overlap


def voc_xml_boxes(
    path: str | Path, vocabulary: ClassVocabulary, include_difficult: bool = True
) -> ImageBoxes:
    """Boxes of one VOC annotation XML (1-based inclusive bndbox -> 0-based xyxy)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise CorruptFileError(
            f"annotation {path} is not valid XML ({error}); replace it"
        ) from error
    rows: list[tuple[list[float], int, bool]] = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in vocabulary.class_names:
            raise UnknownClassError(
                f"{path}: object class {name!r} is not one of {', '.join(vocabulary.class_names)}"
            )
        if not include_difficult and (obj.findtext("difficult") or "0").strip() == "1":
            continue
        box = obj.find("bndbox")
        try:
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr,arg-type]
        except (AttributeError, TypeError, ValueError) as error:
            raise CorruptFileError(f"{path}: object {name!r} has no valid <bndbox>") from error
        xyxy = check_box([coords[0] - 1, coords[1] - 1, coords[2], coords[3]], f"{path}: {name!r}")
        rows.append((xyxy, vocabulary.label_id(name), False))
    boxes = ImageBoxes.from_rows(rows)
    try:  # the size the annotation was drawn on; boxes_of clips to the decoded image
        height, width = (int(root.findtext(f"size/{k}") or "") for k in ("height", "width"))
    except ValueError:
        return boxes
    if height > 0 and width > 0:
        check_overlap(boxes, height, width, str(path))
    return boxes
