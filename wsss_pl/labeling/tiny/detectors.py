"""Tiny random detectors built from the real classes: Grounding DINO (and ``tiny_detector``, its
``GroundingDetector``), MM-Grounding-DINO, OWLv2, SAM 3 and OmDet-Turbo, with their processors.
Outputs are random: never use them to judge label quality."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    BertConfig,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    SwinConfig,
)

from wsss_pl.labeling.detectors.grounding import GroundingDetector
from wsss_pl.labeling.detectors.tokenizer import BERT_VOCAB_SIZE, bert_tokenizer


def tiny_grounding_dino(seed: int = 0, logit_scale: float = 1.0) -> GroundingDinoForObjectDetection:
    """A ~1.4 M-parameter Grounding DINO: 4-stage Swin (dim 16), 1-layer BERT with the full
    bert-base-uncased vocabulary (so the real tokenizer's ids fit), 20 queries, 2 decoder layers
    (the model needs at least 2).

    ``logit_scale`` (> 0) multiplies the output layer's token logits [B, Q, 256] (the decoder
    levels' contrastive heads; -inf padding stays -inf); 1 is the plain random model, whose
    scores saturate near 1. The two-stage proposal head is not touched, so boxes are unchanged.
    """
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
    if logit_scale <= 0:
        raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(config).eval()
    if logit_scale != 1.0:
        # The contrastive head has no weights (query @ text^T): scale its output instead.
        for head in model.class_embed:
            head.register_forward_hook(lambda module, inputs, output: output * logit_scale)
    return model


def tiny_detector(seed: int = 0, **kwargs: Any) -> GroundingDetector:
    """``GroundingDetector`` around ``tiny_grounding_dino(seed)`` and the offline BERT tokenizer.

    ``kwargs`` go to ``GroundingDetector``; the input size defaults to 256 (longer side <= 427)
    instead of 800 so a CPU forward stays well under a second.
    """
    kwargs.setdefault("image_size", 256)
    kwargs.setdefault("max_size", 427)
    return GroundingDetector(tiny_grounding_dino(seed), bert_tokenizer(), **kwargs)


def tiny_mm_grounding_dino(seed: int = 0, logit_scale: float = 1.0) -> nn.Module:
    """``tiny_grounding_dino``'s architecture as an ``MMGroundingDinoForObjectDetection`` (the
    same sizes; MM-Grounding-DINO differs in its heads and training, not in its inputs)."""
    from transformers import MMGroundingDinoConfig, MMGroundingDinoForObjectDetection

    reference = tiny_grounding_dino(seed).config.to_dict()
    keep = {k: v for k, v in reference.items() if k in MMGroundingDinoConfig().to_dict()}
    for key in ("model_type", "architectures", "transformers_version"):
        keep.pop(key, None)
    config = MMGroundingDinoConfig(**keep)
    if logit_scale <= 0:
        raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MMGroundingDinoForObjectDetection(config).eval()
    if logit_scale != 1.0:
        for head in model.class_embed:
            head.register_forward_hook(lambda module, inputs, output: output * logit_scale)
    return model


TINY_CLIP_TOKENS = 48  # text length of the tiny CLIP models (characters are tokens)
# Characters of the tiny CLIP tokenizer (lower-case text; CLIP lower-cases its input).
_CLIP_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,'-"


def clip_char_tokenizer() -> Any:
    """A CLIP BPE tokenizer with a character vocabulary (no merges), for the tiny OWLv2 and SAM 3
    models: real CLIP tokenisation rules (lower case, ``</w>`` word ends, BOS/EOS), 83 ids.

    ``!`` is id 0, the pad token (as in OpenAI's CLIP vocabulary, where OWL's padded-query test
    ``input_ids[..., 0] > 0`` relies on it); BOS and EOS are the two highest ids (49406 / 49407
    in CLIP), so the EOS token is also the arg-max id as CLIP's pooling expects.
    """
    from transformers import CLIPTokenizer

    tokens = ["!"]
    for character in _CLIP_CHARACTERS:
        tokens += [character, character + "</w>"]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=TINY_CLIP_TOKENS)


TINY_OWL_IMAGE_SIZE = 192  # the tiny OWLv2's square input (the real models use 960)


def tiny_owlv2(seed: int = 0, logit_scale: float = 1.0) -> nn.Module:
    """A random OWLv2 (``Owlv2ForObjectDetection``): 1-layer ViT of width 32 with 16 px patches on
    a 192 px square (12x12 boxes), 1-layer CLIP text model of width 32 over
    ``clip_char_tokenizer``'s vocabulary. ``logit_scale`` (> 0) multiplies the class head's
    query logits [B, P, Q] (1: the plain model, whose logits spread over +-60, i.e. scores
    saturated at 0 or 1); boxes are untouched."""
    if logit_scale <= 0:
        raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
    from transformers import Owlv2Config, Owlv2ForObjectDetection

    tokenizer = clip_char_tokenizer()
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2,
        "max_position_embeddings": TINY_CLIP_TOKENS,
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }  # fmt: skip
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "image_size": TINY_OWL_IMAGE_SIZE, "patch_size": 16,
    }  # fmt: skip
    config = Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Owlv2ForObjectDetection(config).eval()
    if logit_scale != 1.0:
        model.class_head.register_forward_hook(
            lambda module, inputs, output: (output[0] * logit_scale, *output[1:])
        )
    return model


def tiny_owlv2_processor() -> Any:
    """``Owlv2Processor`` for ``tiny_owlv2``: the default OWLv2 image processor (CLIP mean/std,
    pad to square, resize) at 192 px, and ``clip_char_tokenizer``."""
    from transformers import Owlv2ImageProcessor, Owlv2Processor

    image_processor = Owlv2ImageProcessor(
        size={"height": TINY_OWL_IMAGE_SIZE, "width": TINY_OWL_IMAGE_SIZE}
    )
    return Owlv2Processor(image_processor=image_processor, tokenizer=clip_char_tokenizer())


TINY_SAM3_IMAGE_SIZE = 224  # the tiny SAM 3's square input (SAM 3: 1008), 16x16 patches of 14 px


def tiny_sam3(
    seed: int = 0,
    logit_scale: float = 1.0,
    mask_logit_scale: float = 1.0,
    semantic_logit_scale: float = 1.0,
) -> nn.Module:
    """A random SAM 3 (transformers ``Sam3Model``) of width 32: 2-layer ViT (one windowed, one
    global block) on a 224 px square, 1-layer CLIP text model over ``clip_char_tokenizer``'s
    vocabulary, 1-layer geometry / DETR encoder / DETR decoder (20 queries), FPN at 64, 32, 16.

    ``logit_scale`` multiplies the query logits (``dot_product_scoring``; not the presence
    logit), ``mask_logit_scale`` the instance mask logits and ``semantic_logit_scale`` the
    semantic head's (mask decoder outputs); 1 is the plain random model, whose scores sit at
    0.25 +- 0.002 and mask logits at ~1e-4 (semantic ~0.06).
    """
    from transformers import CLIPTextConfig, Sam3Config, Sam3Model, Sam3VisionConfig, Sam3ViTConfig

    tokenizer = clip_char_tokenizer()
    grid = TINY_SAM3_IMAGE_SIZE // 14
    small = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    config = Sam3Config(
        vision_config=Sam3VisionConfig(
            backbone_config=Sam3ViTConfig(
                **small, num_hidden_layers=2, image_size=TINY_SAM3_IMAGE_SIZE, patch_size=14,
                window_size=8, global_attn_indexes=[1], pretrain_image_size=TINY_SAM3_IMAGE_SIZE,
            ),
            fpn_hidden_size=32,
            backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2],
        ),
        text_config=CLIPTextConfig(
            **small, vocab_size=len(tokenizer), num_hidden_layers=1, projection_dim=32,
            max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        ),
        geometry_encoder_config={**small, "num_layers": 1},
        detr_encoder_config={**small, "num_layers": 1},
        detr_decoder_config={**small, "num_layers": 1, "num_queries": 20},
        mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2},
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam3Model(config).eval()
    if logit_scale != 1.0:
        model.dot_product_scoring.register_forward_hook(
            lambda module, inputs, output: output * logit_scale
        )
    if mask_logit_scale != 1.0 or semantic_logit_scale != 1.0:

        def scale_masks(module: nn.Module, inputs: Any, output: Any) -> Any:
            output["pred_masks"] = output["pred_masks"] * mask_logit_scale
            output["semantic_seg"] = output["semantic_seg"] * semantic_logit_scale
            return output

        model.mask_decoder.register_forward_hook(scale_masks)
    return model


def tiny_sam3_processor() -> Any:
    """``Sam3Processor`` for ``tiny_sam3``: SAM 3's image processor at 224 px (masks at 56) and
    ``clip_char_tokenizer``."""
    from transformers import Sam3ImageProcessor, Sam3Processor

    image_processor = Sam3ImageProcessor(
        size={"height": TINY_SAM3_IMAGE_SIZE, "width": TINY_SAM3_IMAGE_SIZE},
        mask_size={"height": TINY_SAM3_IMAGE_SIZE // 4, "width": TINY_SAM3_IMAGE_SIZE // 4},
    )
    return Sam3Processor(image_processor=image_processor, tokenizer=clip_char_tokenizer())


TINY_OMDET_IMAGE_SIZE = 224  # the tiny OmDet-Turbo's square input (OmDet-Turbo: 640)


def tiny_omdet_turbo(seed: int = 0) -> nn.Module:
    """A random OmDet-Turbo (``OmDetTurboForObjectDetection``): 4-stage Swin of width 16
    (transformers' Swin, channels-first, so no layer norm after it), 1-layer CLIP text model of
    width 48 over ``clip_char_tokenizer``'s vocabulary (77 tokens), 1-layer encoder and decoder
    of width 32, 30 queries. (``class_embed_dim`` must differ from the decoder width in
    transformers 5.x, which otherwise never creates ``task_project``.)"""
    from transformers import (
        CLIPTextConfig,
        OmDetTurboConfig,
        OmDetTurboForObjectDetection,
        SwinConfig,
    )

    tokenizer = clip_char_tokenizer()
    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
        out_indices=[2, 3, 4], image_size=TINY_OMDET_IMAGE_SIZE,
    )  # fmt: skip
    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=48, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=48,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    config = OmDetTurboConfig(
        text_config=text, backbone_config=backbone, use_timm_backbone=False,
        image_size=TINY_OMDET_IMAGE_SIZE, apply_layernorm_after_vision_backbone=False,
        text_projection_in_dim=48, text_projection_out_dim=48, task_encoder_hidden_dim=64,
        class_embed_dim=48, num_queries=30, encoder_hidden_dim=32,
        vision_features_channels=[32, 32, 32], encoder_in_channels=[32, 64, 128],
        encoder_attention_heads=2, encoder_dim_feedforward=64, decoder_hidden_dim=32,
        decoder_num_heads=2, decoder_num_layers=1, decoder_dim_feedforward=64,
        decoder_num_points=2,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return OmDetTurboForObjectDetection(config).eval()


def tiny_omdet_turbo_processor() -> Any:
    """``OmDetTurboProcessor`` for ``tiny_omdet_turbo``: a DETR image processor resizing to
    224x224 (no padding) and ``clip_char_tokenizer`` (77 tokens, the processor's length)."""
    from transformers import DetrImageProcessor, OmDetTurboProcessor

    tokenizer = clip_char_tokenizer()
    tokenizer.model_max_length = 77
    image_processor = DetrImageProcessor(
        size={"height": TINY_OMDET_IMAGE_SIZE, "width": TINY_OMDET_IMAGE_SIZE}, do_pad=False
    )
    return OmDetTurboProcessor(image_processor=image_processor, tokenizer=tokenizer)
