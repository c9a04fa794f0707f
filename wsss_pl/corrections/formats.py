"""Review files in and out: Label Studio tasks / exports (brush RLE or polygons) and COCO.

Out: ``label_studio_tasks`` makes one task per cache entry with the pseudo-label as a prediction
(pre-annotation): one ``brushlabels`` region per instance (its visible pixels, so regions do not
overlap) and one "ignore" region for 255 pixels; ``label_studio_config`` is the matching labelling
interface. COCO for CVAT is ``wsss_pl.labeling.storage.export.export_coco_json``.

In: ``read_review_file`` reads a Label Studio JSON export (a list of tasks, the latest
non-cancelled annotation of each; tasks nobody annotated are skipped) or a COCO instance file
(every listed image counts as reviewed) into {id: uint8 [H, W] label map} plus per-id provenance.
Anything wrong (an unknown label, an id not in the dataset, overlapping regions of different
classes, a mask of the wrong size, a truncated file) raises ``ReviewFileError``: one line naming
the file and the id.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsss_pl.classes import IGNORE_INDEX
from wsss_pl.corrections import brush
from wsss_pl.errors import DataError

IGNORE_NAME = "ignore"
FROM_NAME = "label"
TO_NAME = "image"


class ReviewFileError(DataError):
    """A review file that cannot be imported (one line: file, id, what is wrong)."""


@dataclass
class Imported:
    """One reviewed image: ``label`` uint8 [H, W]; ``provenance`` what the tool says about it."""

    label: np.ndarray
    provenance: dict[str, Any]


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def label_studio_config(class_names: Sequence[str]) -> str:
    """Label Studio labelling interface: the image and one brush label per class plus "ignore"."""
    labels = "\n".join(f'    <Label value="{_xml_escape(n)}"/>' for n in class_names)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n'
        f"{labels}\n"
        f'    <Label value="{IGNORE_NAME}" background="#ffffff"/>\n'
        "  </BrushLabels>\n"
        "</View>\n"
    )


def _region(mask: np.ndarray, name: str, index: int, score: float | None) -> dict[str, Any]:
    height, width = mask.shape
    region: dict[str, Any] = {
        "id": f"wsss{index}",
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": brush.encode(mask), "brushlabels": [name]},
    }
    if score is not None:
        region["score"] = float(score)
    return region


def label_regions(
    label: np.ndarray, instances: Sequence[Mapping[str, Any]], class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Brush regions of a uint8 [H, W] label map: the visible pixels of each instance (raw mask
    within its class's pixels, minus earlier instances), what of a class no instance covers, and
    the ignore pixels; together they paint exactly ``label``."""
    from wsss_pl.labeling.storage.cache import decode_rle

    regions: list[dict[str, Any]] = []
    taken = np.zeros(label.shape, dtype=bool)
    for inst in instances:
        mask = decode_rle(inst["rle"]).numpy() & (label == int(inst["label"])) & ~taken
        if mask.any():
            regions.append(_region(mask, inst["class"], len(regions), inst.get("score")))
            taken |= mask
    for value in np.unique(label).tolist():
        if value == 0:
            continue
        rest = (label == value) & ~taken
        if rest.any():
            name = IGNORE_NAME if value == IGNORE_INDEX else class_names[value - 1]
            regions.append(_region(rest, name, len(regions), None))
    return regions


def label_studio_tasks(
    cache: Any, ids: Sequence[str], class_names: Sequence[str], image_url: Callable[[str], str]
) -> list[dict[str, Any]]:
    """Label Studio tasks of ``ids`` of ``cache`` (a PseudoLabelCache) with pre-annotations."""
    tasks = []
    for sample_id in ids:
        label, metadata = cache.load(sample_id), cache.load_metadata(sample_id)
        if label is None or metadata is None:
            raise DataError(f"{cache.directory}: no complete entry for id {sample_id!r}")
        regions = label_regions(label.numpy(), metadata.get("instances", []), class_names)
        scores = [float(i["score"]) for i in metadata.get("instances", [])]
        tasks.append(
            {
                "data": {"image": image_url(sample_id), "wsss_pl_id": sample_id},
                "predictions": [
                    {
                        "model_version": f"wsss_pl {cache.fingerprint}",
                        "score": float(np.mean(scores)) if scores else 0.0,
                        "result": regions,
                    }
                ],
            }
        )
    return tasks


