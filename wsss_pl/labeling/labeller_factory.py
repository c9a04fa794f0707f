"""Building the frozen labelling models of a label source: the detector from its
``DetectorSpec``, the segmenter from its ``SegmenterSpec`` or segment-anything SAM, and the
``PseudoLabeler`` around them. A spec naming the ``tiny`` model is resolved here (its tiny
random model from ``wsss_pl.labeling.tiny``), so no model module imports the tiny builders. Called once per label source, on first need (CPU)."""

from __future__ import annotations

from typing import Any

from torch import nn

from wsss_pl.labeling.detectors import DetectorOptions, DetectorSpec
from wsss_pl.labeling.labeler import PseudoLabeler
from wsss_pl.labeling.segmenters.base import TINY, SegmenterSpec
from wsss_pl.labeling.tiny import (
    build_tiny_detector,
    build_tiny_segmenter,
    is_tiny,
    tiny_segmenter,
)


def build_detector(spec: DetectorSpec, options: DetectorOptions) -> nn.Module:
    """``spec``'s frozen detector module: its tiny random model when it names ``tiny`` (built by
    ``wsss_pl.labeling.tiny``), else ``spec.build(options)``."""
    return build_tiny_detector(spec, options) if is_tiny(spec) else spec.build(options)


def build_segmenter(spec: SegmenterSpec, **options: Any) -> nn.Module:
    """``spec``'s frozen segmenter module (``options``: ``encoder_batch_size``,
    ``image_resize``): its tiny random model when it names ``tiny``, else ``spec.build``."""
    return build_tiny_segmenter(spec, **options) if is_tiny(spec) else spec.build(**options)


def build_pseudo_labeler(labels: Any) -> PseudoLabeler:
    """The frozen ``PseudoLabeler`` that ``labels`` (an ``OnlinePseudoLabels``: its detector spec,
    segmenter spec or SAM settings, batching and merge rules) describes, on the CPU. Typed
    ``Any``: naming the label source's class here would import it back."""
    from wsss_pl.labeling.segmenters.sam import SamSegmenter
    from wsss_pl.labeling.segmenters.sam_fast import compile_blocks, use_attention

    detector = build_detector(labels.detector_spec, labels.detector_options())
    sam_options = {
        "encoder_batch_size": 1
        if labels.batch_mode == "per_image"
        else labels.sam_encoder_batch_size,
        "image_resize": labels.image_resize,
    }
    fast = {"attention": labels.sam_attention, "compile": labels.sam_compile}
    segmenter: Any
    if labels.detector_spec.provides_masks:
        segmenter = None  # the detector's own masks (SAM 3)
    elif labels.segmenter is not None:
        segmenter = build_segmenter(labels.segmenter, **sam_options)
        if type(segmenter) is SamSegmenter:  # the fast path is for segment-anything's ViT
            use_attention(segmenter.sam.image_encoder, labels.sam_attention)
            if labels.sam_compile:
                compile_blocks(segmenter.sam.image_encoder)
        elif labels.sam_attention != "original" or labels.sam_compile:
            raise ValueError(
                "sam_attention / sam_compile apply to segment-anything SAM only, not to "
                f"{type(segmenter).__name__}; leave them at original / false"
            )
    elif labels.sam_checkpoint == TINY:
        segmenter = tiny_segmenter(**sam_options, **fast)
    else:
        segmenter = SamSegmenter.from_checkpoint(
            labels.sam_type, labels._sam_weights()["path"], **sam_options, **fast
        )
    if segmenter is not None:
        segmenter.fixed_batch = labels.batch_mode == "fixed"
        segmenter.decoder_batch_size = labels.sam_decoder_batch_size
    assert labels.vocabulary is not None
    return PseudoLabeler(
        detector,
        segmenter,
        labels.vocabulary,
        merge_policy=labels.merge_policy,
        conflict=labels.conflict,
        missing_class_policy=labels.missing_class_policy,
        retry_box_threshold=labels.retry_box_threshold,
        exclusion_words=labels.exclusion_words,
        exclusion_fill=labels.exclusion_fill,
    )
