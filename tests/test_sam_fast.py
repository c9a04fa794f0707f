"""SAM image-encoder fast path (SDPA + relative-position bias) against segment-anything's forward."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.modeling.image_encoder import Attention

from wsss_pl.labeling.sam import SamSegmenter
from wsss_pl.labeling.sam_fast import SdpaAttention, use_attention

# fp32: the fused kernel sums in another order; ViT-B's 12 blocks amplify that to ~1e-5.
EMBEDDING_ATOL = 1e-4
MASK_AGREEMENT = 0.999


def vit_b_shaped_sam(img_size: int = 256, seed: int = 0) -> Sam:
    """SAM ViT-B's architecture (width 768, 12 blocks, 12 heads, window 14, global blocks
    2/5/8/11, 256-wide neck and decoder) at a small input size, random weights; the relative
    position tables get random values (they are zero-initialised, which would test nothing)."""
    grid = img_size // 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size,
                patch_size=16,
                embed_dim=768,
                depth=12,
                num_heads=12,
                mlp_ratio=4.0,
                out_chans=256,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=14,
                global_attn_indexes=(2, 5, 8, 11),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=256,
                image_embedding_size=(grid, grid),
                input_image_size=(img_size, img_size),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                transformer_dim=256,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048
                ),
                num_multimask_outputs=3,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            ),
        )
        for module in sam.image_encoder.modules():
            if isinstance(module, Attention):
                torch.nn.init.normal_(module.rel_pos_h, std=0.5)
                torch.nn.init.normal_(module.rel_pos_w, std=0.5)
    return sam.eval()


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
