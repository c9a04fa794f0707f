"""SAM 2.1 (transformers ``Sam2Model``) and SAM 3's box-promptable tracker (``Sam3TrackerModel``)
as box -> mask segmenters, both run by ``Sam2Segmenter``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wsss_pl.errors import WeightsError
from wsss_pl.labeling.segmenters.base import TINY, TINY_BUILD, ImageResize, SegmenterSpec
from wsss_pl.labeling.segmenters.chunks import (
    DEFAULT_DECODER_BATCH_SIZE,
    PaddingCounts,
    decode_in_chunks,
)
from wsss_pl.labeling.segmenters.sam import empty_results, fill_batch

SAM2_IMAGE_SIZE = 1024


class Sam2Segmenter(nn.Module):
    """Frozen transformers ``Sam2Model`` turning xyxy pixel boxes into one mask each.

    The image processor (``Sam2Processor``'s: resize to 1024x1024, normalise) runs on the
    segmenter's device; the image encoder on ``encoder_batch_size`` images at a time; then the
    prompt encoder + mask decoder on each image's boxes, ``decoder_batch_size`` boxes per call
    (exactly that many with ``fixed_batch``: ``wsss_pl.labeling.segmenters.chunks``;
    ``multimask_output=False``) and the processor's ``post_process_masks`` (upsample to the
    image, threshold). ``padding`` counts rows as ``SamSegmenter.padding``.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        encoder_batch_size: int = 4,
        image_size: int = SAM2_IMAGE_SIZE,
    ) -> None:
        super().__init__()
        if encoder_batch_size < 1:
            raise ValueError(f"encoder_batch_size must be >= 1, got {encoder_batch_size}")
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.encoder_batch_size = encoder_batch_size
        self.image_size = image_size  # the square input boxes are scaled to (SAM 3 tracker: 1008)
        self.fixed_batch = False  # as SamSegmenter.fixed_batch: pad encoder and decoder calls
        self.decoder_batch_size = DEFAULT_DECODER_BATCH_SIZE
        self.padding = {"sam_encoder": PaddingCounts(), "sam_decoder": PaddingCounts()}

    def train(self, mode: bool = True) -> Sam2Segmenter:
        super().train(mode)
        self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, images: list[Tensor], boxes: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Same contract as ``SamSegmenter.forward``."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box tensors")
        results = empty_results(images, self.device)
        todo = [i for i, b in enumerate(boxes) if b.numel() > 0]
        dtype = next(self.model.parameters()).dtype
        for start in range(0, len(todo), self.encoder_batch_size):
            batch = todo[start : start + self.encoder_batch_size]
            pixels = self.processor.image_processor(
                images=[images[i].to(self.device) for i in batch], return_tensors="pt"
            )["pixel_values"].to(self.device, dtype)
            pixels = fill_batch(pixels, self.encoder_batch_size, self.fixed_batch)
            self.padding["sam_encoder"].add(len(batch), pixels.shape[0])
            embeddings = self.model.get_image_embeddings(pixels)
            for k, i in enumerate(batch):
                results[i] = self._decode([e[k : k + 1] for e in embeddings], boxes[i], images[i])
        return results

    def _decode(
        self, embeddings: list[Tensor], boxes: Tensor, image: Tensor
    ) -> tuple[Tensor, Tensor]:
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [N, 4] xyxy, got {tuple(boxes.shape)}")
        height, width = int(image.shape[-2]), int(image.shape[-1])
        scale = torch.tensor(
            [self.image_size / width, self.image_size / height] * 2, device=self.device
        )
        prompt = boxes.to(self.device, torch.float32) * scale  # [N, 4] at S x S

        def decode(chunk: Tensor) -> tuple[Tensor, Tensor]:  # [R, 4] -> [R, H, W], [R]
            out = self.model(
                image_embeddings=embeddings, input_boxes=chunk[None], multimask_output=False
            )
            masks = self.processor.post_process_masks(out.pred_masks, [[height, width]])[0]
            return masks[:, 0].to(self.device, torch.bool), out.iou_scores[0, :, 0].float()

        return decode_in_chunks(
            prompt, self.decoder_batch_size, self.fixed_batch, decode, self.padding["sam_decoder"]
        )


def sam2_processor(directory: str | None = None) -> Any:
    """The model directory's ``Sam2Processor``, or the default one (1024 px, ImageNet stats)."""
    from transformers import Sam2ImageProcessor, Sam2Processor

    if directory is not None and (Path(directory) / "preprocessor_config.json").is_file():
        return Sam2Processor.from_pretrained(directory)
    return Sam2Processor(image_processor=Sam2ImageProcessor())


