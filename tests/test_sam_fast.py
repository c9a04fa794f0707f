"""SAM image-encoder fast path (SDPA + relative-position bias) against segment-anything's forward."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from wsss_pl.labeling.segmenters.sam import SamSegmenter
from wsss_pl.labeling.segmenters.sam_fast import SdpaAttention, use_attention
from wsss_pl.labeling.tiny import vit_b_shaped_sam

# fp32: the fused kernel sums in another order; ViT-B's 12 blocks amplify that to ~1e-5.
EMBEDDING_ATOL = 1e-4
MASK_AGREEMENT = 0.999


def test_switch_keeps_state_dict_and_is_reversible() -> None:
    sam = vit_b_shaped_sam(img_size=64)
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    use_attention(sam.image_encoder, "sdpa")
    blocks = [b.attn for b in sam.image_encoder.blocks]
    assert all(type(a) is SdpaAttention for a in blocks)
    after = sam.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    use_attention(sam.image_encoder, "original")
    assert all(type(a) is Attention for a in blocks)
    with pytest.raises(ValueError, match="original' or 'sdpa"):
        use_attention(sam.image_encoder, "flash")  # type: ignore[arg-type]


def _run(segmenter: SamSegmenter, images, boxes):
    """Masks of ``segmenter`` and the image embeddings its encoder produced on the way."""
    seen: list[torch.Tensor] = []
    hook = segmenter.sam.image_encoder.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        results = segmenter(images, boxes)
    finally:
        hook.remove()
    return results, torch.cat(seen)


def test_fp32_sdpa_matches_original_embeddings_and_masks() -> None:
    # 160 px: a 10x10 token grid, so the 14-wide windows are padded as in real SAM (64 % 14 != 0).
    sam = vit_b_shaped_sam(img_size=160)
    generator = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (3, 120, 160), dtype=torch.uint8, generator=generator),
        torch.randint(0, 256, (3, 160, 100), dtype=torch.uint8, generator=generator),
    ]
    boxes = [
        torch.tensor([[10.0, 20.0, 120.0, 100.0], [60.0, 5.0, 150.0, 110.0]]),
        torch.tensor([[0.0, 0.0, 99.0, 159.0], [30.0, 40.0, 90.0, 150.0], [5, 5, 50, 50.0]]),
    ]
    masks_reference, reference = _run(SamSegmenter(sam, encoder_batch_size=2), images, boxes)
    fast = SamSegmenter(sam, encoder_batch_size=2, attention="sdpa")  # same module, swapped
    assert type(sam.image_encoder.blocks[2].attn) is SdpaAttention
    masks_fast, embeddings = _run(fast, images, boxes)
    # The bias is large (rel-pos std 0.5; dropping it moves the embeddings by ~2), so a wrong
    # sign, axis or scale would show far above the tolerance.
    error = (embeddings - reference).abs().max().item()
    assert error < EMBEDDING_ATOL, error
    for (mask_a, score_a), (mask_b, score_b) in zip(masks_reference, masks_fast, strict=True):
        assert mask_a.shape == mask_b.shape and mask_a.numel() > 0
        agreement = (mask_a == mask_b).float().mean().item()
        assert agreement >= MASK_AGREEMENT, agreement
        torch.testing.assert_close(score_a, score_b, atol=1e-4, rtol=0)


def test_online_option_switches_encoder_and_keeps_fingerprint() -> None:
    from wsss_pl.classes import VOC
    from wsss_pl.labeling.online import OnlinePseudoLabels

    plain = OnlinePseudoLabels(detector="tiny", sam_checkpoint="tiny")
    fast = OnlinePseudoLabels(detector="tiny", sam_checkpoint="tiny", sam_attention="sdpa")
    assert fast.settings(VOC) == plain.settings(VOC)  # float rounding only: same cache
    fast.vocabulary = VOC
    labeler = fast.build_labeler()
    assert all(type(b.attn) is SdpaAttention for b in labeler.segmenter.sam.image_encoder.blocks)
