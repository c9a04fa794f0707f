"""BoxLabeler: frozen SAM turning class-labelled boxes into one label map per image (no
detector); crowd boxes become 255 where no instance covers them. Used by ``BoxPromptLabels``
(``wsss_pl.labeling.box_prompts``)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from wsss_pl.classes import IGNORE_INDEX, ClassVocabulary
from wsss_pl.labeling.box_files import ImageBoxes, box_pixels
from wsss_pl.labeling.labeler import LabelResult
from wsss_pl.labeling.merge import (
    ConflictPolicy,
    MergePolicy,
    mark_missing_classes,
    merge_instances,
)
from wsss_pl.labeling.storage.cache import encode_rle

CrowdMode = Literal["box", "mask"]
BoxMissingPolicy = Literal["leave", "ignore_background"]


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