# --------------------------------------------------------------------------- reading back


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReviewFileError(f"{path} does not exist") from None
    except UnicodeDecodeError:
        raise ReviewFileError(f"{path} is not UTF-8 JSON") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        hint = " (truncated?)" if error.pos >= len(text.rstrip()) - 1 else ""
        raise ReviewFileError(
            f"{path} is not complete JSON{hint}: {error.msg} at line {error.lineno}"
        ) from None


class _Painter:
    """Paints regions into one label map and refuses overlaps of different values."""

    def __init__(self, where: str, height: int, width: int) -> None:
        self.where = where
        self.label = np.zeros((height, width), dtype=np.uint8)
        self.painted = np.zeros((height, width), dtype=bool)

    def paint(self, mask: np.ndarray, value: int, name: str) -> None:
        clash = self.painted & mask & (self.label != value)
        if clash.any():
            other = int(self.label[clash][0])
            raise ReviewFileError(
                f"{self.where}: region {name!r} overlaps a region of another class (label "
                f"{other}) on {int(clash.sum())} pixels; remove the overlap in the review tool"
            )
        self.label[mask] = value
        self.painted |= mask


def _class_value(name: str, class_names: Sequence[str], where: str) -> int:
    if name == IGNORE_NAME:
        return IGNORE_INDEX
    if name not in class_names:
        raise ReviewFileError(
            f"{where}: label {name!r} is not a class of this dataset (an export from another "
            f"project?); known: {', '.join(list(class_names)[:5])}, ..."
        )
    return list(class_names).index(name) + 1


