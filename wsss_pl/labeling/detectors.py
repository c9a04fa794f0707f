"""Pluggable open-vocabulary detectors behind one interface (``detector:`` class_path in config).

A ``DetectorSpec`` is the config side (plain settings for the LightningCLI schema, ``settings()``
for the cache fingerprint, ``build()`` for the frozen module), as ``SegmenterSpec`` is for the
box -> mask models. Every built detector is called as

    detector(images, present, vocabulary, box_threshold=None) -> list[Detections]

with B uint8 [3, H_i, W_i] RGB images and B lists of the image's class names (image-level
labels), and returns per image ``Detections``: boxes float32 [N, 4] xyxy in original-image
pixels, scores float32 [N], class ids long [N] (1..C, only among the prompted classes), the
phrase each box answered, and ``num_unmatched`` (boxes above the box threshold that matched no
prompted class; counted, never used). An image without classes gets empty detections without a
forward. Detectors that also give masks (SAM 3, ``provides_masks``) fill ``Detections.masks``
and replace the segmenter.

The rules shared by every detector: only the image's own classes are prompted (the image-level
class filter), ``box_threshold`` on the box score, and the batching rules of
``wsss_pl.labeling.invariance`` (``fixed``: every forward at exactly ``batch_size`` rows of one
shape, short batches filled with zero images and a neutral prompt whose outputs are dropped;
``per_image``: one image per forward; ``free``: batches as they come).

- ``GroundingDinoSpec``: Grounding DINO Swin-T (the paper's) / Swin-B, exactly
  ``GroundingDetector`` (a plain string ``detector: grounding-dino-tiny`` is this spec with the
  same fingerprint).
- ``MMGroundingDinoSpec``: MM-Grounding-DINO (OpenMMLab's re-trained Grounding DINO,
  ``MMGroundingDinoForObjectDetection``): same inputs, captions and phrase rules.
- ``OwlV2Spec``: OWLv2 (``Owlv2ForObjectDetection``): one text query per class phrase.
- ``OmDetTurboSpec``: OmDet-Turbo (``OmDetTurboForObjectDetection``): class phrases + a task.
- ``Sam3Spec`` (``wsss_pl.labeling.sam3``): SAM 3 text-prompted instance / semantic masks.
"""

from __future__ import annotations

import hashlib
import pickle
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from wsss_pl.classes import ClassVocabulary
from wsss_pl.errors import WeightsError
from wsss_pl.labeling.invariance import BATCH_MODES, BatchMode
from wsss_pl.labeling.rules import CaptionStyle, ImageResize, PhraseRule, detector_input_size

TINY = "tiny"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class DetectorOptions:
    """The labelling rules ``OnlinePseudoLabels`` passes to every detector it builds.

    Grounding-DINO-only rules (``caption_style``, ``phrase_rule``, ``image_resize``,
    ``image_size``, ``pad_to_canvas``) are ignored by detectors with their own processor.
    """

    box_threshold: float = 0.3
    text_threshold: float = 0.25
    image_size: int = 800
    pad_to_canvas: bool = False
    caption_style: CaptionStyle = "paper"
    phrase_rule: PhraseRule = "argmax_word"
    image_resize: ImageResize = "pil"
    clip_boxes: bool = False
    batch_mode: BatchMode = "fixed"
    batch_size: int = 4


