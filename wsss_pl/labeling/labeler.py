"""PseudoLabeler: image-level class names -> Grounding DINO boxes -> SAM masks -> one label map."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from wsss_pl.classes import ClassVocabulary
from wsss_pl.labeling.detectors import Detections, concat_detections
from wsss_pl.labeling.exclusion import ExclusionFill, erase, split_exclusions
from wsss_pl.labeling.merge import (
    ConflictPolicy,
    MergePolicy,
    mark_missing_classes,
    merge_instances,
)
from wsss_pl.labeling.storage.cache import encode_rle

log = logging.getLogger(__name__)

MissingClassPolicy = Literal["leave", "retry", "ignore_background"]


@dataclass
class LabelResult:
    """The pseudo-label of one image and what produced it.

    Attributes:
        label: uint8 [H, W], 0 background, 1..C classes, 255 ignore; on the labeler's device.
        metadata: JSON-serialisable instance record (schema in ``wsss_pl.labeling.storage.cache``).
        missing_classes: prompted classes that got no box, even after a retry.
        num_unmatched_boxes: boxes whose tokens mapped to no prompted class (counted, not used).
    """

    label: Tensor
    metadata: dict[str, Any]
    missing_classes: list[str] = field(default_factory=list)
    num_unmatched_boxes: int = 0
    masks: Tensor | None = None  # bool [N, H, W] when the labeler leaves RLE to the cache writer


class PseudoLabeler(nn.Module):
    """Frozen Grounding DINO + SAM, batched: all images of a call share detector and encoder runs.

    Args:
        detector: boxes per prompted class (box threshold 0.3 / text threshold 0.25 in the paper);
            any detector of ``wsss_pl.labeling.detectors``.
        segmenter: SAM, one mask per box, an image's boxes in decoder chunks; None when
            the detector makes the masks itself (SAM 3: ``Detections.masks``).
        vocabulary: class names, prompt names and assist words.
        merge_policy: which mask owns overlapping pixels (``paper``: later detection wins).
        conflict: ``ignore`` sets pixels claimed by different classes to 255.
        missing_class_policy: a prompted class with no box is left as is (``leave``), detected
            again at ``retry_box_threshold`` (``retry``), or makes the image's background
            pixels 255 (``ignore_background``), since the missed object hides in them.
        retry_box_threshold: box threshold of the retry.
        exclusion_words: per class, caption phrases whose masks are removed from that class
            (``wsss_pl.labeling.exclusion``; the vocabulary must already contain them).
        exclusion_fill: what removed pixels become: ``background`` or ``ignore`` (255).
    """

    def __init__(
        self,
        detector: nn.Module,
        segmenter: nn.Module | None,
        vocabulary: ClassVocabulary,
        merge_policy: MergePolicy = "paper",
        conflict: ConflictPolicy = "keep",
        missing_class_policy: MissingClassPolicy = "leave",
        retry_box_threshold: float = 0.2,
        exclusion_words: Mapping[str, Sequence[str]] | None = None,
        exclusion_fill: ExclusionFill = "background",
    ) -> None:
        super().__init__()
        self.detector = detector
        self.segmenter = segmenter
        self.vocabulary = vocabulary
        self.merge_policy: MergePolicy = merge_policy
        self.conflict: ConflictPolicy = conflict
        self.missing_class_policy = missing_class_policy
        self.retry_box_threshold = retry_box_threshold
        self.exclusions = {
            vocabulary.label_id(k): frozenset(v) for k, v in (exclusion_words or {}).items()
        }
        self.exclusion_fill: ExclusionFill = exclusion_fill
        # False: instances get "rle": None and the masks ride along for a background writer.
        self.encode_masks = True

    @torch.no_grad()
    def forward(self, images: list[Tensor], present: list[list[str]]) -> list[LabelResult]:
        """Label a batch.

        Args:
            images: B uint8 tensors [3, H_i, W_i] RGB, on the labeler's device.
            present: B lists of class names (the image-level labels) from the vocabulary.

        Returns:
            B ``LabelResult`` with label maps of each image's own size.
        """
        # Contiguous copies: a view into a padded batch could take other kernels (other bits).
        images = [image.contiguous() for image in images]
        detections = self.detector(images, present, self.vocabulary)
        if self.missing_class_policy == "retry":
            detections = self._retry_missing(images, present, detections)
        if self.segmenter is None:
            masks = [_own_masks(d, image) for d, image in zip(detections, images, strict=True)]
        else:
            masks = [m for m, _ in self.segmenter(images, [d.boxes for d in detections])]
        return [
            self._merge(image, names, found, mask)
            for image, names, found, mask in zip(images, present, detections, masks, strict=True)
        ]

    def _missing(self, names: list[str], found: Detections) -> list[str]:
        hit = set(found.labels.tolist())
        return [n for n in names if self.vocabulary.label_id(n) not in hit]

    def _retry_missing(
        self, images: list[Tensor], present: list[list[str]], detections: list[Detections]
    ) -> list[Detections]:
        """Detect classes that got no box again, alone in their caption, at a lower threshold."""
        todo = [
            (i, m)
            for i, (n, d) in enumerate(zip(present, detections, strict=True))
            if (m := self._missing(n, d))
        ]
        if not todo:
            return detections
        retried = self.detector(
            [images[i] for i, _ in todo],
            [m for _, m in todo],
            self.vocabulary,
            box_threshold=self.retry_box_threshold,
        )
        for (i, _), extra in zip(todo, retried, strict=True):
            detections[i] = concat_detections([detections[i], extra])
        return detections

    def _merge(
        self, image: Tensor, names: list[str], found: Detections, masks: Tensor
    ) -> LabelResult:
        height, width = image.shape[-2:]
        found, masks, removed = split_exclusions(found, masks, self.exclusions)
        label = merge_instances(masks, found.labels, found.scores, self.merge_policy, self.conflict)
        label = erase(label, removed, self.exclusion_fill)  # exclusion masks leave their class
        missing = self._missing(names, found)
        if missing and self.missing_class_policy == "ignore_background":
            label = mark_missing_classes(
                label, [self.vocabulary.label_id(n) for n in missing], "ignore_background"
            )
        # One device->host copy per tensor, not one per instance (each .item() is a sync).
        scores, boxes = found.scores.tolist(), found.boxes.tolist()
        instances = [
            {
                "label": int(class_id),
                "class": self.vocabulary.class_names[int(class_id) - 1],
                "phrase": phrase,
                "score": round(score, 5),
                "box": [round(v, 2) for v in box],
                "rle": encode_rle(mask) if self.encode_masks else None,
            }
            for class_id, phrase, score, box, mask in zip(
                found.labels.tolist(), found.phrases, scores, boxes, masks, strict=True
            )
        ]
        metadata = {
            "height": int(height),
            "width": int(width),
            "classes": list(names),
            "instances": instances,
            "missing_classes": missing,
            "excluded_instances": removed.records,
            "num_unmatched_boxes": int(found.num_unmatched),
        }
        return LabelResult(
            label.to(torch.uint8), metadata, missing, int(found.num_unmatched),
            None if self.encode_masks else masks,
        )  # fmt: skip


def _own_masks(found: Detections, image: Tensor) -> Tensor:
    """bool [N, H, W]: the masks a segmenting detector returned with its boxes."""
    if found.masks is None:
        if len(found):
            raise ValueError("the labeler has no segmenter but the detector returned no masks")
        return torch.zeros(0, *image.shape[-2:], dtype=torch.bool, device=found.boxes.device)
    return found.masks.bool()
