"""The labelling rules a config chooses between, and the presets that bundle them (no heavy imports:
the config schema and the label pass's ordering read them without loading a model library)."""

from __future__ import annotations

from typing import Any, Literal

CaptionStyle = Literal["paper", "prompt_names"]
PhraseRule = Literal["argmax_word", "best_class_token"]
ImageResize = Literal["pil", "tensor"]
Preset = Literal["paper", "wsss_pl"]
# Labelling rules of each preset: "paper" = the released code (weixuansun/wsss_sam
# process_pascal.py / process_coco.py), "wsss_pl" = this project's earlier rules.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "caption_style": "paper",
        "phrase_rule": "argmax_word",
        "image_resize": "pil",
        "clip_boxes": False,
    },
    "wsss_pl": {
        "caption_style": "prompt_names",
        "phrase_rule": "best_class_token",
        "image_resize": "tensor",
        "clip_boxes": True,
    },
}


def detector_input_size(
    height: int, width: int, image_size: int, max_size: int, rule: ImageResize = "pil"
) -> tuple[int, int]:
    """(h, w) of the detector input for an image of (height, width).

    ``pil``: groundingdino ``datasets.transforms.resize``: when the longer side would pass
    ``max_size``, the shorter side becomes ``int(round(max_size * short / long))``; the longer
    side is ``int(short_target * long / short)`` of that integer target. ``tensor``: the
    transformers processor, which keeps the float target for the longer side.
    """
    short, long = min(height, width), max(height, width)
    if rule == "pil":
        target: float = image_size
        if long / short * image_size > max_size:
            target = int(round(max_size * short / long))
        if short == target:
            return height, width
        new_short, new_long = int(target), int(target * long / short)
    else:
        target = float(image_size)
        if long / short * target > max_size:
            target = max_size * short / long
        if short == round(target):
            return height, width
        new_short, new_long = round(target), int(target * long / short)
    if width < height:
        return new_long, new_short
    return new_short, new_long
