"""``informative_tiny``: the seeded tiny models with their output layers scaled, the one builder
of every equivalence test against a library reference (see the package docstring)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from wsss_pl.labeling.tiny.detectors import (
    tiny_grounding_dino,
    tiny_mm_grounding_dino,
    tiny_owlv2,
    tiny_sam3,
)
from wsss_pl.labeling.tiny.segmenters import (
    scale_mask_logits,
    tiny_hq_sam,
    tiny_sam,
    tiny_sam2,
    tiny_sam3_tracker,
)

InformativeKind = Literal[
    "sam", "hq_sam", "sam2", "grounding_dino", "mm_grounding_dino", "owlv2", "sam3", "sam3_tracker"
]
# Output scales measured on the VOC sample 2007_000033.jpg (two boxes): median |mask logit| of the
# plain models 0.020 (SAM), 0.056 (HQ-SAM, SAM + HQ token), 4.2e-6 (SAM 2); Grounding DINO's box
# scores 0.52-0.99999 (all 20 queries above 0.3). Powers of two keep the SAM scalings exact.
INFORMATIVE_SCALES: dict[str, float] = {
    "sam": 2.0**8,
    "hq_sam": 2.0**6,
    "sam2": 2.0**20,
    "grounding_dino": 0.25,
    # MM-Grounding-DINO: the same tiny architecture, the same saturation. OWLv2: query logits
    # spread over +-60 (std 10.5) on 2007_000032.jpg with three queries.
    "mm_grounding_dino": 0.25,
    "owlv2": 0.125,
    # SAM 3 (mask, query): pred_logits within +-0.013, masks median |logit| 2e-4, semantic 0.06.
    "sam3": 2.0**8,
    "sam3_masks": 2.0**14,
    "sam3_semantic": 2.0**6,
    # SAM 3 tracker: median |mask logit| 1.3e-5 on a random 240x320 image with three boxes.
    "sam3_tracker": 2.0**18,
}


def informative_tiny(kind: InformativeKind, seed: int = 0) -> nn.Module:
    """The tiny random model ``kind`` with its output layer scaled by ``INFORMATIVE_SCALES``:
    the one builder of every equivalence test against a library reference.

    ``sam``: ``tiny_sam``; ``hq_sam``: ``tiny_hq_sam``; ``sam2``:
    ``tiny_sam2`` (masks scaled by ``scale_mask_logits``); ``grounding_dino``:
    ``tiny_grounding_dino`` with ``logit_scale``. Same seeded weights as the plain builders.
    """
    scale = INFORMATIVE_SCALES[kind]
    if kind == "sam":
        return tiny_sam(seed, mask_logit_scale=scale)
    if kind == "grounding_dino":
        return tiny_grounding_dino(seed, logit_scale=scale)
    if kind == "mm_grounding_dino":
        return tiny_mm_grounding_dino(seed, logit_scale=scale)
    if kind == "owlv2":
        return tiny_owlv2(seed, logit_scale=scale)
    if kind == "sam3_tracker":
        return tiny_sam3_tracker(seed, mask_logit_scale=scale)
    if kind == "sam3":
        masks, semantic = INFORMATIVE_SCALES["sam3_masks"], INFORMATIVE_SCALES["sam3_semantic"]
        return tiny_sam3(seed, scale, masks, semantic)
    return scale_mask_logits((tiny_hq_sam if kind == "hq_sam" else tiny_sam2)(seed), scale)
