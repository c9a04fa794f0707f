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

The readers, one per format, are in ``wsss_pl.labeling.box_files`` (re-exported here).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch

from wsss_pl.classes import ClassVocabulary
from wsss_pl.data.base import DatasetSource
from wsss_pl.errors import DataError
from wsss_pl.labeling.box_files import (
    ImageBoxes,
    box_pixels,  # noqa: F401  (re-exported)
    check_box,  # noqa: F401
    check_overlap,  # noqa: F401
    clip_to_image,
    coco_boxes,
    json_boxes,
    voc_xml_boxes,
    yolo_boxes,
)
from wsss_pl.labeling.box_files.boxes import _check_box_ids
from wsss_pl.labeling.box_labeler import (
    BoxLabeler,
    BoxMissingPolicy,
    CrowdMode,
    _BoundBoxLabeler,
)
from wsss_pl.labeling.invariance import BatchMode
from wsss_pl.labeling.merge import (
    ConflictPolicy,
    MergePolicy,
)
from wsss_pl.labeling.online import TINY, OnlinePseudoLabels
from wsss_pl.labeling.segmenters import SegmenterSpec
from wsss_pl.labeling.segmenters.chunks import DEFAULT_DECODER_BATCH_SIZE

log = logging.getLogger(__name__)


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
        from wsss_pl.labeling.labeller_factory import build_segmenter
        from wsss_pl.labeling.segmenters.sam import SamSegmenter
        from wsss_pl.labeling.tiny import tiny_segmenter

        options = {
            "encoder_batch_size": 1
            if self.batch_mode == "per_image"
            else self.sam_encoder_batch_size,
            "image_resize": self.image_resize,
        }
        if self.segmenter is not None:
            segmenter = build_segmenter(self.segmenter, **options)
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