def _polygon_mask(points: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    xy = [(float(x) * width / 100.0, float(y) * height / 100.0) for x, y in points]
    ImageDraw.Draw(canvas).polygon(xy, fill=1)
    return np.asarray(canvas, dtype=bool)


def _sample_id(data: Mapping[str, Any]) -> str | None:
    if data.get("wsss_pl_id"):
        return str(data["wsss_pl_id"])
    image = data.get("image")
    if isinstance(image, str) and image:
        return Path(image.split("?d=")[-1]).stem
    return None


def read_label_studio(
    path: Path, tasks: Any, class_names: Sequence[str], sizes: Callable[[str], tuple[int, int]]
) -> dict[str, Imported]:
    """{id: Imported} of a Label Studio JSON export (see the module docstring)."""
    result: dict[str, Imported] = {}
    for number, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise ReviewFileError(f"{path}: item {number} is not a Label Studio task object")
        sample_id = _sample_id(task.get("data") or {})
        where = f"{path}: task {task.get('id', number)} (id {sample_id!r})"
        if sample_id is None:
            raise ReviewFileError(f"{where}: the task has no data.wsss_pl_id nor data.image")
        done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not done:
            continue
        annotation = max(done, key=lambda a: (str(a.get("updated_at") or ""), a.get("id") or 0))
        height, width = sizes(sample_id)  # raises for an id not in the dataset
        painter = _Painter(where, height, width)
        for region in annotation.get("result") or []:
            kind, value = region.get("type"), region.get("value") or {}
            if kind not in ("brushlabels", "polygonlabels"):
                continue  # e.g. a reviewer's comment or a choice: not a label
            names = value.get(kind) or []
            if len(names) != 1:
                raise ReviewFileError(f"{where}: a region has {len(names)} labels, needs one")
            class_value = _class_value(names[0], class_names, where)
            size = (region.get("original_height"), region.get("original_width"))
            if None not in size and size != (height, width):
                raise ReviewFileError(
                    f"{where}: region {names[0]!r} was drawn on a {size[0]}x{size[1]} image, "
                    f"the dataset's image is {height}x{width}"
                )
            if kind == "brushlabels":
                if value.get("format") != "rle":
                    raise ReviewFileError(f"{where}: brush format {value.get('format')!r} != rle")
                try:
                    mask = brush.decode(value.get("rle") or [], height, width)
                except brush.BrushRLEError as error:
                    raise ReviewFileError(f"{where}: region {names[0]!r}: {error}") from None
            else:
                mask = _polygon_mask(value.get("points") or [], height, width)
            painter.paint(mask, class_value, names[0])
        result[sample_id] = Imported(
            painter.label,
            {
                "tool": "label-studio",
                "task_id": task.get("id"),
                "annotation_id": annotation.get("id"),
                "completed_by": annotation.get("completed_by"),
                "updated_at": annotation.get("updated_at"),
            },
        )
    return result


def read_coco(
    path: Path, coco: Mapping[str, Any], class_names: Sequence[str],
    sizes: Callable[[str], tuple[int, int]],
) -> dict[str, Imported]:  # fmt: skip
    """{id: Imported} of a COCO instance file (RLE or polygon segmentations), e.g. from CVAT."""
    from pycocotools import mask as mask_utils

    categories = {int(c["id"]): str(c["name"]) for c in coco.get("categories", [])}
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    result: dict[str, Imported] = {}
    for image in coco.get("images", []):
        sample_id = str(image.get("wsss_pl_id") or Path(str(image.get("file_name", ""))).stem)
        where = f"{path}: image {image.get('id')} (id {sample_id!r})"
        height, width = sizes(sample_id)
        if (image.get("height"), image.get("width")) != (height, width):
            raise ReviewFileError(
                f"{where}: the file says {image.get('height')}x{image.get('width')}, the "
                f"dataset's image is {height}x{width}"
            )
        painter = _Painter(where, height, width)
        for ann in by_image.get(int(image["id"]), []):
            name = categories.get(int(ann["category_id"]))
            if name is None:
                raise ReviewFileError(f"{where}: category id {ann['category_id']} is not listed")
            value = IGNORE_INDEX if ann.get("iscrowd") else _class_value(name, class_names, where)
            segmentation = ann["segmentation"]
            try:
                if isinstance(segmentation, list):  # polygons
                    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
                elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
                    rle = mask_utils.frPyObjects(segmentation, height, width)
                else:
                    rle = dict(segmentation)
                    if isinstance(rle["counts"], str):
                        rle["counts"] = rle["counts"].encode("ascii")
                if list(rle["size"]) != [height, width]:
                    raise ReviewFileError(
                        f"{where}: annotation {ann.get('id')} is {rle['size'][0]}x"
                        f"{rle['size'][1]}, the image {height}x{width}"
                    )
                mask = mask_utils.decode(rle).astype(bool)
            except (KeyError, TypeError, ValueError) as error:
                raise ReviewFileError(f"{where}: annotation {ann.get('id')}: {error}") from None
            painter.paint(mask, value, name)
        result[sample_id] = Imported(painter.label, {"tool": "coco", "coco_image_id": image["id"]})
    return result


def read_review_file(
    path: str | Path, class_names: Sequence[str], sizes: Callable[[str], tuple[int, int]]
) -> dict[str, Imported]:
    """Label Studio export (JSON list) or COCO file (JSON object) -> {id: Imported}.

    ``sizes(id)`` gives the dataset image's (H, W) and raises ReviewFileError for an unknown id.
    """
    path = Path(path)
    content = _load_json(path)
    if isinstance(content, list):
        return read_label_studio(path, content, class_names, sizes)
    if isinstance(content, dict) and "images" in content and "annotations" in content:
        return read_coco(path, content, class_names, sizes)
    raise ReviewFileError(
        f"{path} is neither a Label Studio JSON export (a list of tasks) nor a COCO file "
        "(an object with images and annotations)"
    )
