"""A spec's ``tiny`` model, built here rather than by the spec: the detector and segmenter
modules never import the tiny builders (``wsss_pl.labeling.labeller_factory`` calls these for a
spec whose model is ``tiny``). Each builds the family's own wrapper around the tiny seeded model
with the keyword arguments the spec gives its real model."""

from __future__ import annotations

from typing import Any

from torch import nn

from wsss_pl.labeling.detectors import DetectorOptions, DetectorSpec
from wsss_pl.labeling.detectors.base import TINY
from wsss_pl.labeling.detectors.grounding import GroundingDetector
from wsss_pl.labeling.detectors.grounding_dino import GroundingDinoSpec, MMGroundingDinoSpec
from wsss_pl.labeling.detectors.omdet_turbo import OmDetTurboDetector, OmDetTurboSpec
from wsss_pl.labeling.detectors.owlv2 import OwlV2Detector, OwlV2Spec
from wsss_pl.labeling.detectors.sam3 import Sam3Detector, Sam3Spec
from wsss_pl.labeling.detectors.tokenizer import bert_tokenizer
from wsss_pl.labeling.rules import ImageResize
from wsss_pl.labeling.segmenters import (
    HQSamSegmenter,
    HQSamSpec,
    Sam2Segmenter,
    Sam2Spec,
    Sam3TrackerSpec,
    SamSpec,
    SegmenterSpec,
    sam2_processor,
)
from wsss_pl.labeling.tiny.detectors import (
    TINY_SAM3_IMAGE_SIZE,
    tiny_detector,
    tiny_mm_grounding_dino,
    tiny_omdet_turbo,
    tiny_omdet_turbo_processor,
    tiny_owlv2,
    tiny_owlv2_processor,
    tiny_sam3,
    tiny_sam3_processor,
)
from wsss_pl.labeling.tiny.segmenters import (
    tiny_hq_sam,
    tiny_sam2,
    tiny_sam3_tracker,
    tiny_sam3_tracker_processor,
    tiny_segmenter,
)


def is_tiny(spec: Any) -> bool:
    """Whether a detector or segmenter spec names the tiny random model (``model`` or
    ``checkpoint`` is ``tiny``)."""
    return TINY in (getattr(spec, "model", None), getattr(spec, "checkpoint", None))


def build_tiny_detector(spec: DetectorSpec, options: DetectorOptions) -> nn.Module:
    """The detector module of ``spec`` (whose model is ``tiny``) around its tiny random model."""
    kwargs: dict[str, Any] = spec.detector_kwargs(options)  # type: ignore[attr-defined]
    if isinstance(spec, MMGroundingDinoSpec):  # before its base class, GroundingDinoSpec
        kwargs.setdefault("image_size", 256)
        kwargs.setdefault("max_size", 427)
        return GroundingDetector(tiny_mm_grounding_dino(), bert_tokenizer(), **kwargs)
    if isinstance(spec, GroundingDinoSpec):
        return tiny_detector(**kwargs)
    if isinstance(spec, OwlV2Spec):
        return OwlV2Detector(tiny_owlv2(), tiny_owlv2_processor(), **kwargs)
    if isinstance(spec, OmDetTurboSpec):
        return OmDetTurboDetector(tiny_omdet_turbo(), tiny_omdet_turbo_processor(), **kwargs)
    if isinstance(spec, Sam3Spec):
        return Sam3Detector(tiny_sam3(), tiny_sam3_processor(), **kwargs)
    raise ValueError(f"no tiny model for the detector {type(spec).__name__}; give a real model")


def build_tiny_segmenter(
    spec: SegmenterSpec, encoder_batch_size: int = 4, image_resize: ImageResize = "tensor"
) -> nn.Module:
    """The segmenter module of ``spec`` (whose model is ``tiny``) around its tiny random model,
    with the arguments of ``SegmenterSpec.build``."""
    if isinstance(spec, SamSpec):
        return tiny_segmenter(encoder_batch_size=encoder_batch_size, image_resize=image_resize)
    if isinstance(spec, HQSamSpec):
        return HQSamSegmenter(tiny_hq_sam(), encoder_batch_size, image_resize)
    if isinstance(spec, Sam2Spec):  # image_resize unused: the processor's resize
        return Sam2Segmenter(tiny_sam2(), sam2_processor(), encoder_batch_size)
    if isinstance(spec, Sam3TrackerSpec):
        return Sam2Segmenter(
            tiny_sam3_tracker(),
            tiny_sam3_tracker_processor(),
            encoder_batch_size,
            image_size=TINY_SAM3_IMAGE_SIZE,
        )
    raise ValueError(f"no tiny model for the segmenter {type(spec).__name__}; give a real model")
