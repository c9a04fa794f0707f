"""Tiny randomly initialised Grounding DINO and SAM built from the real classes.

They run the real code paths (tokenizer, phrase masks, deformable attention, SAM's prompt
encoder and mask decoder) in milliseconds on a CPU, for tests and the CPU demo config. Their
outputs are random: never use them to judge label quality.
"""

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
from transformers import (
    BertConfig,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    SwinConfig,
)

from wsss_pl.labeling.grounding import GroundingDetector
from wsss_pl.labeling.sam import SamSegmenter
from wsss_pl.labeling.tokenizer import BERT_VOCAB_SIZE, bert_tokenizer

SAM_IMAGE_SIZE = 1024  # SAM's box/mask geometry assumes a 1024 px input


def tiny_grounding_dino(seed: int = 0) -> GroundingDinoForObjectDetection:
    """A ~1.4 M-parameter Grounding DINO: 4-stage Swin (dim 16), 1-layer BERT with the full
    bert-base-uncased vocabulary (so the real tokenizer's ids fit), 20 queries, 2 decoder layers
    (the model needs at least 2)."""
    backbone = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=7,
        out_indices=[2, 3, 4],
    )
    text = BertConfig(
        vocab_size=BERT_VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        num_queries=20,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GroundingDinoForObjectDetection(config).eval()


def tiny_sam(seed: int = 0) -> Sam:
    """A SAM with SAM's 1024 px input and 64x64 embedding grid but a 1-block ViT of width 32
    (windowed attention only) and a 32-wide two-way transformer."""
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
    return sam.eval()


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


def tiny_detector(seed: int = 0, **kwargs: Any) -> GroundingDetector:
    """``GroundingDetector`` around ``tiny_grounding_dino(seed)`` and the offline BERT tokenizer.

    ``kwargs`` go to ``GroundingDetector``; the input size defaults to 256 (longer side <= 427)
    instead of 800 so a CPU forward stays well under a second.
    """
    kwargs.setdefault("image_size", 256)
    kwargs.setdefault("max_size", 427)
    return GroundingDetector(tiny_grounding_dino(seed), bert_tokenizer(), **kwargs)


def tiny_segmenter(seed: int = 0, **kwargs: Any) -> SamSegmenter:
    """``SamSegmenter`` around ``tiny_sam(seed)``; ``kwargs`` go to ``SamSegmenter``."""
    return SamSegmenter(tiny_sam(seed), **kwargs)
