"""SAM 3 as a labeller: one text prompt per present class, its masks merged into the pseudo-label.

SAM 3 (Meta, Nov 2025; transformers ``Sam3Model`` + ``Sam3Processor``) segments every instance
of a text concept ("promptable concept segmentation"). Here it is a detector that also makes the
masks (``DetectorSpec.provides_masks``): ``PseudoLabeler`` runs no SAM after it and merges its
masks with the usual merge policies (``paper``: later wins, ``score``, ``area``).

Per image, each phrase of each present class (its prompt name and, with ``assist_words``, its
assist words) is one text prompt; the image encoder runs once per image. ``output``:

- ``instance``: the instances of ``Sam3Processor.post_process_instance_segmentation``: score
  ``sigmoid(logit) * sigmoid(presence)`` above ``box_threshold``, masks at ``mask_threshold`` of
  the bilinearly upsampled mask probabilities, boxes in pixels; query order.
- ``semantic``: one mask per prompt, ``post_process_semantic_segmentation`` (SAM 3's semantic
  head) at ``mask_threshold``, kept when the prompt's best instance score passes
  ``box_threshold`` (the mask gets that score and its bounding box); empty masks are dropped.

Batching (``wsss_pl.labeling.invariance``): ``fixed``: the image encoder runs at exactly
``batch_size`` images and the prompt decoder at exactly ``batch_size`` (image, prompt) rows,
filled with zero images / a copy of the last row whose outputs are dropped; every prompt padded to
32 tokens (the processor's length). ``per_image``: one image, one prompt per call. ``free``: as
they come. ``num_unmatched`` is 0: every instance answers a prompt of the image's classes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from wsss_pl.classes import ClassVocabulary
from wsss_pl.errors import WeightsError
from wsss_pl.labeling.detectors.base import (
    TINY,
    Detections,
    DetectorOptions,
    FrozenDetector,
    HubDetectorSpec,
    class_queries,
    concat_detections,
)
from wsss_pl.labeling.invariance import BatchMode

Sam3Output = Literal["instance", "semantic"]
SAM3_TEXT_TOKENS = 32  # Sam3Processor pads every prompt to 32 tokens
SAM3_HUB_ID = "facebook/sam3"


VISION_FIELDS = ("last_hidden_state", "fpn_hidden_states", "fpn_position_encoding")
OUTPUT_FIELDS = ("pred_masks", "pred_boxes", "pred_logits", "presence_logits", "semantic_seg")


def take_rows(output: Any, index: Tensor, keys: tuple[str, ...]) -> Any:
    """The rows ``index`` (long [R]) of the batch-first tensors ``keys`` of a transformers
    ModelOutput (tuples of tensors too), as a ModelOutput of the same type."""
    fields = {}
    for key in keys:
        value = output.get(key)
        if isinstance(value, Tensor):
            fields[key] = value.index_select(0, index)
        elif isinstance(value, tuple) and value and all(isinstance(v, Tensor) for v in value):
            fields[key] = tuple(v.index_select(0, index) for v in value)
    return type(output)(**fields)


class Sam3Detector(FrozenDetector):
    """Frozen SAM 3 prompted with each image's class phrases; returns ``Detections`` with masks
    (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        box_threshold: float = 0.3,
        mask_threshold: float = 0.5,
        output: Sam3Output = "instance",
        assist_words: bool = True,
        batch_mode: BatchMode = "fixed",
        batch_size: int = 4,
    ) -> None:
        super().__init__(model, box_threshold, batch_mode, batch_size)
        if output not in ("instance", "semantic"):
            raise ValueError(f"SAM 3 output must be 'instance' or 'semantic', got {output!r}")
        self.processor = processor
        self.mask_threshold = mask_threshold
        self.output: Sam3Output = output
        self.assist_words = assist_words

    def prompts(self, vocabulary: ClassVocabulary, names: list[str]) -> list[tuple[str, int]]:
        """(phrase, class id) of every prompt of an image with classes ``names``."""
        queries = class_queries(vocabulary, names, "{}")
        if not self.assist_words:
            firsts = {vocabulary.label_id(n): vocabulary.prompt_name(n) for n in names}
            return [(phrase, label) for label, phrase in firsts.items()]
        return [(phrase, label) for _, phrase, label in queries]

    def pixel_values(self, images: list[Tensor]) -> Tensor:
        """float [B, 3, S, S]: the image processor's output for uint8 [3, H_i, W_i] images."""
        inputs = self.processor.image_processor(
            images=[image.to(self.device) for image in images], return_tensors="pt"
        )
        return inputs["pixel_values"].to(self.device, next(self.model.parameters()).dtype)

    def _step(self, count: int) -> int:
        if self.batch_mode == "fixed":
            return self.batch_size
        return 1 if self.batch_mode == "per_image" else max(count, 1)

    @torch.no_grad()
    def forward(
        self,
        images: list[Tensor],
        present: list[list[str]],
        vocabulary: ClassVocabulary,
        box_threshold: float | None = None,
    ) -> list[Detections]:
        """B images, their class names -> B ``Detections`` with ``masks`` bool [N, H_i, W_i]."""
        threshold = self.call_threshold(images, present, box_threshold)
        prompts = [self.prompts(vocabulary, names) for names in present]
        todo = [i for i, p in enumerate(prompts) if p]
        parts: list[list[Detections]] = [[] for _ in images]
        step = self._step(len(todo))
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            pixels = self.pixel_values([images[i] for i in chunk])
            if self.batch_mode == "fixed" and len(chunk) < self.batch_size:
                fill = pixels.new_zeros(self.batch_size - len(chunk), *pixels.shape[1:])
                pixels = torch.cat([pixels, fill])
            vision = self.model.get_vision_features(pixel_values=pixels)
            rows = [(k, phrase, label) for k, i in enumerate(chunk) for phrase, label in prompts[i]]
            for found_k, found in self._decode(vision, rows, [images[i] for i in chunk], threshold):
                parts[chunk[found_k]].append(found)
        return [
            concat_detections(p) if p else _empty(self.device, images[i])
            for i, p in enumerate(parts)
        ]

    def _decode(
        self,
        vision: Any,
        rows: list[tuple[int, str, int]],
        images: list[Tensor],
        threshold: float,
    ) -> list[tuple[int, Detections]]:
        """Run the prompt decoder on (image row, phrase, class) rows; detections per row."""
        results = []
        step = self._step(len(rows))
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            padded = chunk + [chunk[-1]] * (step - len(chunk) if self.batch_mode == "fixed" else 0)
            text = self.processor.tokenizer(
                [phrase for _, phrase, _ in padded],
                padding="max_length",
                max_length=SAM3_TEXT_TOKENS,
                truncation=True,
                return_tensors="pt",
            )
            index = torch.tensor([k for k, _, _ in padded], device=self.device)
            outputs = self.model(
                vision_embeds=take_rows(vision, index, VISION_FIELDS),
                input_ids=text["input_ids"].to(self.device),
                attention_mask=text["attention_mask"].to(self.device),
            )
            for r, (k, phrase, label) in enumerate(chunk):
                row = take_rows(outputs, torch.tensor([r], device=self.device), OUTPUT_FIELDS)
                size = tuple(int(s) for s in images[k].shape[-2:])
                results.append((k, self._select(row, size, phrase, label, threshold)))
        return results

    def _select(
        self, row: Any, size: tuple[int, int], phrase: str, label: int, threshold: float
    ) -> Detections:
        """One prompt's detections through the processor's own post-processing."""
        (found,) = self.processor.post_process_instance_segmentation(
            row, threshold=threshold, mask_threshold=self.mask_threshold, target_sizes=[size]
        )
        scores = found["scores"].float()
        if self.output == "instance":
            masks, boxes = found["masks"].bool(), found["boxes"].float()
        else:
            if scores.numel() == 0:
                return _empty(self.device, None, size)
            (semantic,) = self.processor.post_process_semantic_segmentation(
                row, target_sizes=[size], threshold=self.mask_threshold
            )
            masks = semantic.bool()[None]
            if not bool(masks.any()):
                return _empty(self.device, None, size)
            scores = scores.max()[None]
            boxes = mask_box(masks[0])[None]
        return Detections(
            boxes=boxes,
            scores=scores,
            labels=torch.full((len(scores),), label, dtype=torch.long, device=scores.device),
            phrases=[phrase] * len(scores),
            masks=masks,
        )


