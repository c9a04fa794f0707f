"""Grounding DINO boxes for the classes an image is known to contain (batched, frozen, no_grad)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as tvF
from transformers import GroundingDinoForObjectDetection, PreTrainedTokenizerBase

from wsss_pl.classes import ClassVocabulary
from wsss_pl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from wsss_pl.errors import WeightsError
from wsss_pl.labeling.prompt import Caption, assign_boxes_to_classes, build_captions
from wsss_pl.labeling.tokenizer import bert_tokenizer
from wsss_pl.weights import resolve_hub_model, unsafe_pickle_error


@dataclass
class Detections:
    """The boxes found in one image, in the detector's query order (caption chunk by chunk).

    Attributes:
        boxes: float32 [N, 4], xyxy in pixels of the original image, clipped to it.
        scores: float32 [N], the box's highest token score (sigmoid), as Grounding DINO ranks boxes.
        labels: long [N], class ids in 1..C, only among the classes prompted for.
        phrases: the caption phrase each box was matched to (a class or assist-word phrase).
        num_unmatched: boxes above the box threshold whose tokens matched no prompted class
            (no token above the text threshold, or only on separators); they are not in ``boxes``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    phrases: list[str] = field(default_factory=list)
    num_unmatched: int = 0

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> Detections:
        return cls(
            boxes=torch.zeros(0, 4, device=device),
            scores=torch.zeros(0, device=device),
            labels=torch.zeros(0, dtype=torch.long, device=device),
        )

    def __len__(self) -> int:
        return self.labels.numel()


class GroundingDetector(nn.Module):
    """Frozen Grounding DINO (transformers) prompted with each image's class names.

    Images are resized on their device like the Grounding DINO processor (shorter side to
    ``image_size``, longer side at most ``max_size``, bilinear with antialiasing on the uint8
    image: the processor's own torchvision call), ImageNet normalised and zero-padded to one
    batch with a pixel mask. Each image's caption(s) come from ``build_captions``; when an image
    needs several captions (over ``max_text_tokens`` tokens), the model runs once per caption
    round, batched across the images that have that round.

    No NMS and no re-sorting: boxes keep the model's query order, chunk after chunk, as in the
    paper's pipeline, whose masks are painted in that order (later wins).

    Padding: by default images are padded to the batch's largest one, as the Grounding DINO
    processor does, so an image's scores can shift slightly with the other images of its batch.
    ``pad_to_canvas=True`` pads every image to a fixed canvas of its orientation
    (``image_size x max_size`` or ``max_size x image_size``), batching landscape and portrait
    images separately: each image's boxes then depend on that image only (reproducible labels
    whatever the batch size or GPU count), at the cost of computing on the padding.
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
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.max_text_tokens = min(max_text_tokens, model.config.max_text_len)
        self.image_size = image_size
        self.max_size = max_size
        self.pad_to_canvas = pad_to_canvas
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), False)

    @classmethod
    def from_pretrained(cls, name_or_dir: str, **kwargs: Any) -> GroundingDetector:
        """Load a transformers Grounding DINO (e.g. ``IDEA-Research/grounding-dino-tiny``) offline.

        ``kwargs`` go to ``__init__`` (thresholds, sizes).
        """
        model_dir = resolve_hub_model(name_or_dir)
        try:
            model = GroundingDinoForObjectDetection.from_pretrained(model_dir)
        except OSError as error:
            raise WeightsError(
                f"cannot load Grounding DINO from {model_dir!r}: {error}. Pass a local directory "
                "with config.json and model.safetensors, or download the model into the HF cache"
            ) from error
        except pickle.UnpicklingError as error:  # weights_only=True refused it: nothing ran
            raise unsafe_pickle_error(Path(model_dir) / "pytorch_model.bin", error) from None
        tokenizer = bert_tokenizer(model_dir if Path(model_dir).is_dir() else None)
        return cls(model, tokenizer, **kwargs)

    def train(self, mode: bool = True) -> GroundingDetector:
        super().train(mode)
        self.model.eval()  # frozen: no dropout even inside a training LightningModule
        return self

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def set_threshold(self, box_threshold: float, text_threshold: float | None = None) -> None:
        """Change the thresholds (e.g. to retry a class that got no box at a lower threshold)."""
        self.box_threshold = box_threshold
        if text_threshold is not None:
            self.text_threshold = text_threshold

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the model sees: shorter side ``image_size`` unless the longer passes ``max_size``."""
        short, long = min(height, width), max(height, width)
        target = float(self.image_size)
        if long / short * target > self.max_size:
            target = self.max_size * short / long
        if short == round(target):
            return height, width
        new_short, new_long = round(target), int(target * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)

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
        if len(images) != len(present):
            raise ValueError(f"{len(images)} images but {len(present)} class lists")
        threshold = self.box_threshold if box_threshold is None else box_threshold
        captions = [
            build_captions(vocabulary, names, self.tokenizer, self.max_text_tokens)
            for names in present
        ]
        parts: list[list[Detections]] = [[] for _ in images]
        groups: dict[tuple[int, int] | None, list[int]] = {}
        for i, image_captions in enumerate(captions):
            if image_captions:
                key = self.canvas_size(*images[i].shape[-2:]) if self.pad_to_canvas else None
                groups.setdefault(key, []).append(i)
        for canvas, todo in groups.items():
            pixel_values, pixel_mask = self.preprocess([images[i] for i in todo], canvas)
            for chunk in range(max(len(captions[i]) for i in todo)):
                rows = [r for r, i in enumerate(todo) if len(captions[i]) > chunk]
                round_captions = [captions[todo[r]][chunk] for r in rows]
                outputs = self._run(pixel_values[rows], pixel_mask[rows], round_captions)
                for r, caption, logits, boxes in zip(rows, round_captions, *outputs, strict=True):
                    i = todo[r]
                    size = images[i].shape[-2:]
                    parts[i].append(self._select(logits, boxes, caption, size, threshold))
        return [_concat(p) if p else Detections.empty(self.device) for p in parts]

    def _run(
        self, pixel_values: Tensor, pixel_mask: Tensor, captions: list[Caption]
    ) -> tuple[Tensor, Tensor]:
        """Logits float [B, Q, max_text_len] and boxes float [B, Q, 4] (normalised cxcywh)."""
        text = self.tokenizer([c.text for c in captions], padding=True, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        outputs = self.model(
            pixel_values=pixel_values.to(dtype),
            pixel_mask=pixel_mask,
            input_ids=text["input_ids"].to(self.device),
            attention_mask=text["attention_mask"].to(self.device),
            token_type_ids=text["token_type_ids"].to(self.device),
        )
        return outputs.logits.float(), outputs.pred_boxes.float()

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
        labels, phrases = assign_boxes_to_classes(token_scores[keep], caption, self.text_threshold)
        matched = labels > 0
        height, width = image_size
        cx, cy, w, h = boxes[keep][matched].unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        scale = torch.tensor([width, height, width, height], dtype=xyxy.dtype, device=xyxy.device)
        xyxy = torch.minimum((xyxy * scale).clamp(min=0), scale)
        return Detections(
            boxes=xyxy,
            scores=scores[keep][matched],
            labels=labels[matched],
            phrases=[p for p, m in zip(phrases, matched.tolist(), strict=True) if m],
            num_unmatched=int((~matched).sum()),
        )


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


def _concat(parts: list[Detections]) -> Detections:
    return Detections(
        boxes=torch.cat([p.boxes for p in parts]),
        scores=torch.cat([p.scores for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        phrases=[phrase for p in parts for phrase in p.phrases],
        num_unmatched=sum(p.num_unmatched for p in parts),
    )
