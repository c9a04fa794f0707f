"""What ``OnlinePseudoLabels`` tells about its detector's rows: the input size per image
shape (the label pass's shape groups), the options every detector gets, and the rows and
padding rows each model ran (``padding()``, the label pass's report)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from wsss_pl.labeling.detectors import DetectorOptions, DetectorSpec
from wsss_pl.labeling.invariance import BatchMode
from wsss_pl.labeling.rules import CaptionStyle, ImageResize, PhraseRule
from wsss_pl.labeling.segmenters.chunks import PaddingCounts


class DetectorRows:
    """Mixin of ``OnlinePseudoLabels`` (which sets the attributes below in its ``__init__``)."""

    detector_spec: DetectorSpec
    detector_pad_to_canvas: bool
    detector_image_size: int
    detector_batch_size: int
    box_threshold: float
    text_threshold: float
    caption_style: CaptionStyle
    phrase_rule: PhraseRule
    image_resize: ImageResize
    clip_boxes: bool
    batch_mode: BatchMode
    detector_padding: PaddingCounts
    _labeler: Any

    def detector_input_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the detector sees for an image of this size (to group same-shape images)."""
        if self.detector_pad_to_canvas:
            height, width = (0, 1) if height <= width else (1, 0)  # one group per orientation
            return height, width
        return self.detector_spec.input_size(height, width, self.detector_options())

    def detector_options(self) -> DetectorOptions:
        """The labelling rules every detector gets (thresholds, batching, Grounding DINO's rules)."""
        return DetectorOptions(
            box_threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            image_size=self.detector_image_size,
            pad_to_canvas=self.detector_pad_to_canvas,
            caption_style=self.caption_style,
            phrase_rule=self.phrase_rule,
            image_resize=self.image_resize,
            clip_boxes=self.clip_boxes,
            batch_mode=self.batch_mode,
            batch_size=self.detector_batch_size,
        )

    uses_detector = True  # False where boxes come from the data (no detector rows to count)

    def padding(self) -> dict[str, PaddingCounts]:
        """Rows run and padding rows per model so far (this process): ``detector`` (image rows
        of its forwards, counted as ``fixed`` mode runs them: same-shape images
        ``detector_batch_size`` at a time; caption rounds not counted), ``sam_encoder`` and
        ``sam_decoder`` (counted by the segmenter). Models that did not run are left out."""
        counts: dict[str, PaddingCounts] = {}
        if self.detector_padding.rows:
            counts["detector"] = self.detector_padding
        segmenter = getattr(self._labeler, "segmenter", None)
        for name, count in (getattr(segmenter, "padding", None) or {}).items():
            if count.rows:
                counts[name] = count
        return counts

    def _count_detector_rows(self, images: list[torch.Tensor], present: list[list[str]]) -> None:
        """Add the image rows the detector runs on ``images`` (those with a class) in ``fixed``
        mode: per detector input shape, ``detector_batch_size`` rows per started batch."""
        if not self.uses_detector or self.batch_mode != "fixed":
            return
        groups: Counter[tuple[int, int]] = Counter(
            self.detector_input_size(*image.shape[-2:])
            for image, names in zip(images, present, strict=True)
            if names
        )
        size = self.detector_batch_size
        for count in groups.values():
            self.detector_padding.add(count, -(-count // size) * size)
