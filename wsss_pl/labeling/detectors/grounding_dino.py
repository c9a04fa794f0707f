"""Grounding DINO (Swin-T, the paper's; Swin-B) and MM-Grounding-DINO as ``DetectorSpec``s; both
run through ``GroundingDetector`` (``wsss_pl.labeling.detectors.grounding``) with the paper's
captions, phrase rules, thresholds and batching."""

from __future__ import annotations

from typing import Any

from torch import nn

from wsss_pl.labeling.detectors.base import TINY, TINY_BUILD, DetectorOptions, HubDetectorSpec
from wsss_pl.labeling.rules import detector_input_size


class GroundingDinoSpec(HubDetectorSpec):
    """Grounding DINO through transformers (``GroundingDetector``: the paper's rules).

    Args:
        model: ``grounding-dino-tiny`` (Swin-T, the paper's), ``grounding-dino-base`` (Swin-B),
            a hub id, a local directory (``model_type: grounding-dino``, loaded as
            ``GroundingDinoForObjectDetection``), or ``tiny`` (random tiny model, demos and tests).
        download: fetch a missing hub model (offline: a WeightsError saying what to get).
    """

    family = "grounding_dino"
    hub_family = "grounding_dino"

    def __init__(self, model: str = "grounding-dino-tiny", download: bool = True) -> None:
        self.model = model
        self.download = download

    def settings(self) -> dict[str, Any]:
        if self.model == TINY:  # the fingerprint of the plain ``detector: tiny`` string
            return {"name": TINY, "seed": 0}
        return self.weights_settings()

    def build(self, options: DetectorOptions) -> nn.Module:
        from wsss_pl.labeling.detectors.grounding import GroundingDetector
        from wsss_pl.labeling.detectors.tokenizer import bert_tokenizer

        kwargs = self.detector_kwargs(options)
        if self.model == TINY:
            raise ValueError(TINY_BUILD)
        directory = self.directory()
        model, _ = self.load()  # the family's class: MM-Grounding-DINO keeps its bias and scale
        tokenizer = bert_tokenizer(directory)  # the folder's, else the shipped vocabulary
        return GroundingDetector(model, tokenizer, image_size=options.image_size, **kwargs)

    def detector_kwargs(self, options: DetectorOptions) -> dict[str, Any]:
        """``GroundingDetector``'s keyword arguments from the labelling rules (no image size)."""
        return {
            **super().detector_kwargs(options),
            "text_threshold": options.text_threshold,
            "pad_to_canvas": options.pad_to_canvas,
            "caption_style": options.caption_style,
            "phrase_rule": options.phrase_rule,
            "image_resize": options.image_resize,
            "clip_boxes": options.clip_boxes,
        }

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
            directory (``model_type: mm-grounding-dino``, loaded as
            ``MMGroundingDinoForObjectDetection``), or ``tiny`` (random tiny model, tests).
        download: fetch a missing hub model.
    """

    family = "mm_grounding_dino"
    hub_family = "mm_grounding_dino"

    def __init__(self, model: str = "mm-grounding-dino-tiny", download: bool = True) -> None:
        super().__init__(model, download)

    def settings(self) -> dict[str, Any]:
        if self.model == TINY:
            return {"name": "mm_grounding_dino_tiny", "seed": 0}
        return {"family": self.family, **self.weights_settings()}
