"""informative_tiny: the scaling changes how far outputs sit from thresholds, nothing else."""

from __future__ import annotations

import pytest
import torch
from segment_anything import SamPredictor

from wsss_pl.labeling.detectors.tokenizer import bert_tokenizer
from wsss_pl.labeling.segmenters.sam import SamSegmenter
from wsss_pl.labeling.tiny import (
    INFORMATIVE_SCALES,
    informative_tiny,
    scale_mask_logits,
    tiny_grounding_dino,
    tiny_sam,
)


def test_sam_scaling_is_exact_and_keeps_the_masks() -> None:
    generator = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=generator)
    boxes = torch.tensor([[8.0, 10.0, 90.0, 80.0], [40.0, 0.0, 128.0, 96.0]])
    plain, scaled = tiny_sam(), informative_tiny("sam")
    logits = []
    for sam in (plain, scaled):
        predictor = SamPredictor(sam)
        predictor.set_image(image.permute(1, 2, 0).numpy())
        prompt = predictor.transform.apply_boxes_torch(boxes, (96, 128))
        mask_logits, _, _ = predictor.predict_torch(
            None, None, boxes=prompt, multimask_output=False, return_logits=True
        )
        logits.append(mask_logits)
    assert torch.equal(logits[1], logits[0] * INFORMATIVE_SCALES["sam"])  # a power of two: exact
    ((masks_plain, iou_plain),) = SamSegmenter(plain)([image], [boxes])
    ((masks_scaled, iou_scaled),) = SamSegmenter(scaled)([image], [boxes])
    assert torch.equal(masks_plain, masks_scaled) and torch.equal(iou_plain, iou_scaled)
    with pytest.raises(ValueError, match="> 0"):
        scale_mask_logits(tiny_sam(), 0.0)


def test_grounding_logit_scale_scales_the_token_logits_only() -> None:
    tokenizer = bert_tokenizer()
    text = tokenizer(["dog . horse ."], return_tensors="pt")
    pixels = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = tiny_grounding_dino()(pixel_values=pixels, **text)
        scaled = informative_tiny("grounding_dino")(pixel_values=pixels, **text)
    finite = plain.logits.isfinite()
    assert torch.equal(finite, scaled.logits.isfinite())  # padding stays -inf
    torch.testing.assert_close(
        scaled.logits[finite], plain.logits[finite] * INFORMATIVE_SCALES["grounding_dino"]
    )
    assert torch.equal(scaled.pred_boxes, plain.pred_boxes)
