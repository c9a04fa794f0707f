"""Tiny random segmenters built from the real classes: segment-anything SAM (and
``tiny_segmenter``, its ``SamSegmenter``), a ViT-B-shaped SAM, HQ-SAM, SAM 2.1 and the SAM 3
tracker. Outputs are random: never use them to judge label quality."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn

from wsss_pl.labeling.segmenters.sam import SamSegmenter
from wsss_pl.labeling.tiny.detectors import TINY_SAM3_IMAGE_SIZE

SAM_IMAGE_SIZE = 1024  # SAM's box/mask geometry assumes a 1024 px input


def tiny_sam(seed: int = 0, mask_logit_scale: float = 1.0) -> Sam:
    """A SAM with SAM's 1024 px input and 64x64 embedding grid but a 1-block ViT of width 32
    (windowed attention only) and a 32-wide two-way transformer; ``mask_logit_scale``: see
    ``scale_mask_logits`` (1 = the plain random model)."""
    patch_size, dim = 16, 32
    grid = SAM_IMAGE_SIZE // patch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=SAM_IMAGE_SIZE,
                patch_size=patch_size,
                embed_dim=dim,
                depth=1,
                num_heads=2,
                mlp_ratio=2.0,
                out_chans=dim,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=8,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim,
                image_embedding_size=(grid, grid),
                input_image_size=(SAM_IMAGE_SIZE, SAM_IMAGE_SIZE),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                transformer_dim=dim,
                transformer=TwoWayTransformer(depth=1, embedding_dim=dim, num_heads=2, mlp_dim=64),
                num_multimask_outputs=3,
                iou_head_depth=2,
                iou_head_hidden_dim=32,
            ),
        )
    return scale_mask_logits(sam, mask_logit_scale).eval()


def scale_mask_logits(model: nn.Module, factor: float) -> nn.Module:
    """Multiply a SAM-family mask decoder's mask logits by ``factor`` (> 0), in place.

    Mask logits are ``hyper_in @ upscaled_embedding`` in SAM, HQ-SAM (its HQ token's MLP too) and
    transformers' SAM 2, linear in the hypernetwork MLPs' last layers, so scaling those layers'
    weights and biases scales every mask logit and nothing else (IoU head and image features are
    untouched). With a power of two the scaling is exact in floating point, so masks thresholded
    at 0 are bit-identical; only how far they sit from the threshold changes. (SAM 2's
    single-mask output picks a mask by stability at +-0.05, which does depend on the scale.)

    Args:
        model: ``segment_anything`` / ``segment_anything_hq`` ``Sam`` or transformers
            ``Sam2Model``.
        factor: the scale.

    Returns:
        ``model`` itself.
    """
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    if factor == 1.0:
        return model
    decoder = model.mask_decoder
    mlps = list(decoder.output_hypernetworks_mlps)
    if hasattr(decoder, "hf_mlp"):  # HQ-SAM's high-quality token
        mlps.append(decoder.hf_mlp)
    with torch.no_grad():
        for mlp in mlps:
            last = mlp.proj_out if hasattr(mlp, "proj_out") else mlp.layers[-1]  # SAM 2 / SAM
            last.weight.mul_(factor)
            last.bias.mul_(factor)
    return model


def vit_b_shaped_sam(img_size: int = 256, seed: int = 0, rel_pos_std: float = 0.5) -> Sam:
    """SAM ViT-B's architecture (width 768, 12 blocks, 12 heads, window 14, global blocks
    2/5/8/11, 256-wide neck and decoder) at a small input size, random weights. The relative
    position tables, zero-initialised by segment-anything, get normal(0, ``rel_pos_std``) values
    so that code handling them is really exercised (0 keeps them zero)."""
    grid = img_size // 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size,
                embed_dim=768,
                depth=12,
                num_heads=12,
                out_chans=256,
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
            ),
        )
        if rel_pos_std > 0:
            for block in sam.image_encoder.blocks:
                torch.nn.init.normal_(block.attn.rel_pos_h, std=rel_pos_std)
                torch.nn.init.normal_(block.attn.rel_pos_w, std=rel_pos_std)
    return sam.eval()


def tiny_segmenter(seed: int = 0, **kwargs: Any) -> SamSegmenter:
    """``SamSegmenter`` around ``tiny_sam(seed)``; ``kwargs`` go to ``SamSegmenter``."""
    return SamSegmenter(tiny_sam(seed), **kwargs)


def tiny_hq_sam(seed: int = 0) -> nn.Module:
    """A random HQ-SAM with SAM's 1024 px geometry: a 1-block global-attention ViT of width 32."""
    from segment_anything_hq.modeling import (
        ImageEncoderViT,
        MaskDecoderHQ,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    dim, grid = 32, SAM_IMAGE_SIZE // 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=SAM_IMAGE_SIZE, patch_size=16, embed_dim=dim, depth=1, num_heads=2,
                mlp_ratio=2.0, out_chans=dim, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                use_rel_pos=True, window_size=8, global_attn_indexes=(0,),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim, image_embedding_size=(grid, grid),
                input_image_size=(SAM_IMAGE_SIZE, SAM_IMAGE_SIZE), mask_in_chans=4,
            ),
            mask_decoder=MaskDecoderHQ(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=1, embedding_dim=dim, num_heads=2, mlp_dim=64),
                transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32, vit_dim=dim,
            ),
        )  # fmt: skip
    return sam.eval()


