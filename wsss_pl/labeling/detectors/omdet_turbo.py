"""OmDet-Turbo (real-time open-vocabulary detection) through transformers: class phrases + a task."""

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

NEUTRAL_CLASS = "object"  # the class list of the zero images that fill a fixed batch


class OmDetTurboDetector(FrozenDetector):
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
        super().__init__(model, box_threshold, batch_mode, batch_size)
        self.processor = processor
        self.nms_threshold = nms_threshold

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


class OmDetTurboSpec(HubDetectorSpec):
    """OmDet-Turbo (Zhao et al. 2024, real-time open-vocabulary detection) through transformers.

    Args:
        model: ``omdet-turbo`` (``omlab/omdet-turbo-swin-tiny-hf``), a hub id, a local directory
            (``model_type: omdet-turbo``, loaded as ``OmDetTurboForObjectDetection``), or
            ``tiny`` (random tiny model, tests).
        nms_threshold: class-wise NMS IoU of the processor's post-processing (its default 0.5).
        download: fetch a missing hub model.
    """

    family = "omdet_turbo"
    hub_family = "omdet_turbo"
    detector_class = OmDetTurboDetector
    tiny_name = "omdet_turbo_tiny"

    def __init__(
        self, model: str = "omdet-turbo", nms_threshold: float = 0.5, download: bool = True
    ) -> None:
        self.model = model
        self.nms_threshold = nms_threshold
        self.download = download

    def rules(self) -> dict[str, Any]:
        return {"nms_threshold": self.nms_threshold}

    def detector_kwargs(self, options: DetectorOptions) -> dict[str, Any]:
        """``OmDetTurboDetector``'s keyword arguments from the labelling rules and this spec."""
        return {**super().detector_kwargs(options), "nms_threshold": self.nms_threshold}
