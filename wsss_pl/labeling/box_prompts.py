"""BoxPromptLabels: pseudo-labels from boxes the dataset already has, SAM-segmented, no detector.

Many datasets come with boxes: VOC XML ``<object><bndbox>``, COCO instance ``bbox``, or a user's
own box file. Each box has its class, so no Grounding DINO and no caption are needed: every box
becomes one SAM mask painted with its class (box-supervised labels). Crowd boxes (COCO
``iscrowd``) are not segmented as objects: their region is 255 (ignore) where no instance mask
covers it, as in the COCO ground truth. Everything after the masks is the online labeler's: merge
policies, cache and fingerprint, the ``label`` pass, the W&B review and ``export-labels``.

Box sources (all converted to xyxy float pixels, 0-based, x2/y2 exclusive):

- VOC: ``<base>/VOC2012/Annotations/<id>.xml``; ``xmin..xmax`` are 1-based inclusive pixel
  indices, so ``[xmin - 1, ymin - 1, xmax, ymax]``.
- COCO: ``<root>/annotations/instances_<train_split><year>.json``; ``bbox`` is ``[x, y, w, h]``,
  so ``[x, y, x + w, y + h]``; ``iscrowd: 1`` marks crowd boxes.
- ``box_file``: JSON ``{id: [{"box": [x1, y1, x2, y2], "class": name, "crowd": false}, ...]}``
  in pixels, or a directory of YOLO ``<id>.txt`` files (``class_index cx cy w h``, normalised to
  [0, 1]; class_index 0-based in the dataset's class order).

A box reaching past the image edge is clipped to the image (as torchvision, detectron2 and mmdet
do) and counted (``clipped_boxes`` in the label-pass report); a box that does not overlap its
image at all, or that is not 4 finite numbers with x2 > x1 and y2 > y1, is a DataError naming
the file and the box.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree as ET

import torch
from torch import Tensor, nn

from wsss_pl.classes import IGNORE_INDEX, ClassVocabulary
from wsss_pl.data.base import DatasetSource
from wsss_pl.errors import CorruptFileError, DataError, UnknownClassError
from wsss_pl.io import read_json
from wsss_pl.labeling.invariance import BatchMode
from wsss_pl.labeling.labeler import LabelResult
from wsss_pl.labeling.merge import (
    ConflictPolicy,
    MergePolicy,
    mark_missing_classes,
    merge_instances,
)
from wsss_pl.labeling.online import TINY, OnlinePseudoLabels
from wsss_pl.labeling.segmenters import SegmenterSpec
from wsss_pl.labeling.segmenters.chunks import DEFAULT_DECODER_BATCH_SIZE
from wsss_pl.labeling.storage.cache import encode_rle

log = logging.getLogger(__name__)

CrowdMode = Literal["box", "mask"]
BoxMissingPolicy = Literal["leave", "ignore_background"]


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


# --- reading boxes --------------------------------------------------------------------------
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


# --- labelling ------------------------------------------------------------------------------
class BoxLabeler(nn.Module):
    """Frozen SAM turning class-labelled boxes into one label map per image (no detector).

    Args:
        segmenter: called as ``segmenter(images, boxes)`` -> per image ``(masks, scores)``
            (``wsss_pl.labeling.segmenters.sam.SamSegmenter`` or any segmenter with that interface).
        vocabulary: the class names (for metadata and missing-class names).
        merge_policy, conflict: as ``merge_instances`` (box order = annotation order;
            ``score`` ranks by SAM's predicted IoU).
        missing_class_policy: an image-level class without any box: ``leave`` or
            ``ignore_background`` (background pixels 255).
        crowd: ``box`` sets the whole crowd box to 255 where no instance covers it; ``mask``
            only SAM's mask of the crowd box.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        vocabulary: ClassVocabulary,
        merge_policy: MergePolicy = "paper",
        conflict: ConflictPolicy = "keep",
        missing_class_policy: BoxMissingPolicy = "leave",
        crowd: CrowdMode = "box",
    ) -> None:
        super().__init__()
        if crowd not in ("box", "mask"):
            raise ValueError(f"crowd must be 'box' or 'mask', got {crowd!r}")
        self.segmenter = segmenter
        self.vocabulary = vocabulary
        self.merge_policy: MergePolicy = merge_policy
        self.conflict: ConflictPolicy = conflict
        self.missing_class_policy: BoxMissingPolicy = missing_class_policy
        self.crowd: CrowdMode = crowd

    @torch.no_grad()
    def forward(
        self, images: list[Tensor], boxes: list[ImageBoxes], present: list[list[str]]
    ) -> list[LabelResult]:
        """Label a batch.

        Args:
            images: B uint8 [3, H_i, W_i] RGB on the segmenter's device.
            boxes: B ``ImageBoxes`` (xyxy pixels of the matching image).
            present: B lists of image-level class names.

        Returns:
            B ``LabelResult``: one instance (and one RLE mask) per non-crowd box.
        """
        clipped = [self._clip(b, image) for b, image in zip(boxes, images, strict=True)]
        prompts = [b.boxes[~b.crowd] if self.crowd == "box" else b.boxes for b in clipped]
        device = images[0].device if images else torch.device("cpu")
        segments = self.segmenter(images, [p.to(device) for p in prompts])
        return [
            self._merge(image, b, names, masks, scores)
            for image, b, names, (masks, scores) in zip(
                images, clipped, present, segments, strict=True
            )
        ]

    @staticmethod
    def _clip(boxes: ImageBoxes, image: Tensor) -> ImageBoxes:
        """Clip to the image; drop boxes that are empty once clipped."""
        height, width = image.shape[-2:]
        xyxy = boxes.boxes.clone()
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        return ImageBoxes(xyxy[keep], boxes.labels[keep], boxes.crowd[keep])

    def _merge(
        self, image: Tensor, boxes: ImageBoxes, names: list[str], masks: Tensor, scores: Tensor
    ) -> LabelResult:
        height, width = image.shape[-2:]
        device = masks.device
        crowd = boxes.crowd.to(device)
        if self.crowd == "box":
            instance_masks, instance_scores = masks, scores
            crowd_region = torch.zeros(height, width, dtype=torch.bool, device=device)
            for box in boxes.boxes[boxes.crowd].tolist():
                crowd_region[box_pixels(box)] = True
        else:
            instance_masks, instance_scores = masks[~crowd], scores[~crowd]
            crowd_region = masks[crowd].any(dim=0) if bool(crowd.any()) else None
        labels = boxes.labels[~boxes.crowd].to(device)
        instance_boxes = boxes.boxes[~boxes.crowd]
        label = merge_instances(
            instance_masks, labels, instance_scores, self.merge_policy, self.conflict
        )
        if crowd_region is not None:
            covered = (
                instance_masks.any(dim=0) if len(instance_masks) else torch.zeros_like(crowd_region)
            )
            label = label.masked_fill(crowd_region & ~covered, IGNORE_INDEX)
        found = set(boxes.labels.tolist())  # a class with only crowd boxes is not missing
        missing = [n for n in names if self.vocabulary.label_id(n) not in found]
        if missing and self.missing_class_policy == "ignore_background":
            label = mark_missing_classes(
                label, [self.vocabulary.label_id(n) for n in missing], "ignore_background"
            )
        instances = [
            {
                "label": int(class_id),
                "class": self.vocabulary.class_names[int(class_id) - 1],
                "phrase": "box",
                "score": round(float(score), 5),
                "box": [round(float(v), 2) for v in box.tolist()],
                "rle": encode_rle(mask),
            }
            for class_id, score, box, mask in zip(
                labels.tolist(), instance_scores, instance_boxes, instance_masks, strict=True
            )
        ]
        metadata = {
            "height": int(height),
            "width": int(width),
            "classes": list(names),
            "instances": instances,
            "crowd_boxes": [
                [round(float(v), 2) for v in b] for b in boxes.boxes[boxes.crowd].tolist()
            ],
            "missing_classes": missing,
            "num_unmatched_boxes": 0,
        }
        return LabelResult(label.to(torch.uint8), metadata, missing, 0)


