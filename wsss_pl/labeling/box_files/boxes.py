"""ImageBoxes (one image's class-labelled boxes) and the checks every box-file reader shares:
4 finite numbers xyxy, overlap with the image, clipping to it, the pixels inside a box, and the
ids of a box file against the dataset's images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wsss_pl.data.base import DatasetSource
from wsss_pl.errors import DataError


@dataclass(frozen=True)
class ImageBoxes:
    """The boxes of one image.

    Attributes:
        boxes: float32 [N, 4] xyxy pixels (0-based, x2/y2 exclusive).
        labels: int64 [N] class ids 1..C.
        crowd: bool [N], True for crowd boxes (their region becomes 255, not a class).
    """

    boxes: Tensor
    labels: Tensor
    crowd: Tensor

    @classmethod
    def empty(cls) -> ImageBoxes:
        return cls(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=bool))

    @classmethod
    def from_rows(cls, rows: list[tuple[list[float], int, bool]]) -> ImageBoxes:
        if not rows:
            return cls.empty()
        return cls(
            torch.tensor([r[0] for r in rows], dtype=torch.float32),
            torch.tensor([r[1] for r in rows], dtype=torch.long),
            torch.tensor([r[2] for r in rows], dtype=torch.bool),
        )

    def as_json(self) -> list[list[Any]]:
        return [
            [[round(float(v), 3) for v in b], int(c), bool(k)]
            for b, c, k in zip(
                self.boxes.tolist(), self.labels.tolist(), self.crowd.tolist(), strict=True
            )
        ]


# --- checking boxes -------------------------------------------------------------------------
def check_box(box: Any, where: str) -> list[float]:
    """``box`` as 4 floats xyxy, or a one-line DataError naming ``where`` and the box: each value
    a finite number (not a string or bool) and x2 > x1, y2 > y1."""
    numbers = (
        isinstance(box, list | tuple)
        and len(box) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
    )
    if not numbers or not all(math.isfinite(v) for v in box):
        raise DataError(f"{where}: box {box!r} is not 4 finite numbers [x1, y1, x2, y2]")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DataError(f"{where}: box {box!r} is not xyxy pixels with x2 > x1, y2 > y1")
    return [float(v) for v in box]


def check_overlap(boxes: ImageBoxes, height: int, width: int, where: str) -> None:
    """A DataError naming ``where`` and the first box that does not overlap the ``height`` x
    ``width`` image at all (a box in other units or of another image: clipping would leave
    nothing of it)."""
    if len(boxes.boxes) == 0:
        return
    xyxy = boxes.boxes
    disjoint = (
        (xyxy[:, 0] >= width) | (xyxy[:, 1] >= height) | (xyxy[:, 2] <= 0) | (xyxy[:, 3] <= 0)
    )
    if bool(disjoint.any()):
        box = [round(v, 2) for v in xyxy[int(disjoint.nonzero()[0])].tolist()]
        raise DataError(
            f"{where}: box {box} (xyxy, 0-based) does not overlap the {width}x{height} image; "
            "fix the box or its file (other units, or another image's box?)"
        )


def clip_to_image(boxes: ImageBoxes, height: int, width: int, where: str) -> tuple[ImageBoxes, int]:
    """Boxes clipped to the ``height`` x ``width`` image, and how many were clipped.

    A box reaching past the image edge (detectors and annotation tools commonly give them; as
    torchvision / detectron2 / mmdet do) keeps its part inside the image; a box that does not
    overlap the image at all is a DataError naming ``where`` (``check_overlap``).

    Returns:
        (boxes float32 [N, 4] within [0, width] x [0, height], number of boxes that changed).
    """
    check_overlap(boxes, height, width, where)
    if len(boxes.boxes) == 0:
        return boxes, 0
    limit = torch.tensor([width, height, width, height], dtype=boxes.boxes.dtype)
    clipped = torch.minimum(boxes.boxes.clamp(min=0), limit)
    changed = int((clipped != boxes.boxes).any(dim=1).sum())
    return ImageBoxes(clipped, boxes.labels, boxes.crowd), changed


def box_pixels(box: list[float]) -> tuple[slice, slice]:
    """(rows, columns) of the pixels inside an xyxy box: pixel x is inside when its centre
    x + 0.5 lies in [x1, x2), i.e. ceil(x1 - 0.5) <= x < ceil(x2 - 0.5) (same for y)."""
    x1, y1, x2, y2 = (max(0, math.ceil(v - 0.5)) for v in box)
    return slice(y1, y2), slice(x1, x2)


def _check_box_ids(source: DatasetSource, ids: list[str], path: Path) -> None:
    """A DataError naming ``path`` when it has no ids or an id whose image the training split
    cannot find (e.g. keyed by file name with extension): its boxes would never be used, and the
    images they were meant for would be labelled as all background."""
    dataset = source.dataset("train")
    known = set(dataset.ids)

    def has_image(sample_id: str) -> bool:
        if sample_id in known:
            return True
        try:  # an image of the dataset outside the training split (e.g. train_aug ids)
            return dataset.image_path(sample_id).is_file()
        except (KeyError, OSError, ValueError):
            return False

    if not ids:
        raise DataError(f"box file {path} has no boxes (no ids); give boxes or remove box_file")
    unmatched = [i for i in ids if not has_image(i)]
    if unmatched:
        example = sorted(known)[0] if known else "?"
        raise DataError(
            f"box file {path}: {len(unmatched)} of {len(ids)} ids match no image, e.g. "
            f"{unmatched[0]!r}; ids are image file stems like {example!r}"
        )