class DetectorSpec(ABC):
    """Config of an open-vocabulary detector (see the module docstring for the call contract)."""

    provides_masks: ClassVar[bool] = False  # True: Detections carry masks, no segmenter runs
    family: ClassVar[str] = "detector"

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What changes the boxes (weights hash, model family): part of the cache fingerprint."""

    @abstractmethod
    def build(self, options: DetectorOptions) -> nn.Module:
        """The frozen detector module, on the CPU."""

    @abstractmethod
    def input_size(self, height: int, width: int, options: DetectorOptions) -> tuple[int, int]:
        """(h, w) of the model input for an image of this size (the label pass groups by it)."""

    @property
    def name(self) -> str:
        """Short name for logs and tables."""
        return f"{self.family}:{getattr(self, 'model', '?')}"


def model_directory_settings(name: str, download: bool) -> tuple[dict[str, Any], str]:
    """Fingerprint entries (weights and config sha256) and the local directory of a hub model."""
    from wsss_pl.weights import checkpoint_fingerprint, resolve_hub_model

    directory = Path(resolve_hub_model(name, download=download))
    weights = next((directory / f for f in _WEIGHT_FILES if (directory / f).is_file()), None)
    if weights is None:
        raise WeightsError(f"model directory {directory} has none of {_WEIGHT_FILES}")
    # Keyed by content, not by name or path: a moved or renamed copy reuses the cache.
    config_sha256 = hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
    return {"sha256": checkpoint_fingerprint(weights), "config_sha256": config_sha256}, str(
        directory
    )


def check_batching(batch_mode: str, batch_size: int) -> None:
    if batch_mode not in BATCH_MODES:
        raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {batch_mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"detector batch_size must be an integer >= 1, got {batch_size!r}")


@dataclass
class Detections:
    """The boxes found in one image, in the detector's query order (caption chunk by chunk).

    Attributes:
        scores: float32 [N], the box's highest token score (sigmoid), as Grounding DINO ranks boxes.
        labels: long [N], class ids in 1..C, only among the classes prompted for.
        boxes: float32 [N, 4], xyxy in pixels of the original image (clipped to it only with
            ``clip_boxes``).
        phrases: the caption phrase each box was matched to (a class or assist-word phrase).
        num_unmatched: boxes above the box threshold that matched no class (``argmax_word``: the
            arg-max token is a separator/special token or its word is no class or assist word;
            ``best_class_token``: no class token above the text threshold); not in ``boxes``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    phrases: list[str] = field(default_factory=list)
    num_unmatched: int = 0
    masks: Tensor | None = None  # bool [N, H, W] from a detector that segments (SAM 3)

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> Detections:
        return cls(
            boxes=torch.zeros(0, 4, device=device),
            scores=torch.zeros(0, device=device),
            labels=torch.zeros(0, dtype=torch.long, device=device),
        )

    def __len__(self) -> int:
        return self.labels.numel()