class _BoundBoxLabeler:
    """The ``labeler(images, present)`` call of ``OnlinePseudoLabels.label_batch`` with the boxes
    of the batch's unlabelled samples bound in (the online source's labeler sees no ids)."""

    def __init__(self, labeler: BoxLabeler, boxes: list[ImageBoxes]) -> None:
        self.labeler = labeler
        self.boxes = boxes

    def __call__(self, images: list[Tensor], present: list[list[str]]) -> list[LabelResult]:
        if len(images) != len(self.boxes):
            raise RuntimeError(f"{len(images)} images to label but boxes for {len(self.boxes)}")
        return self.labeler(images, self.boxes, present)


class BoxPromptLabels(OnlinePseudoLabels):
    """Pseudo-labels from the dataset's own boxes, SAM-segmented (class known, no detector).

    Shares the online labeler's cache (``<cache_root>/<dataset>/<fingerprint>/``), ``label`` pass,
    W&B review and ``export-labels``.

    Args:
        cache_root: cache directory.
        box_file: None reads the boxes of the dataset (VOC ``Annotations/*.xml`` or the COCO
            instances JSON of the training split); a ``.json`` file or a YOLO directory otherwise
            (formats in the module docstring).
        include_difficult: VOC objects marked ``difficult`` are prompted too.
        crowd: crowd boxes -> 255 over the whole box (``box``) or over SAM's mask (``mask``).
        sam_type, sam_checkpoint, sam_encoder_batch_size, sam_decoder_batch_size, precision, download, segmenter: as ``OnlinePseudoLabels`` (``segmenter`` picks HQ-SAM etc. instead of SAM).
        image_resize: SAM input resize, ``pil`` (as ``SamPredictor.set_image``) or ``tensor``.
        batch_mode: ``fixed`` (default): the SAM encoder runs exactly
            ``sam_encoder_batch_size`` images per forward (bit-identical labels whatever the
            batch); ``per_image``: every image alone; ``free``: batched as they come.
        cpu_threads: intra-op threads while labelling on a CPU (the thread count changes bits).
        merge_policy, conflict: as ``merge_instances`` (``score`` = SAM's predicted IoU).
        missing_class_policy: ``leave`` or ``ignore_background`` for an image-level class
            without a box.
    """

    def __init__(
        self,
        cache_root: str = "pseudo_labels",
        box_file: str | None = None,
        include_difficult: bool = True,
        crowd: CrowdMode = "box",
        sam_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h",
        sam_checkpoint: str = "sam_vit_h",
        merge_policy: MergePolicy = "paper",
        conflict: ConflictPolicy = "keep",
        missing_class_policy: BoxMissingPolicy = "leave",
        sam_encoder_batch_size: int = 4,
        precision: Literal["32", "bf16"] = "32",
        download: bool = True,
        segmenter: SegmenterSpec | None = None,
        image_resize: Literal["pil", "tensor"] = "pil",
        batch_mode: BatchMode = "fixed",
        cpu_threads: int = 1,
        sam_decoder_batch_size: int = DEFAULT_DECODER_BATCH_SIZE,
    ) -> None:
        if missing_class_policy not in ("leave", "ignore_background"):
            raise ValueError(
                f"missing_class_policy must be 'leave' or 'ignore_background' for box prompts "
                f"(no detector to retry), got {missing_class_policy!r}"
            )
        if crowd not in ("box", "mask"):
            raise ValueError(f"crowd must be 'box' or 'mask', got {crowd!r}")
        super().__init__(
            cache_root=cache_root,
            detector=TINY,  # never built: boxes come from the annotations
            sam_type=sam_type,
            sam_checkpoint=sam_checkpoint,
            merge_policy=merge_policy,
            conflict=conflict,
            missing_class_policy=missing_class_policy,
            sam_encoder_batch_size=sam_encoder_batch_size,
            sam_decoder_batch_size=sam_decoder_batch_size,
            precision=precision,
            download=download,
            segmenter=segmenter,
            image_resize=image_resize,
            batch_mode=batch_mode,
            cpu_threads=cpu_threads,
        )
        self.box_file = box_file
        self.include_difficult = include_difficult
        self.crowd: CrowdMode = crowd
        self.boxes: dict[str, ImageBoxes] | None = None
        self._voc_annotations: Path | None = None
        self._yolo_dir: Path | None = None
        self._boxes_path: Path | None = None  # the JSON box file or COCO instances file read
        self._boxes_digest: str | None = None
        self._pending: list[ImageBoxes] = []
        self.num_clipped_boxes = 0  # boxes past the image edge, clipped (label-pass report)

    uses_detector = False  # boxes come from the data

    # --- boxes ---------------------------------------------------------------------------
    def _load_boxes(self, source: DatasetSource) -> None:
        if self._boxes_digest is not None:
            return
        vocabulary = source.vocabulary
        digest = hashlib.sha256()
        if self.box_file is not None:
            path = Path(self.box_file).expanduser()
            if path.is_dir():
                files = sorted(path.glob("*.txt"))
                _check_box_ids(source, [f.stem for f in files], path)
                self._yolo_dir = path  # read per image at labelling time (needs the image size)
                for file in files:
                    digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
                self._boxes_digest = "yolo:" + digest.hexdigest()
                return
            if not path.is_file():
                raise DataError(
                    f"box file {path} does not exist (data.train_labels.init_args.box_file); "
                    "give a JSON box file, a directory of YOLO .txt files, or null for the "
                    "dataset's own boxes"
                )
            self.boxes = json_boxes(path, vocabulary)
            self._boxes_path = path
            _check_box_ids(source, list(self.boxes), path)
        elif hasattr(source, "year") and vocabulary.category_ids is not None:  # COCO
            split = source.splits["train"]  # type: ignore[attr-defined]
            root = Path(source.root)  # type: ignore[attr-defined]
            path = root / "annotations" / f"instances_{split}{source.year}.json"  # type: ignore[attr-defined]
            if not path.is_file():
                raise DataError(f"COCO boxes: {path} does not exist; put the annotations in place")
            self.boxes = coco_boxes(path, vocabulary)
            self._boxes_path = path
        else:  # VOC: one XML per id, read at labelling time
            from wsss_pl.data.voc import find_voc_base

            root = Path(getattr(source, "root", "."))
            base = find_voc_base(root)
            annotations = (base or root) / "VOC2012" / "Annotations"
            if not annotations.is_dir():
                raise DataError(
                    f"{type(source).__name__} boxes: {annotations} does not exist; put the VOC2012 "
                    "Annotations XML files there or set box_file to a JSON/YOLO box file"
                )
            self._voc_annotations = annotations
            for file in sorted(annotations.glob("*.xml")):
                digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
            self._boxes_digest = "voc:" + digest.hexdigest()
            return
        for sample_id in sorted(self.boxes):
            digest.update(json.dumps([sample_id, self.boxes[sample_id].as_json()]).encode())
        self._boxes_digest = "boxes:" + digest.hexdigest()
        log.info(
            "read %d boxes of %d images",
            sum(len(b.labels) for b in self.boxes.values()),
            len(self.boxes),
        )

    def boxes_of(self, sample_id: str, height: int, width: int) -> ImageBoxes:
        """The boxes of ``sample_id`` clipped to the image (an id without boxes has none: all
        background); boxes past the edge are counted in ``num_clipped_boxes``."""
        assert self.vocabulary is not None
        if self._voc_annotations is not None:
            path = self._voc_annotations / f"{sample_id}.xml"
            if not path.is_file():
                raise DataError(f"no VOC annotation {path} for id {sample_id}")
            boxes = voc_xml_boxes(path, self.vocabulary, self.include_difficult)
        elif self._yolo_dir is not None:
            path = self._yolo_dir / f"{sample_id}.txt"
            if not path.is_file():
                return ImageBoxes.empty()
            boxes = yolo_boxes(path, height, width, self.vocabulary)
        else:
            assert self.boxes is not None
            boxes = self.boxes.get(sample_id, ImageBoxes.empty())
            path = self._boxes_path or Path("boxes")
        boxes, clipped = clip_to_image(boxes, height, width, f"{path}: id {sample_id!r}")
        self.num_clipped_boxes += clipped
        return boxes

    # --- the online source's hooks -------------------------------------------------------
    def settings(self, vocabulary: ClassVocabulary) -> dict[str, Any]:
        """Everything that changes the labels: boxes, SAM, merge rules (the cache fingerprint)."""
        sam = self._sam_weights()
        return {
            "prompt": "boxes",
            "boxes": self._boxes_digest,
            "include_difficult": self.include_difficult,
            "crowd": self.crowd,
            "sam": {k: v for k, v in sam.items() if k != "path"},
            "precision": self.precision,
            "image_resize": self.image_resize,
            **self._batch_settings(),
            "classes": list(vocabulary.class_names),
            "merge_policy": self.merge_policy,
            "conflict": self.conflict,
            "missing_class_policy": self.missing_class_policy,
        }

    def prepare_data(self, source: DatasetSource) -> None:
        self._load_boxes(source)
        super().prepare_data(source)

    def setup(self, source: DatasetSource) -> None:
        self._load_boxes(source)
        super().setup(source)

    def build_labeler(self) -> BoxLabeler:  # type: ignore[override]
        from wsss_pl.labeling.segmenters.sam import SamSegmenter
        from wsss_pl.labeling.tiny import tiny_segmenter

        options = {
            "encoder_batch_size": 1
            if self.batch_mode == "per_image"
            else self.sam_encoder_batch_size,
            "image_resize": self.image_resize,
        }
        if self.segmenter is not None:
            segmenter = self.segmenter.build(**options)
        elif self.sam_checkpoint == TINY:
            segmenter = tiny_segmenter(**options)
        else:
            segmenter = SamSegmenter.from_checkpoint(
                self.sam_type, self._sam_weights()["path"], **options
            )
        segmenter.fixed_batch = self.batch_mode == "fixed"
        segmenter.decoder_batch_size = self.sam_decoder_batch_size
        assert self.vocabulary is not None
        return BoxLabeler(
            segmenter,
            self.vocabulary,
            merge_policy=self.merge_policy,
            conflict=self.conflict,
            missing_class_policy=self.missing_class_policy,  # type: ignore[arg-type]
            crowd=self.crowd,
        )

    def labeler(self, device: torch.device) -> _BoundBoxLabeler:  # type: ignore[override]
        if self._labeler is None:
            log.info("building SAM %s for box prompts on %s", self.sam_type, device)
            self._labeler = self.build_labeler()  # type: ignore[assignment]
        return _BoundBoxLabeler(self._labeler.to(device), self._pending)  # type: ignore[arg-type]

    def label_batch(self, batch: dict[str, Any]) -> None:
        rows = torch.nonzero(batch["needs_label"]).flatten().tolist()
        sizes = batch["size"][rows].tolist()
        self._pending = [
            self.boxes_of(batch["id"][i], h, w) for i, (h, w) in zip(rows, sizes, strict=True)
        ]
        try:
            super().label_batch(batch)
        finally:
            self._pending = []

    def box_counts(self) -> Counter[str]:
        """Boxes per class over all loaded images (JSON/COCO sources), for a summary."""
        counts: Counter[str] = Counter()
        assert self.vocabulary is not None
        for b in (self.boxes or {}).values():
            counts.update(self.vocabulary.class_names[i - 1] for i in b.labels.tolist())
        return counts
