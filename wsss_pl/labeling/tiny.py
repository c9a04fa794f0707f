"""Tiny randomly initialised Grounding DINO and SAM built from the real classes.

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
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn
from transformers import (
    BertConfig,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    SwinConfig,
)

from wsss_pl.labeling.detectors.grounding import GroundingDetector
from wsss_pl.labeling.detectors.tokenizer import BERT_VOCAB_SIZE, bert_tokenizer
from wsss_pl.labeling.segmenters.sam import SamSegmenter

SAM_IMAGE_SIZE = 1024  # SAM's box/mask geometry assumes a 1024 px input


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

    ``sam``: ``tiny_sam``; ``hq_sam``: ``segmenters.tiny_hq_sam``; ``sam2``:
    ``segmenters.tiny_sam2`` (masks scaled by ``scale_mask_logits``); ``grounding_dino``:
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
    from wsss_pl.labeling.segmenters import tiny_hq_sam, tiny_sam2

    return scale_mask_logits((tiny_hq_sam if kind == "hq_sam" else tiny_sam2)(seed), scale)


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
