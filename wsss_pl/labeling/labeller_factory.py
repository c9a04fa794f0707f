"""Building the frozen labelling models of a label source: the detector from its
``DetectorSpec``, the segmenter from its ``SegmenterSpec`` or segment-anything SAM, and the
``PseudoLabeler`` around them. Called once per label source, on first need (CPU)."""

from __future__ import annotations

from typing import Any

from wsss_pl.labeling.labeler import PseudoLabeler
from wsss_pl.labeling.segmenters.base import TINY


def build_pseudo_labeler(labels: Any) -> PseudoLabeler:
    """The frozen ``PseudoLabeler`` that ``labels`` (an ``OnlinePseudoLabels``: its detector spec,
    segmenter spec or SAM settings, batching and merge rules) describes, on the CPU. Typed
    ``Any``: naming the label source's class here would import it back."""
    from wsss_pl.labeling.segmenters.sam import SamSegmenter
    from wsss_pl.labeling.segmenters.sam_fast import compile_blocks, use_attention
    from wsss_pl.labeling.tiny import tiny_segmenter

    detector = labels.detector_spec.build(labels.detector_options())
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
        segmenter = labels.segmenter.build(**sam_options)
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
