"""OWLv2 (Minderer et al. 2023) through transformers: one text query per class phrase."""

from __future__ import annotations

import pickle
from typing import Any

import torch
from torch import Tensor, nn

from wsss_pl.classes import ClassVocabulary
from wsss_pl.errors import WeightsError
from wsss_pl.labeling.detectors.base import (
    TINY,
    Detections,
    DetectorOptions,
    DetectorSpec,
    check_batching,
    class_queries,
    concat_detections,
    model_directory_settings,
)
from wsss_pl.labeling.invariance import BatchMode


class OwlV2Detector(nn.Module):
    """Frozen OWLv2 (transformers ``Owlv2ForObjectDetection``) prompted with each image's classes.

    Every phrase of an image's classes (prompt name, assist words) is one text query
    (``query_template``, OWL's ``"a photo of a {}"``). The image processor (resize to its square
    size, pad bottom/right to a square) runs on the detector's device, so every image has one
    input shape. A box's score is the sigmoid of its best query logit and its class that query's
    class, exactly as ``Owlv2Processor.post_process_grounded_object_detection``; boxes keep the
    model's patch order (no NMS, as the reference post-processing) and are scaled to pixels by the
    padded square's side (``max(H, W)``). OWL assigns every box to a query of the image, so
    ``num_unmatched`` is always 0.

    Batching: in ``fixed`` mode every forward has ``batch_size`` images and ``max_queries``
    queries per image (padding queries are all-zero token rows, which the model itself masks to
    ``finfo.min``); an image with more phrases runs in several rounds.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        box_threshold: float = 0.3,
        clip_boxes: bool = False,
        batch_mode: BatchMode = "fixed",
        batch_size: int = 4,
        query_template: str = "a photo of a {}",
        max_queries: int = 8,
    ) -> None:
        super().__init__()
        check_batching(batch_mode, batch_size)
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {max_queries}")
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.box_threshold = box_threshold
        self.clip_boxes = clip_boxes
        self.batch_mode: BatchMode = batch_mode
        self.batch_size = batch_size
        self.query_template = query_template
        self.max_queries = max_queries

    def train(self, mode: bool = True) -> OwlV2Detector:
        super().train(mode)
        self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_threshold(self, box_threshold: float, text_threshold: float | None = None) -> None:
        self.box_threshold = box_threshold

    def pixel_values(self, images: list[Tensor]) -> Tensor:
        """float [B, 3, S, S]: the image processor's output for uint8 [3, H_i, W_i] images."""
        inputs = self.processor.image_processor(
            images=[image.to(self.device) for image in images], return_tensors="pt"
        )
        return inputs["pixel_values"].to(self.device, next(self.model.parameters()).dtype)

    def tokens(self, texts: list[str]) -> dict[str, Tensor]:
        """input_ids / attention_mask long [len(texts), L]: the processor's ``max_length``
        padding to the text model's length L (16 for OWLv2)."""
        length = self.model.config.text_config.max_position_embeddings
        text = self.processor.tokenizer(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        return {k: text[k].to(self.device) for k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def forward(
        self,
        images: list[Tensor],
        present: list[list[str]],
        vocabulary: ClassVocabulary,
        box_threshold: float | None = None,
    ) -> list[Detections]:
        """See the module docstring of ``wsss_pl.labeling.detectors``."""
        if len(images) != len(present):
            raise ValueError(f"{len(images)} images but {len(present)} class lists")
        threshold = self.box_threshold if box_threshold is None else box_threshold
        queries = [class_queries(vocabulary, names, self.query_template) for names in present]
        per_round = self.max_queries if self.batch_mode == "fixed" else 1 << 30
        # (image, its queries of this round): an image with many phrases runs several rounds.
        work = [
            (i, q[start : start + per_round])
            for i, q in enumerate(queries)
            for start in range(0, len(q), per_round)
        ]
        step = 1 if self.batch_mode == "per_image" else len(work) or 1
        if self.batch_mode == "fixed":
            step = self.batch_size
        parts: list[list[Detections]] = [[] for _ in images]
        for start in range(0, len(work), step):
            chunk = work[start : start + step]
            found = self._run([images[i] for i, _ in chunk], [q for _, q in chunk], threshold)
            for (i, _), one in zip(chunk, found, strict=True):
                parts[i].append(one)
        return [concat_detections(p) if p else Detections.empty(self.device) for p in parts]

    def _run(
        self, images: list[Tensor], queries: list[list[tuple[str, str, int]]], threshold: float
    ) -> list[Detections]:
        real = len(images)
        pixels = self.pixel_values(images)
        width = self.max_queries if self.batch_mode == "fixed" else max(len(q) for q in queries)
        rows = self.batch_size if self.batch_mode == "fixed" else real
        if rows > real:
            pixels = torch.cat([pixels, pixels.new_zeros(rows - real, *pixels.shape[1:])])
        texts = [text for q in queries for text, _, _ in q]
        tokens = self.tokens(texts or ["."])
        length = tokens["input_ids"].shape[1]
        input_ids = torch.zeros(rows, width, length, dtype=torch.long, device=self.device)
        attention = torch.zeros_like(input_ids)
        row = 0
        for k, q in enumerate(queries):
            input_ids[k, : len(q)] = tokens["input_ids"][row : row + len(q)]
            attention[k, : len(q)] = tokens["attention_mask"][row : row + len(q)]
            row += len(q)
        outputs = self.model(
            input_ids=input_ids.flatten(0, 1),
            pixel_values=pixels,
            attention_mask=attention.flatten(0, 1),
        )
        results = []
        for k, (image, q) in enumerate(zip(images, queries, strict=True)):
            logits = outputs.logits[k, :, : len(q)].float()  # [P, Q_k]
            best = logits.max(dim=-1)
            scores = best.values.sigmoid()
            keep = scores > threshold
            height, width_px = int(image.shape[-2]), int(image.shape[-1])
            side = float(max(height, width_px))
            cx, cy, w, h = outputs.pred_boxes[k, keep].float().unbind(-1)
            boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1) * side
            if self.clip_boxes:
                limit = torch.tensor([width_px, height, width_px, height], device=boxes.device)
                boxes = torch.minimum(boxes.clamp(min=0), limit)
            which = best.indices[keep].tolist()
            results.append(
                Detections(
                    boxes=boxes,
                    scores=scores[keep],
                    labels=torch.tensor([q[j][2] for j in which], dtype=torch.long).to(
                        boxes.device
                    ),
                    phrases=[q[j][1] for j in which],
                )
            )
        return results


def owlv2_processor(directory: str | None = None) -> Any:
    """The model directory's ``Owlv2Processor`` (its tokenizer and image size)."""
    from transformers import Owlv2Processor

    if directory is None:
        raise WeightsError("OWLv2 needs its model directory for the processor and tokenizer")
    return Owlv2Processor.from_pretrained(directory)


class OwlV2Spec(DetectorSpec):
    """OWLv2 (Minderer et al. 2023) through transformers.

    Args:
        model: ``owlv2-base`` (``google/owlv2-base-patch16-ensemble``), ``owlv2-large``, a hub id,
            a local directory (config.json, weights, tokenizer, preprocessor_config.json), or
            ``tiny`` (random tiny model, tests).
        query_template: text of a phrase's query (``{}`` is the phrase).
        max_queries: queries per image and forward in ``fixed`` batch mode.
        download: fetch a missing hub model.
    """

    family = "owlv2"

    def __init__(
        self,
        model: str = "owlv2-base",
        query_template: str = "a photo of a {}",
        max_queries: int = 8,
        download: bool = True,
    ) -> None:
        if "{}" not in query_template:
            raise ValueError(f"query_template must contain {{}}, got {query_template!r}")
        self.model = model
        self.query_template = query_template
        self.max_queries = max_queries
        self.download = download

    def settings(self) -> dict[str, Any]:
        rules = {"query_template": self.query_template}
        if self.model == TINY:
            return {"name": "owlv2_tiny", "seed": 0, **rules}
        weights = model_directory_settings(self.model, self.download)[0]
        return {"family": self.family, **weights, **rules}

    def build(self, options: DetectorOptions) -> nn.Module:
        kwargs = {
            "box_threshold": options.box_threshold,
            "clip_boxes": options.clip_boxes,
            "batch_mode": options.batch_mode,
            "batch_size": options.batch_size,
            "query_template": self.query_template,
            "max_queries": self.max_queries,
        }
        if self.model == TINY:
            from wsss_pl.labeling.tiny import tiny_owlv2, tiny_owlv2_processor

            return OwlV2Detector(tiny_owlv2(), tiny_owlv2_processor(), **kwargs)
        from transformers import Owlv2ForObjectDetection

        directory = model_directory_settings(self.model, self.download)[1]
        try:
            model = Owlv2ForObjectDetection.from_pretrained(directory)
        except (OSError, pickle.UnpicklingError) as error:
            raise WeightsError(f"cannot load OWLv2 from {directory!r}: {error}") from error
        return OwlV2Detector(model, owlv2_processor(directory), **kwargs)

    def input_size(self, height: int, width: int, options: DetectorOptions) -> tuple[int, int]:
        return (1, 1)  # every image is resized and padded to the processor's square