class Sam2Spec(SegmenterSpec):
    """SAM 2.1 image predictor from transformers (``Sam2Model``).

    Args:
        model: a hub id (``facebook/sam2.1-hiera-large``, ``...-base-plus``, ``-small``,
            ``-tiny``), a local directory with ``config.json`` (``model_type: sam2``) and
            weights (loaded as ``Sam2Model``), or ``tiny``.
        download: fetch a hub model when missing (offline: a WeightsError saying what to get).
    """

    def __init__(self, model: str = "facebook/sam2.1-hiera-large", download: bool = True) -> None:
        self.model = model
        self.download = download

    def _directory(self) -> str:
        from wsss_pl.labeling.model_folders import check_family
        from wsss_pl.weights import resolve_hub_model

        directory = resolve_hub_model(self.model, download=self.download)
        check_family(directory, "sam2")
        return directory

    def settings(self) -> dict[str, Any]:
        if self.model == TINY:
            return {"type": "sam2_tiny", "seed": 0}
        return {"type": "sam2", **folder_fingerprint(Path(self._directory()), "SAM 2")}

    def build(self, encoder_batch_size: int = 4, image_resize: ImageResize = "tensor") -> nn.Module:
        """``image_resize`` is not used: SAM 2 always uses its processor's resize."""
        if self.model == TINY:
            raise ValueError(TINY_BUILD)
        from wsss_pl.labeling.model_folders import load_folder

        directory = self._directory()
        model, _ = load_folder(directory, "sam2")
        return Sam2Segmenter(model, sam2_processor(directory), encoder_batch_size)


def folder_fingerprint(directory: Path, title: str) -> dict[str, str]:
    """sha256 of a hub folder's weights file and of its config.json (cache fingerprint)."""
    import hashlib

    from wsss_pl.weights import checkpoint_fingerprint

    weights = next(
        (
            directory / f
            for f in ("model.safetensors", "pytorch_model.bin")
            if (directory / f).is_file()
        ),
        None,
    )
    if weights is None:
        raise WeightsError(f"{title} directory {directory} has no model.safetensors")
    config = hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
    return {"sha256": checkpoint_fingerprint(weights), "config_sha256": config}


# --- SAM 3 tracker (transformers): SAM 3's box-promptable branch --------------------------------
class Sam3TrackerSpec(SegmenterSpec):
    """SAM 3's promptable visual segmentation branch (transformers ``Sam3TrackerModel``, the
    SAM 2-style prompt encoder + mask decoder on SAM 3's image encoder): refines another
    detector's boxes into masks exactly as ``Sam2Spec`` does (``Sam2Segmenter``, the processor's
    1008 px square).

    Args:
        model: a local ``facebook/sam3`` directory (``model_type: sam3``, or a saved
            ``Sam3TrackerModel``'s ``sam3_tracker``; loaded as ``Sam3TrackerModel``), ``sam3``
            (the HF cache copy; gated: see ``wsss_pl.labeling.detectors.sam3.Sam3Spec``), or
            ``tiny`` (random tiny model, tests).
        download: with ``sam3``, try the hub when the cache lacks it.
    """

    def __init__(self, model: str = "sam3", download: bool = False) -> None:
        self.model = model
        self.download = download

    def _directory(self) -> str:
        from wsss_pl.labeling.model_folders import check_family, sam3_folder

        directory = sam3_folder(self.model, self.download)
        check_family(directory, "sam3_tracker")
        return str(directory)

    def settings(self) -> dict[str, Any]:
        if self.model == TINY:
            return {"type": "sam3_tracker_tiny", "seed": 0}
        directory = Path(self._directory())
        if not (directory / "model.safetensors").is_file():
            raise WeightsError(f"SAM 3 directory {directory} has no model.safetensors")
        return {"type": "sam3_tracker", **folder_fingerprint(directory, "SAM 3")}

    def build(self, encoder_batch_size: int = 4, image_resize: ImageResize = "tensor") -> nn.Module:
        """``image_resize`` is not used: the processor's resize."""
        if self.model == TINY:
            raise ValueError(TINY_BUILD)
        from wsss_pl.labeling.model_folders import load_folder

        model, processor = load_folder(self._directory(), "sam3_tracker")
        return Sam2Segmenter(model, processor, encoder_batch_size, image_size=processor.target_size)
