"""One YOLO label file (``class cx cy w h`` per line, normalised to [0, 1]) in image pixels."""

from __future__ import annotations

from pathlib import Path

from wsss_pl.classes import ClassVocabulary
from wsss_pl.errors import DataError, UnknownClassError
from wsss_pl.labeling.box_files.boxes import ImageBoxes


def yolo_boxes(path: Path, height: int, width: int, vocabulary: ClassVocabulary) -> ImageBoxes:
    """One YOLO label file (``class cx cy w h`` per line, normalised) in pixels of the image."""
    rows: list[tuple[list[float], int, bool]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            index, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
        except (ValueError, IndexError) as error:
            raise DataError(f"{path}:{number}: expected 'class cx cy w h', got {line!r}") from error
        values = (cx, cy, w, h)
        if not all(0 <= v <= 1 for v in values) or w <= 0 or h <= 0:  # also refuses nan
            raise DataError(
                f"{path}:{number}: box {line.strip()!r} must be 'class cx cy w h' normalised to "
                "[0, 1] with w, h > 0 (YOLO format)"
            )
        if not 0 <= index < vocabulary.num_classes:
            raise UnknownClassError(
                f"{path}:{number}: class index {index} outside 0..{vocabulary.num_classes - 1}"
            )
        box = [
            (cx - w / 2) * width,
            (cy - h / 2) * height,
            (cx + w / 2) * width,
            (cy + h / 2) * height,
        ]
        rows.append((box, index + 1, False))
    return ImageBoxes.from_rows(rows)