def concat_detections(parts: list[Detections]) -> Detections:
    """One image's detections of several rounds (caption chunks, query rounds), in order."""
    return Detections(
        boxes=torch.cat([p.boxes for p in parts]),
        scores=torch.cat([p.scores for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        phrases=[phrase for p in parts for phrase in p.phrases],
        num_unmatched=sum(p.num_unmatched for p in parts),
        masks=None if any(p.masks is None for p in parts) else torch.cat([p.masks for p in parts]),
    )


# --- Grounding DINO and MM-Grounding-DINO ----------------------------------------------------
class GroundingDinoSpec(DetectorSpec):
    """Grounding DINO through transformers (``GroundingDetector``: the paper's rules).

    Args:
        model: ``grounding-dino-tiny`` (Swin-T, the paper's), ``grounding-dino-base`` (Swin-B),
            a hub id, a local directory, or ``tiny`` (random tiny model, demos and tests).
        download: fetch a missing hub model (offline: a WeightsError saying what to get).
    """

    family = "grounding_dino"

    def __init__(self, model: str = "grounding-dino-tiny", download: bool = True) -> None:
        self.model = model
        self.download = download

    def settings(self) -> dict[str, Any]:
        if self.model == TINY:  # the fingerprint of the plain ``detector: tiny`` string
            return {"name": TINY, "seed": 0}
        return model_directory_settings(self.model, self.download)[0]

    def _tiny(self, **kwargs: Any) -> nn.Module:
        from wsss_pl.labeling.tiny import tiny_detector

        return tiny_detector(**kwargs)

    def build(self, options: DetectorOptions) -> nn.Module:
        from wsss_pl.labeling.grounding import GroundingDetector

        kwargs = {
            "box_threshold": options.box_threshold,
            "text_threshold": options.text_threshold,
            "pad_to_canvas": options.pad_to_canvas,
            "caption_style": options.caption_style,
            "phrase_rule": options.phrase_rule,
            "image_resize": options.image_resize,
            "clip_boxes": options.clip_boxes,
            "batch_mode": options.batch_mode,
            "batch_size": options.batch_size,
        }
        if self.model == TINY:
            return self._tiny(**kwargs)
        directory = model_directory_settings(self.model, self.download)[1]
        return GroundingDetector.from_pretrained(directory, image_size=options.image_size, **kwargs)

    def input_size(self, height: int, width: int, options: DetectorOptions) -> tuple[int, int]:
        if self.model == TINY:  # tiny_detector's small input (see wsss_pl.labeling.tiny)
            return detector_input_size(height, width, 256, 427, options.image_resize)
        return detector_input_size(height, width, options.image_size, 1333, options.image_resize)


class MMGroundingDinoSpec(GroundingDinoSpec):
    """MM-Grounding-DINO (Zhao et al. 2024, OpenMMLab) through transformers'
    ``MMGroundingDinoForObjectDetection``, run by ``GroundingDetector`` with the same captions,
    phrase rules, thresholds and batching as Grounding DINO (same BERT text branch).

    Args:
        model: ``mm-grounding-dino-tiny`` (Swin-T, o365v1+goldg+v3det), a hub id, a local
            directory, or ``tiny`` (random tiny model, tests).
        download: fetch a missing hub model.
    """

    family = "mm_grounding_dino"

    def __init__(self, model: str = "mm-grounding-dino-tiny", download: bool = True) -> None:
        super().__init__(model, download)

    def settings(self) -> dict[str, Any]:
        if self.model == TINY:
            return {"name": "mm_grounding_dino_tiny", "seed": 0}
        return {"family": self.family, **model_directory_settings(self.model, self.download)[0]}

    def _tiny(self, **kwargs: Any) -> nn.Module:
        from wsss_pl.labeling.grounding import GroundingDetector
        from wsss_pl.labeling.tiny import tiny_mm_grounding_dino
        from wsss_pl.labeling.tokenizer import bert_tokenizer

        kwargs.setdefault("image_size", 256)
        kwargs.setdefault("max_size", 427)
        return GroundingDetector(tiny_mm_grounding_dino(), bert_tokenizer(), **kwargs)


# --- OWLv2 -----------------------------------------------------------------------------------
def class_queries(
    vocabulary: ClassVocabulary, names: list[str], template: str
) -> list[tuple[str, str, int]]:
    """(query text, phrase, class id) for every phrase of the image's classes, in class order:
    the class's prompt name, then its assist words (and exclusion phrases)."""
    from wsss_pl.labeling.prompt import class_phrases

    queries = []
    for name in names:
        label_id = vocabulary.label_id(name)
        for phrase in class_phrases(vocabulary, name, "prompt_names"):
            queries.append((template.format(phrase), phrase, label_id))
    return queries


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


# --- OmDet-Turbo ------------------------------------------------------------------------------
NEUTRAL_CLASS = "object"  # the class list of the zero images that fill a fixed batch


class OmDetTurboDetector(nn.Module):
    """Frozen OmDet-Turbo (transformers ``OmDetTurboForObjectDetection``) prompted with each
    image's class phrases (prompt names + assist words, one class each) and the processor's
    default task ``"Detect a, b, c."``.

    Boxes, scores and classes come from ``OmDetTurboProcessor.post_process_grounded_object_detection``
    itself (score threshold ``box_threshold``, class-wise NMS at ``nms_threshold``, boxes clipped
    to the image), run on each image's slice of the batch; ``num_unmatched`` is always 0.

    Batching: the model pads the class axis to the batch's longest class list, so in ``fixed``
    mode images are grouped by their number of phrases as well and every forward runs exactly
    ``batch_size`` images (zero images with the class list ``["object"]`` fill short batches).
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        box_threshold: float = 0.3,
        nms_threshold: float = 0.5,
        batch_mode: BatchMode = "fixed",
        batch_size: int = 4,
    ) -> None:
        super().__init__()
        check_batching(batch_mode, batch_size)
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.box_threshold = box_threshold
        self.nms_threshold = nms_threshold
        self.batch_mode: BatchMode = batch_mode
        self.batch_size = batch_size

    def train(self, mode: bool = True) -> OmDetTurboDetector:
        super().train(mode)
        self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_threshold(self, box_threshold: float, text_threshold: float | None = None) -> None:
        self.box_threshold = box_threshold

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
        queries = [class_queries(vocabulary, names, "{}") for names in present]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, q in enumerate(queries):
            if q:
                key = (len(q), i) if self.batch_mode == "per_image" else (len(q),)
                groups.setdefault(key if self.batch_mode != "free" else (0,), []).append(i)
        results = [Detections.empty(self.device) for _ in images]
        for group in groups.values():
            step = self.batch_size if self.batch_mode == "fixed" else len(group)
            for start in range(0, len(group), step):
                todo = group[start : start + step]
                for i, found in zip(todo, self._run(images, queries, todo, threshold), strict=True):
                    results[i] = found
        return results

    def _run(
        self,
        images: list[Tensor],
        queries: list[list[tuple[str, str, int]]],
        todo: list[int],
        threshold: float,
    ) -> list[Detections]:
        pixels = [images[i].to(self.device) for i in todo]
        texts = [[phrase for _, phrase, _ in queries[i]] for i in todo]
        fill = self.batch_size - len(todo) if self.batch_mode == "fixed" else 0
        if fill:
            pixels += [pixels[0].new_zeros(pixels[0].shape)] * fill
            texts += [[NEUTRAL_CLASS]] * fill
        inputs = self.processor(images=pixels, text=texts, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(next(self.model.parameters()).dtype)
        outputs = self.model(**inputs)
        found = []
        for k, i in enumerate(todo):
            row = type(outputs)(
                decoder_coord_logits=outputs.decoder_coord_logits[k : k + 1].float(),
                decoder_class_logits=outputs.decoder_class_logits[k : k + 1].float(),
                classes_structure=outputs.classes_structure[k : k + 1],
            )
            size = (int(images[i].shape[-2]), int(images[i].shape[-1]))
            (result,) = self.processor.post_process_grounded_object_detection(
                row, threshold=threshold, nms_threshold=self.nms_threshold, target_sizes=[size]
            )
            which = result["labels"].tolist()
            found.append(
                Detections(
                    boxes=result["boxes"].float(),
                    scores=result["scores"].float(),
                    labels=torch.tensor(
                        [queries[i][j][2] for j in which], dtype=torch.long, device=self.device
                    ),
                    phrases=[queries[i][j][1] for j in which],
                )
            )
        return found


class OmDetTurboSpec(DetectorSpec):
    """OmDet-Turbo (Zhao et al. 2024, real-time open-vocabulary detection) through transformers.

    Args:
        model: ``omdet-turbo`` (``omlab/omdet-turbo-swin-tiny-hf``), a hub id, a local directory,
            or ``tiny`` (random tiny model, tests).
        nms_threshold: class-wise NMS IoU of the processor's post-processing (its default 0.5).
        download: fetch a missing hub model.
    """

    family = "omdet_turbo"

    def __init__(
        self, model: str = "omdet-turbo", nms_threshold: float = 0.5, download: bool = True
    ) -> None:
        self.model = model
        self.nms_threshold = nms_threshold
        self.download = download

    def settings(self) -> dict[str, Any]:
        rules = {"nms_threshold": self.nms_threshold}
        if self.model == TINY:
            return {"name": "omdet_turbo_tiny", "seed": 0, **rules}
        weights = model_directory_settings(self.model, self.download)[0]
        return {"family": self.family, **weights, **rules}

    def build(self, options: DetectorOptions) -> nn.Module:
        kwargs = {
            "box_threshold": options.box_threshold,
            "nms_threshold": self.nms_threshold,
            "batch_mode": options.batch_mode,
            "batch_size": options.batch_size,
        }
        if self.model == TINY:
            from wsss_pl.labeling.tiny import tiny_omdet_turbo, tiny_omdet_turbo_processor

            return OmDetTurboDetector(tiny_omdet_turbo(), tiny_omdet_turbo_processor(), **kwargs)
        from transformers import OmDetTurboForObjectDetection, OmDetTurboProcessor

        directory = model_directory_settings(self.model, self.download)[1]
        try:
            model = OmDetTurboForObjectDetection.from_pretrained(directory)
            processor = OmDetTurboProcessor.from_pretrained(directory)
        except (OSError, pickle.UnpicklingError) as error:
            raise WeightsError(f"cannot load OmDet-Turbo from {directory!r}: {error}") from error
        return OmDetTurboDetector(model, processor, **kwargs)

    def input_size(self, height: int, width: int, options: DetectorOptions) -> tuple[int, int]:
        return (1, 1)  # every image is resized to the processor's fixed size


__all__ = [
    "Detections",
    "DetectorOptions",
    "DetectorSpec",
    "GroundingDinoSpec",
    "MMGroundingDinoSpec",
    "OwlV2Detector",
    "OmDetTurboDetector",
    "OmDetTurboSpec",
    "OwlV2Spec",
    "concat_detections",
]