def tiny_sam2(seed: int = 0) -> nn.Module:
    """A random ~0.3 M-parameter SAM 2 (4-stage Hiera of width 16, 1-layer decoder of width 32)."""
    from transformers import Sam2Config, Sam2Model
    from transformers.models.sam2.configuration_sam2 import (
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    hiera = Sam2HieraDetConfig(
        hidden_size=16, num_attention_heads=1, blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[8, 4, 14, 7], global_attention_blocks=[3],
    )  # fmt: skip
    config = Sam2Config(
        vision_config=Sam2VisionConfig(
            backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=32
        ),
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, mask_input_channels=4),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2,
            iou_head_hidden_dim=32,
        ),
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Sam2Model(config).eval()


def tiny_sam3_tracker(seed: int = 0, mask_logit_scale: float = 1.0) -> nn.Module:
    """A random SAM 3 tracker (``Sam3TrackerModel``): ``tiny_sam3``'s image encoder sizes (2-layer
    ViT of width 32 on 224 px, FPN at 64 / 32 / 16), a prompt encoder and 1-layer two-way mask
    decoder of width 32; ``mask_logit_scale`` as ``scale_mask_logits``."""
    from transformers import Sam3TrackerConfig, Sam3TrackerModel, Sam3VisionConfig, Sam3ViTConfig
    from transformers.models.sam3_tracker.configuration_sam3_tracker import (
        Sam3TrackerMaskDecoderConfig,
        Sam3TrackerPromptEncoderConfig,
    )

    size, grid = TINY_SAM3_IMAGE_SIZE, TINY_SAM3_IMAGE_SIZE // 14
    small = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    config = Sam3TrackerConfig(
        vision_config=Sam3VisionConfig(
            backbone_config=Sam3ViTConfig(
                **small, num_hidden_layers=2, image_size=size, patch_size=14, window_size=8,
                global_attn_indexes=[1], pretrain_image_size=size,
            ),
            fpn_hidden_size=32,
            backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2],
        ),
        prompt_encoder_config=Sam3TrackerPromptEncoderConfig(
            hidden_size=32, image_size=size, patch_size=14, mask_input_channels=4
        ),
        mask_decoder_config=Sam3TrackerMaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2,
            iou_head_hidden_dim=32,
        ),
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam3TrackerModel(config).eval()
    return scale_mask_logits(model, mask_logit_scale)


def tiny_sam3_tracker_processor() -> Any:
    """``Sam3TrackerProcessor`` for ``tiny_sam3_tracker``: SAM 3's image processor at 224 px."""
    from transformers import Sam3ImageProcessor, Sam3TrackerProcessor

    image_processor = Sam3ImageProcessor(
        size={"height": TINY_SAM3_IMAGE_SIZE, "width": TINY_SAM3_IMAGE_SIZE},
        mask_size={"height": TINY_SAM3_IMAGE_SIZE // 4, "width": TINY_SAM3_IMAGE_SIZE // 4},
    )
    return Sam3TrackerProcessor(image_processor=image_processor)