def mask_box(mask: Tensor) -> Tensor:
    """float [4] xyxy pixel box (exclusive right / bottom edges) of a non-empty bool [H, W] mask."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return torch.stack([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]).float()


def _empty(
    device: torch.device, image: Tensor | None, size: tuple[int, int] | None = None
) -> Detections:
    found = Detections.empty(device)
    height, width = size if size is not None else (int(image.shape[-2]), int(image.shape[-1]))
    found.masks = torch.zeros(0, height, width, dtype=torch.bool, device=device)
    return found


class Sam3Spec(HubDetectorSpec):
    """SAM 3 text-prompted segmentation as the whole labeller (no separate SAM runs).

    Args:
        model: a local directory of ``facebook/sam3`` (config.json with ``model_type: sam3``,
            model.safetensors, tokenizer and processor files; loaded as ``Sam3Model``), ``sam3`` (the registry name: the copy in the HF hub cache), or
            ``tiny`` (random tiny model, tests). The checkpoint is gated on the Hugging Face hub:
            accept its licence at https://huggingface.co/facebook/sam3, then
            ``hf download facebook/sam3 --local-dir DIR`` and pass DIR.
        download: with ``sam3``, try the hub when the cache lacks it (needs ``hf auth login``).
        output: ``instance`` (instance masks, merged by the merge policy) or ``semantic`` (SAM
            3's semantic head, one mask per prompt).
        mask_threshold: probability threshold of the masks (the processor's default 0.5).
        assist_words: also prompt each class's assist words (as the paper's captions do).
    """

    provides_masks = True
    family = "sam3"
    hub_family = "sam3"
    detector_class = Sam3Detector
    tiny_name = "sam3_tiny"

    def __init__(
        self,
        model: str = "tiny",
        output: Sam3Output = "instance",
        mask_threshold: float = 0.5,
        assist_words: bool = True,
        download: bool = False,
    ) -> None:
        if output not in ("instance", "semantic"):
            raise ValueError(f"SAM 3 output must be 'instance' or 'semantic', got {output!r}")
        self.download = download
        self.model = model
        self.output: Sam3Output = output
        self.mask_threshold = mask_threshold
        self.assist_words = assist_words

    def directory(self) -> str:
        """The checked local SAM 3 folder (``model_folders.sam3_folder``)."""
        from wsss_pl.labeling.model_folders import check_family, sam3_folder

        directory = sam3_folder(self.model, self.download)
        check_family(directory, self.hub_family)
        return str(directory)

    def rules(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "mask_threshold": self.mask_threshold,
            "assist_words": self.assist_words,
        }

    def settings(self) -> dict[str, Any]:
        rules = self.rules()
        if self.model == TINY:
            return {"name": self.tiny_name, "seed": 0, **rules}
        from wsss_pl.weights import checkpoint_fingerprint

        directory = Path(self.directory())
        weights = directory / "model.safetensors"
        if not weights.is_file():
            raise WeightsError(f"SAM 3 directory {directory} has no model.safetensors")
        config = hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
        return {
            "family": self.family,
            "sha256": checkpoint_fingerprint(weights),
            "config_sha256": config,
            **rules,
        }

    def detector_kwargs(self, options: DetectorOptions) -> dict[str, Any]:
        """``Sam3Detector``'s keyword arguments from the labelling rules and this spec."""
        return {
            **super().detector_kwargs(options),
            "mask_threshold": self.mask_threshold,
            "output": self.output,
            "assist_words": self.assist_words,
        }


__all__ = ["Sam3Detector", "Sam3Spec", "mask_box", "take_rows"]
