"""Grounding DINO boxes for the classes an image is known to contain (batched, frozen, no_grad)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as tvF
from transformers import GroundingDinoForObjectDetection, PreTrainedTokenizerBase

from wsss_pl.classes import ClassVocabulary
from wsss_pl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from wsss_pl.labeling.detectors.base import Detections, FrozenDetector, concat_detections
from wsss_pl.labeling.detectors.prompt import (
    Caption,
    assign_boxes_by_argmax_word,
    assign_boxes_to_classes,
    build_captions,
)
from wsss_pl.labeling.detectors.tokenizer import bert_tokenizer
from wsss_pl.labeling.invariance import BatchMode, per_image_bi_attention
from wsss_pl.labeling.rules import CaptionStyle, ImageResize, PhraseRule, detector_input_size
from wsss_pl.weights import resolve_hub_model

NEUTRAL_CAPTION = "."  # the caption of the zero images that fill a fixed-size detector batch


class GroundingDetector(FrozenDetector):
    """Frozen Grounding DINO (transformers) prompted with each image's class names.

    Each image's caption(s) come from ``build_captions`` (``caption_style``); when an image needs
    several captions (over ``max_text_tokens`` tokens), the model runs once per caption round.
    No NMS and no re-sorting: boxes keep the model's query order, chunk after chunk, as in the
    paper's pipeline, whose masks are painted in that order (later wins).

    Input images (``image_resize``):
        ``pil``: as the released code's ``T.Compose([RandomResize([800], max_size=1333),
        ToTensor(), Normalize(...)])`` makes them: PIL bilinear resize of the uint8 image on the
        CPU, with groundingdino's size rule (the shorter side ``int(round(...))`` when the longer
        side caps it, the longer side truncated), then /255 and ImageNet normalisation.
        ``tensor``: transformers' Grounding DINO processor on the image's device (torchvision's
        uint8 resize, float target size), as wsss_pl did before the paper preset.

    Batching (``batch_mode``; ``wsss_pl.labeling.invariance``): ``fixed`` (default) groups images
    by input shape and runs every forward at exactly ``batch_size`` rows, short batches filled
    with zero images and a neutral caption whose outputs are discarded, every caption padded to
    ``max_text_tokens`` tokens, and the bi-attention's softmax shift taken per image: an image's
    boxes are then bit-identical whatever its batch mates, position, GPU count or order.
    ``per_image`` runs every image alone, unpadded (the released code's one-image calls; differs
    from ``fixed`` only by the last bits of the caption padding). ``free`` batches the images of
    one shape as they come (fast, but a box can move in the last bits with its batch mates).
    ``pad_to_canvas=True`` pads every image to a fixed canvas of its orientation
    (``image_size x max_size`` or ``max_size x image_size``) and groups by orientation instead;
    images are never padded to each other's sizes (that changes detections for real).

    Box -> class (``phrase_rule``): see ``wsss_pl.labeling.detectors.prompt``. Boxes are scaled to pixels
    the released way (``cx*W - w*W/2``, then ``+ w*W``) and clipped to the image only with
    ``clip_boxes`` (the released code passed them to SAM unclipped).
    """

    def __init__(
        self,
        model: GroundingDinoForObjectDetection,
        tokenizer: PreTrainedTokenizerBase,
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        max_text_tokens: int = 256,
        image_size: int = 800,
        max_size: int = 1333,
        pad_to_canvas: bool = False,
        caption_style: CaptionStyle = "prompt_names",
        phrase_rule: PhraseRule = "best_class_token",
        image_resize: ImageResize = "tensor",
        clip_boxes: bool = True,
        batch_mode: BatchMode = "fixed",
        batch_size: int = 4,
    ) -> None:
        super().__init__(model, box_threshold, batch_mode, batch_size)
        if batch_mode == "fixed":
            per_image_bi_attention(self.model)
        self.tokenizer = tokenizer
        self.text_threshold = text_threshold
        self.max_text_tokens = min(max_text_tokens, model.config.max_text_len)
        self.image_size = image_size
        self.max_size = max_size
        self.pad_to_canvas = pad_to_canvas
        self.caption_style: CaptionStyle = caption_style
        self.phrase_rule: PhraseRule = phrase_rule
        self.image_resize: ImageResize = image_resize
        self.clip_boxes = clip_boxes
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), False)

    @classmethod
    def from_pretrained(cls, name_or_dir: str, **kwargs: Any) -> GroundingDetector:
        """Load a transformers Grounding DINO or MM-Grounding-DINO (e.g.
        ``IDEA-Research/grounding-dino-tiny`` or a local folder) offline, with the class its
        ``config.json`` ``model_type`` names (``wsss_pl.labeling.model_folders``).

        ``kwargs`` go to ``__init__`` (thresholds, sizes).
        """
        from wsss_pl.labeling.model_folders import load_folder, read_folder

        model_dir = resolve_hub_model(name_or_dir)
        model_type, _ = read_folder(model_dir)
        family = "mm_grounding_dino" if model_type == "mm-grounding-dino" else "grounding_dino"
        model, _ = load_folder(model_dir, family)
        return cls(model, bert_tokenizer(model_dir), **kwargs)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def set_threshold(self, box_threshold: float, text_threshold: float | None = None) -> None:
        """Change the thresholds (e.g. to retry a class that got no box at a lower threshold)."""
        super().set_threshold(box_threshold)
        if text_threshold is not None:
            self.text_threshold = text_threshold

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the model sees: shorter side ``image_size`` unless the longer passes ``max_size``."""
        return detector_input_size(height, width, self.image_size, self.max_size, self.image_resize)

    def canvas_size(self, height: int, width: int) -> tuple[int, int]:
        """The fixed padded (h, w) of an image of this size when ``pad_to_canvas``."""
        if height <= width:
            return self.image_size, self.max_size
        return self.max_size, self.image_size

    def preprocess(
        self, images: list[Tensor], canvas: tuple[int, int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Resize, normalise and pad uint8 [3, H_i, W_i] images.

        Returns pixel_values float32 [B, 3, H, W] and pixel_mask long [B, H, W] (1 = image),
        where (H, W) is ``canvas`` or else the largest resized size of the batch.
        """
        resized = []
        for image in images:
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"expected a uint8 [3, H, W] image, got {tuple(image.shape)}")
            size = self.resized_size(*image.shape[-2:])
            if self.image_resize == "pil":
                pixels = _resize_pil(image, size).to(self.device)
            else:
                pixels = image.to(self.device)
                if size != tuple(image.shape[-2:]):
                    pixels = _resize(pixels, size)
            resized.append((pixels.float() / 255.0 - self.pixel_mean) / self.pixel_std)
        height = max(x.shape[-2] for x in resized)
        width = max(x.shape[-1] for x in resized)
        if canvas is not None:  # never smaller than an image (rounding at the size limits)
            height, width = max(height, canvas[0]), max(width, canvas[1])
        pixel_values = torch.zeros(len(images), 3, height, width, device=self.device)
        pixel_mask = torch.zeros(len(images), height, width, dtype=torch.long, device=self.device)
        for i, x in enumerate(resized):
            pixel_values[i, :, : x.shape[-2], : x.shape[-1]] = x
            pixel_mask[i, : x.shape[-2], : x.shape[-1]] = 1
        return pixel_values, pixel_mask

    @torch.no_grad()
    def forward(
        self,
        images: list[Tensor],
        present: list[list[str]],
        vocabulary: ClassVocabulary,
        box_threshold: float | None = None,
    ) -> list[Detections]:
        """Detect the ``present`` classes of each image.

        Args:
            images: B uint8 tensors [3, H_i, W_i] (RGB), ideally on this module's device.
            present: B lists of class names (image-level labels), from ``vocabulary``.
            vocabulary: the class vocabulary (prompt names, assist words).
            box_threshold: overrides ``self.box_threshold`` for this call.

        Returns:
            B ``Detections``; an image with no class gets empty ones without running the model.
        """
        threshold = self.call_threshold(images, present, box_threshold)
        captions = [
            build_captions(
                vocabulary, names, self.tokenizer, self.max_text_tokens, self.caption_style
            )
            for names in present
        ]
        parts: list[list[Detections]] = [[] for _ in images]
        # Images that may share a forward pass: same canvas, or same input shape (no padding).
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image_captions in enumerate(captions):
            if image_captions:
                size = tuple(images[i].shape[-2:])
                shape = self.canvas_size(*size) if self.pad_to_canvas else self.resized_size(*size)
                key = (*shape, i) if self.batch_mode == "per_image" else shape
                groups.setdefault(key, []).append(i)
        step = self.batch_size if self.batch_mode == "fixed" else len(images)
        for key, group in groups.items():
            canvas = (key[0], key[1]) if self.pad_to_canvas else None
            for start in range(0, len(group), step):
                todo = group[start : start + step]
                pixel_values, pixel_mask = self.preprocess([images[i] for i in todo], canvas)
                for chunk in range(max(len(captions[i]) for i in todo)):
                    rows = [r for r, i in enumerate(todo) if len(captions[i]) > chunk]
                    round_captions = [captions[todo[r]][chunk] for r in rows]
                    outputs = self._run(pixel_values[rows], pixel_mask[rows], round_captions)
                    for r, caption, logits, boxes in zip(
                        rows, round_captions, *outputs, strict=True
                    ):
                        i = todo[r]
                        size = images[i].shape[-2:]
                        parts[i].append(self._select(logits, boxes, caption, size, threshold))
        return [concat_detections(p) if p else Detections.empty(self.device) for p in parts]

    def _run(
        self, pixel_values: Tensor, pixel_mask: Tensor, captions: list[Caption]
    ) -> tuple[Tensor, Tensor]:
        """Logits float [R, Q, max_text_len] and boxes float [R, Q, 4] (normalised cxcywh) of the
        R real rows; in ``fixed`` mode the forward itself runs at exactly ``batch_size`` rows."""
        texts = [c.text for c in captions]
        real = len(texts)
        if self.batch_mode == "fixed":
            if real > self.batch_size:
                raise ValueError(f"{real} rows for a fixed detector batch of {self.batch_size}")
            fill = self.batch_size - real
            if fill:  # zero images with a neutral caption; their outputs are dropped below
                pixel_values = torch.cat(
                    [pixel_values, pixel_values.new_zeros(fill, *pixel_values.shape[1:])]
                )
                pixel_mask = torch.cat(
                    [pixel_mask, pixel_mask.new_ones(fill, *pixel_mask.shape[1:])]
                )
                texts += [NEUTRAL_CAPTION] * fill
            text = self.tokenizer(
                texts, padding="max_length", max_length=self.max_text_tokens, return_tensors="pt"
            )
        else:
            text = self.tokenizer(texts, padding=True, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        outputs = self.model(
            pixel_values=pixel_values.to(dtype),
            pixel_mask=pixel_mask,
            input_ids=text["input_ids"].to(self.device),
            attention_mask=text["attention_mask"].to(self.device),
            token_type_ids=text["token_type_ids"].to(self.device),
        )
        return outputs.logits[:real].float(), outputs.pred_boxes[:real].float()

    def _select(
        self,
        logits: Tensor,
        boxes: Tensor,
        caption: Caption,
        image_size: tuple[int, int],
        box_threshold: float,
    ) -> Detections:
        """Boxes of one image and caption: logits [Q, T], boxes [Q, 4] normalised cxcywh."""
        token_scores = logits.sigmoid()
        scores = token_scores.max(dim=1).values
        keep = scores > box_threshold
        if self.phrase_rule == "argmax_word":
            labels, phrases = assign_boxes_by_argmax_word(token_scores[keep], caption)
        else:
            labels, phrases = assign_boxes_to_classes(
                token_scores[keep], caption, self.text_threshold
            )
        matched = labels > 0
        height, width = image_size
        scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        # The released arithmetic: scale cxcywh to pixels, x0 = cx - w / 2, then x1 = w + x0.
        pixels = boxes[keep][matched] * scale
        top_left = pixels[:, :2] - pixels[:, 2:] / 2
        xyxy = torch.cat([top_left, pixels[:, 2:] + top_left], dim=1)
        if self.clip_boxes:
            xyxy = torch.minimum(xyxy.clamp(min=0), scale)
        return Detections(
            boxes=xyxy,
            scores=scores[keep][matched],
            labels=labels[matched],
            phrases=[p for p, m in zip(phrases, matched.tolist(), strict=True) if m],
            num_unmatched=int((~matched).sum()),
        )


def _resize_pil(image: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 [3, H, W] -> uint8 [3, h, w] through PIL's bilinear resize on the CPU, the call
    torchvision's ``resize`` makes on a PIL image (the released code's detector input)."""
    if tuple(image.shape[-2:]) == size:
        return image
    array = image.detach().to("cpu", torch.uint8).permute(1, 2, 0).numpy()
    resized = Image.fromarray(array).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, antialiased resize of a [3, H, W] image, as the Grounding DINO processor does it.

    A uint8 image goes through the very call of transformers' ``GroundingDinoImageProcessor``
    (torchvision ``resize`` on uint8: PIL's two-pass uint8 kernel on CPU, float rounded back to
    uint8 on GPU). Resizing in float instead differs by up to one grey level on ~15% of pixels,
    which is enough to reorder Grounding DINO's top-k query selection among near-tied proposals.
    """
    if image.dtype == torch.uint8:
        return tvF.resize(image, list(size), tvF.InterpolationMode.BILINEAR, antialias=True)
    return F.interpolate(image[None].float(), size, mode="bilinear", antialias=True)[0]
