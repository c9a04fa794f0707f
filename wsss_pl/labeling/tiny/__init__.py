"""Tiny randomly initialised models of every family, built from the real classes: the one place
that builds them (detector and segmenter modules never import this package).

They run the real code paths (tokenizer, phrase masks, deformable attention, SAM's prompt
encoder and mask decoder) in milliseconds on a CPU, for tests and the CPU demo config. Their
outputs are random: never use them to judge label quality.

Equivalence tests need more than random: with default initialisation the tiny SAM 2's mask logits
are ~1e-5 and tiny SAM's ~0.02, so a mask compared with a reference is float noise around the
threshold, and Grounding DINO's scores saturate near 1, so no box sits below a threshold.
``informative_tiny`` is the one builder those tests use: the same seeded models with their output
layers scaled (``scale_mask_logits``; ``tiny_grounding_dino(logit_scale=...)``) so that mask
logits are well away from the threshold (median |logit| > 1) and detector scores spread across
the usual thresholds. The default builders (demos, cache fingerprints) stay unscaled.

Modules: ``detectors`` (Grounding DINO, MM-Grounding-DINO, OWLv2, SAM 3, OmDet-Turbo),
``segmenters`` (SAM, HQ-SAM, SAM 2.1, SAM 3 tracker), ``informative`` (``informative_tiny``),
``build`` (a spec's ``tiny`` model: ``build_tiny_detector`` / ``build_tiny_segmenter``).
"""

from wsss_pl.labeling.tiny.build import (
    build_tiny_detector,
    build_tiny_segmenter,
    is_tiny,
)
from wsss_pl.labeling.tiny.detectors import (
    TINY_CLIP_TOKENS,
    TINY_OMDET_IMAGE_SIZE,
    TINY_OWL_IMAGE_SIZE,
    TINY_SAM3_IMAGE_SIZE,
    clip_char_tokenizer,
    tiny_detector,
    tiny_grounding_dino,
    tiny_mm_grounding_dino,
    tiny_omdet_turbo,
    tiny_omdet_turbo_processor,
    tiny_owlv2,
    tiny_owlv2_processor,
    tiny_sam3,
    tiny_sam3_processor,
)
from wsss_pl.labeling.tiny.informative import (
    INFORMATIVE_SCALES,
    InformativeKind,
    informative_tiny,
)
from wsss_pl.labeling.tiny.segmenters import (
    SAM_IMAGE_SIZE,
    scale_mask_logits,
    tiny_hq_sam,
    tiny_sam,
    tiny_sam2,
    tiny_sam3_tracker,
    tiny_sam3_tracker_processor,
    tiny_segmenter,
    vit_b_shaped_sam,
)

__all__ = [
    "INFORMATIVE_SCALES",
    "InformativeKind",
    "SAM_IMAGE_SIZE",
    "TINY_CLIP_TOKENS",
    "TINY_OMDET_IMAGE_SIZE",
    "TINY_OWL_IMAGE_SIZE",
    "TINY_SAM3_IMAGE_SIZE",
    "build_tiny_detector",
    "build_tiny_segmenter",
    "clip_char_tokenizer",
    "informative_tiny",
    "is_tiny",
    "scale_mask_logits",
    "tiny_detector",
    "tiny_grounding_dino",
    "tiny_hq_sam",
    "tiny_mm_grounding_dino",
    "tiny_omdet_turbo",
    "tiny_omdet_turbo_processor",
    "tiny_owlv2",
    "tiny_owlv2_processor",
    "tiny_sam",
    "tiny_sam2",
    "tiny_sam3",
    "tiny_sam3_processor",
    "tiny_sam3_tracker",
    "tiny_sam3_tracker_processor",
    "tiny_segmenter",
    "vit_b_shaped_sam",
]
