"""A user box file in JSON: ``{id: [{"box": [x1, y1, x2, y2], "class": name, "crowd": bool}]}``."""

from __future__ import annotations

from pathlib import Path

from wsss_pl.classes import ClassVocabulary
from wsss_pl.errors import DataError, UnknownClassError
from wsss_pl.io import read_json
from wsss_pl.labeling.box_files.boxes import ImageBoxes, check_box


def json_boxes(path: str | Path, vocabulary: ClassVocabulary) -> dict[str, ImageBoxes]:
    """A user box file ``{id: [{"box": [x1, y1, x2, y2], "class": name, "crowd": bool}]}``."""
    path = Path(path)
    content = read_json(path)
    if not isinstance(content, dict):
        raise DataError(f"box file {path} must be a JSON object {{id: [{{box, class}}, ...]}}")
    result: dict[str, ImageBoxes] = {}
    for sample_id, entries in content.items():
        rows: list[tuple[list[float], int, bool]] = []
        for k, entry in enumerate(entries if isinstance(entries, list) else [None]):
            where = f"box file {path}: {sample_id!r} entry {k}"
            if not isinstance(entry, dict) or "box" not in entry or "class" not in entry:
                raise DataError(f'{where} must be {{"box": [x1, y1, x2, y2], "class": name}}')
            box = check_box(entry["box"], where)
            if entry["class"] not in vocabulary.class_names:
                raise UnknownClassError(
                    f"{where}: class {entry['class']!r} is not one of "
                    f"{', '.join(vocabulary.class_names)}"
                )
            rows.append(
                (
                    box,
                    vocabulary.label_id(entry["class"]),
                    bool(entry.get("crowd")),
                )
            )
        result[str(sample_id)] = ImageBoxes.from_rows(rows)
    return result
