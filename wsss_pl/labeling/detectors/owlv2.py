"""OWLv2 (Minderer et al. 2023) through transformers: one text query per class phrase."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from wsss_pl.classes import ClassVocabulary
from wsss_pl.labeling.detectors.base import (
    Detections,
    DetectorOptions,
    FrozenDetector,
    HubDetectorSpec,
    class_queries,
)
from wsss_pl.labeling.invariance import BatchMode


class OwlV2Detector(FrozenDetector):
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
    ``finfo.min``); an image with more phrases runs in several rounds whose query logits are
    joined before the selection. OWL's boxes depend on the image alone and a query's logits on
    the image and that query alone, so the result is the documented one-image call with every
    query at once (each box scored by its best query over all of them), whatever
    ``max_queries``.
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
        super().__init__(model, box_threshold, batch_mode, batch_size)
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {max_queries}")
        self.processor = processor
        self.clip_boxes = clip_boxes
        self.query_template = query_template
        self.max_queries = max_queries

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
        threshold = self.call_threshold(images, present, box_threshold)
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
        # Per image: its query logits [P, Q_i] round after round, and its boxes [P, 4].
        logits: list[list[Tensor]] = [[] for _ in images]
        boxes: dict[int, Tensor] = {}
        for start in range(0, len(work), step):
            chunk = work[start : start + step]
            found = self._run([images[i] for i, _ in chunk], [q for _, q in chunk])
            for (i, _), (round_logits, round_boxes) in zip(chunk, found, strict=True):
                logits[i].append(round_logits)
                boxes.setdefault(i, round_boxes)  # image-only: the same in every round
        return [
            self._select(torch.cat(logits[i], dim=1), boxes[i], images[i], queries[i], threshold)
            if i in boxes
            else Detections.empty(self.device)
            for i in range(len(images))
        ]

    def _run(
        self, images: list[Tensor], queries: list[list[tuple[str, str, int]]]
    ) -> list[tuple[Tensor, Tensor]]:
        """One forward; per image its query logits float32 [P, Q_k] (its own queries only) and
        its boxes float32 [P, 4] (normalised cxcywh of the padded square)."""
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
        return [
            (outputs.logits[k, :, : len(q)].float(), outputs.pred_boxes[k].float())
            for k, q in enumerate(queries)
        ]

    def _select(
        self,
        logits: Tensor,
        boxes: Tensor,
        image: Tensor,
        queries: list[tuple[str, str, int]],
        threshold: float,
    ) -> Detections:
        """Boxes of one image from its query logits [P, Q] (all its queries) and boxes [P, 4],
        as ``post_process_grounded_object_detection``: score = sigmoid of the best query."""
        best = logits.max(dim=-1)
        scores = best.values.sigmoid()
        keep = scores > threshold
        height, width_px = int(image.shape[-2]), int(image.shape[-1])
        side = float(max(height, width_px))
        cx, cy, w, h = boxes[keep].unbind(-1)
        xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1) * side
        if self.clip_boxes:
            limit = torch.tensor([width_px, height, width_px, height], device=xyxy.device)
            xyxy = torch.minimum(xyxy.clamp(min=0), limit)
        which = best.indices[keep].tolist()
        return Detections(
            boxes=xyxy,
            scores=scores[keep],
            labels=torch.tensor([queries[j][2] for j in which], dtype=torch.long).to(xyxy.device),
            phrases=[queries[j][1] for j in which],
        )


class OwlV2Spec(HubDetectorSpec):
    """OWLv2 (Minderer et al. 2023) through transformers.

    Args:
        model: ``owlv2-base`` (``google/owlv2-base-patch16-ensemble``), ``owlv2-large``, a hub id,
            a local directory (``model_type: owlv2``: config.json, weights, tokenizer,
            preprocessor_config.json; loaded as ``Owlv2ForObjectDetection``), or ``tiny``
            (random tiny model, tests).
        query_template: text of a phrase's query (``{}`` is the phrase).
        max_queries: queries per image and forward in ``fixed`` batch mode (speed and memory
            only: an image with more phrases runs in rounds merged into the one-call result).
        download: fetch a missing hub model.
    """

    family = "owlv2"
    hub_family = "owlv2"
    detector_class = OwlV2Detector
    tiny_name = "owlv2_tiny"

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

    def rules(self) -> dict[str, Any]:
        return {"query_template": self.query_template}

    def detector_kwargs(self, options: DetectorOptions) -> dict[str, Any]:
        """``OwlV2Detector``'s keyword arguments from the labelling rules and this spec."""
        return {
            **super().detector_kwargs(options),
            "clip_boxes": options.clip_boxes,
            "query_template": self.query_template,
            "max_queries": self.max_queries,
        }
