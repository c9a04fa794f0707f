"""SAM masks for detector boxes, an image's boxes in fixed-size decoder chunks (frozen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor, nn

from wsss_pl.errors import WeightsError
from wsss_pl.labeling.segmenters.base import TINY, TINY_BUILD, ImageResize, SegmenterSpec
from wsss_pl.labeling.segmenters.chunks import (
    DEFAULT_DECODER_BATCH_SIZE,
    PaddingCounts,
    check_chunk_size,
    decode_in_chunks,
)
from wsss_pl.labeling.segmenters.sam_fast import SamAttention, compile_blocks, use_attention
from wsss_pl.weights import load_state_dict, resolve_checkpoint

SamType = Literal["vit_h", "vit_l", "vit_b"]


class SamSegmenter(nn.Module):
    """Frozen segment-anything ``Sam`` turning xyxy pixel boxes into one binary mask each.

    Images are resized so the longest side is ``img_size`` (1024), normalised and padded by
    ``Sam.preprocess``; the resize (``image_resize``) is either ``pil``, exactly what
    ``SamPredictor.set_image`` does (``ResizeLongestSide.apply_image``: PIL bilinear on the uint8
    image, on the CPU; the released code's input), or ``tensor``, a float antialiased bilinear
    resize on the image's device (what ``apply_image_torch`` does; 0.16 % of mask pixels differed
    from ``pil`` on a random tiny model). The image encoder runs on ``encoder_batch_size`` images at
    a time; then each image's boxes go through the prompt encoder + mask decoder
    ``decoder_batch_size`` at a time (``multimask_output=False``, as in the paper; one call for
    all boxes in the released code, so memory grew with the box count) and their masks are
    upsampled to its original size and thresholded at ``sam.mask_threshold``.

    Args:
        sam: a segment-anything model (set to eval and frozen here).
        encoder_batch_size: images per image-encoder call (ViT-H at 1024 px: about 4 GB
            activations per image in fp32). 1 makes every embedding bit-for-bit that of a batch
            of one (batched matrix products can differ in the last bits).
        image_resize: ``pil`` (as ``SamPredictor.set_image``) or ``tensor`` (see above).
        attention: image-encoder attention, ``original`` or ``sdpa`` (``wsss_pl.labeling.segmenters.sam_fast``:
            same weights and math, fused kernel).
        compile: ``torch.compile`` the image-encoder blocks (first call per shape compiles).
        fixed_batch: every image-encoder forward runs at exactly ``encoder_batch_size`` images,
            a short batch filled with zero images (kernels are chosen by batch size, so an
            embedding is then bit-identical whatever its batch mates or position), and every
            decoder call at exactly ``decoder_batch_size`` boxes (copies of the last box fill a
            short chunk: a mask is bit-identical whatever its image's box count).
        decoder_batch_size: boxes per mask-decoder call (``wsss_pl.labeling.segmenters.chunks``).

    Attributes:
        padding: rows run and padding rows of the image encoder (``sam_encoder``) and the mask
            decoder (``sam_decoder``), summed over calls (the label pass reports them).
    """

    def __init__(
        self,
        sam: Sam,
        encoder_batch_size: int = 4,
        image_resize: Literal["pil", "tensor"] = "tensor",
        attention: SamAttention = "original",
        compile: bool = False,
        fixed_batch: bool = False,
        decoder_batch_size: int = DEFAULT_DECODER_BATCH_SIZE,
    ) -> None:
        super().__init__()
        if encoder_batch_size < 1:
            raise ValueError(f"encoder_batch_size must be >= 1, got {encoder_batch_size}")
        if image_resize not in ("pil", "tensor"):
            raise ValueError(f"image_resize must be 'pil' or 'tensor', got {image_resize!r}")
        self.sam = sam.eval().requires_grad_(False)
        use_attention(self.sam.image_encoder, attention)
        if compile:
            compile_blocks(self.sam.image_encoder)
        self.encoder_batch_size = encoder_batch_size
        self.fixed_batch = fixed_batch
        self.decoder_batch_size = check_chunk_size(decoder_batch_size, "decoder_batch_size")
        self.padding = {"sam_encoder": PaddingCounts(), "sam_decoder": PaddingCounts()}
        self.image_resize = image_resize
        self.resize = ResizeLongestSide(sam.image_encoder.img_size)

    @classmethod
    def from_checkpoint(
        cls,
        model_type: SamType,
        checkpoint: str | Path,
        encoder_batch_size: int = 4,
        image_resize: Literal["pil", "tensor"] = "tensor",
        **kwargs: Any,
    ) -> SamSegmenter:
        """Build SAM ``model_type`` with segment-anything's builder and load ``checkpoint``.

        The state dict is read with ``weights_only=True`` onto the CPU; move the module after.
        ``kwargs`` go to ``SamSegmenter`` (``attention``, ``compile``).
        """
        if model_type not in ("vit_h", "vit_l", "vit_b"):
            raise ValueError(f"model_type must be vit_h, vit_l or vit_b, got {model_type!r}")
        from wsss_pl.labeling.model_folders import check_sam_path, check_sam_state

        path = resolve_checkpoint(checkpoint)
        check_sam_path(path, "sam")
        if not path.is_file():
            raise WeightsError(
                f"SAM checkpoint not found: {path}; download sam_{model_type}_*.pth from "
                "https://github.com/facebookresearch/segment-anything#model-checkpoints"
            )
        state = load_state_dict(path)  # weights_only; a corrupt file is a WeightsError naming it
        check_sam_state(path, state, "sam", model_type)  # another family or ViT size: one line
        sam = sam_model_registry[model_type](checkpoint=None)
        try:
            sam.load_state_dict(state)
        except (RuntimeError, ValueError) as error:
            raise WeightsError(
                f"cannot load SAM {model_type} from {path} (wrong model_type or corrupt file): "
                f"{str(error)[:300]}"
            ) from error
        return cls(sam, encoder_batch_size=encoder_batch_size, image_resize=image_resize, **kwargs)

    def train(self, mode: bool = True) -> SamSegmenter:
        super().train(mode)
        self.sam.eval()  # frozen even inside a training LightningModule
        return self

    @property
    def device(self) -> torch.device:
        return self.sam.pixel_mean.device

    def _input_image(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """uint8 [3, H, W] -> float [3, 1024, 1024] normalised and padded, and its resized (h, w)."""
        height, width = image.shape[-2:]
        size = self.resize.get_preprocess_shape(height, width, self.resize.target_length)
        if self.image_resize == "pil":  # SamPredictor.set_image's own steps
            array = image.detach().to("cpu", torch.uint8).permute(1, 2, 0).numpy()
            resized = torch.as_tensor(self.resize.apply_image(array), device=self.device)
            pixels = resized.permute(2, 0, 1).contiguous()[None].to(torch.float32)
            return self.sam.preprocess(pixels)[0], size
        # ResizeLongestSide.apply_image_torch reads the size from dims 0 and 1 of a BCHW
        # tensor (segment-anything 1.0), so its resize is done here with the same settings.
        pixels = image.to(self.device, torch.float32)[None]
        pixels = F.interpolate(pixels, size, mode="bilinear", align_corners=False, antialias=True)
        return self.sam.preprocess(pixels)[0], size

    @torch.no_grad()
    def forward(self, images: list[Tensor], boxes: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Masks of every box.

        Args:
            images: B uint8 tensors [3, H_i, W_i] (RGB).
            boxes: B float tensors [N_i, 4], xyxy in pixels of the matching image.

        Returns:
            Per image ``(masks, scores)``: masks bool [N_i, H_i, W_i] in box order, scores float32
            [N_i] (SAM's predicted IoU). An image without boxes gets empty tensors and is not
            encoded.
        """
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box tensors")
        results = empty_results(images, self.device)
        todo = [i for i, b in enumerate(boxes) if b.numel() > 0]
        dtype = self.sam.pixel_mean.dtype
        for start in range(0, len(todo), self.encoder_batch_size):
            batch = todo[start : start + self.encoder_batch_size]
            inputs = [self._input_image(images[i]) for i in batch]
            pixels = torch.stack([x for x, _ in inputs]).to(dtype)
            pixels = fill_batch(pixels, self.encoder_batch_size, self.fixed_batch)
            self.padding["sam_encoder"].add(len(batch), pixels.shape[0])
            encoded = self._encode(pixels)
            for i, decoder_inputs, (_, input_size) in zip(
                batch, encoded[: len(batch)], inputs, strict=True
            ):
                results[i] = self._decode(decoder_inputs, boxes[i], input_size, images[i])
        return results

    def _encode(self, pixels: Tensor) -> list[dict[str, Any]]:
        """The image encoder on a batch [B, 3, S, S]: per image, the mask decoder's image inputs
        (here ``image_embeddings`` [1, C, h, w]; variants such as HQ-SAM add their own)."""
        return [{"image_embeddings": e[None]} for e in self.sam.image_encoder(pixels)]

    def _decode(
        self,
        decoder_inputs: dict[str, Any],
        boxes: Tensor,
        input_size: tuple[int, int],
        image: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Masks of all boxes [N, 4] of one image's encoder output, ``decoder_batch_size``
        boxes per decoder call (exactly that many with ``fixed_batch``)."""
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [N, 4] xyxy, got {tuple(boxes.shape)}")
        original_size = (int(image.shape[-2]), int(image.shape[-1]))
        prompt = self.resize.apply_boxes_torch(boxes.to(self.device), original_size)
        prompt = prompt.to(self.sam.pixel_mean.dtype)
        return decode_in_chunks(
            prompt,
            self.decoder_batch_size,
            self.fixed_batch,
            lambda chunk: self._decode_chunk(decoder_inputs, chunk, input_size, original_size),
            self.padding["sam_decoder"],
        )

    def _decode_chunk(
        self,
        decoder_inputs: dict[str, Any],
        prompt: Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """One prompt-encoder + mask-decoder call on boxes [R, 4] in SAM's 1024 px input frame:
        (masks bool [R, H, W], scores float32 [R])."""
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=prompt, masks=None)
        low_res, iou = self.sam.mask_decoder(
            **decoder_inputs,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        logits = self.sam.postprocess_masks(low_res.float(), input_size, original_size)
        return logits[:, 0] > self.sam.mask_threshold, iou[:, 0].float()


def fill_batch(pixels: Tensor, batch_size: int, fixed: bool) -> Tensor:
    """``pixels`` [B, ...] padded with zero rows to ``batch_size`` when ``fixed`` (the padding's
    outputs are dropped: callers keep the first B)."""
    if not fixed or pixels.shape[0] >= batch_size:
        return pixels
    return torch.cat([pixels, pixels.new_zeros(batch_size - pixels.shape[0], *pixels.shape[1:])])


def empty_results(images: list[Tensor], device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """Per image ``(masks bool [0, H_i, W_i], scores float32 [0])``: the answer for no boxes."""
    return [
        (
            torch.zeros(0, *image.shape[-2:], dtype=torch.bool, device=device),
            torch.zeros(0, device=device),
        )
        for image in images
    ]


class SamSpec(SegmenterSpec):
    """segment-anything SAM (the default).

    Args:
        model_type: ``vit_h`` (paper), ``vit_l`` or ``vit_b``.
        checkpoint: registry name (``sam_vit_h``...), a file path, or ``tiny`` (random, tests).
        download: fetch a registry checkpoint (with its checksum) when missing.
    """

    def __init__(
        self,
        model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h",
        checkpoint: str = "sam_vit_h",
        download: bool = True,
    ) -> None:
        self.model_type = model_type
        self.checkpoint = checkpoint
        self.download = download

    def _path(self) -> Path:
        from wsss_pl.labeling.model_folders import check_sam_path
        from wsss_pl.weights import resolve_checkpoint

        path = resolve_checkpoint(self.checkpoint, download=self.download)
        check_sam_path(path, "sam")  # a hub folder given as the checkpoint: say which spec
        return path

    def settings(self) -> dict[str, Any]:
        if self.checkpoint == TINY:
            return {"type": TINY, "seed": 0}
        from wsss_pl.weights import checkpoint_fingerprint

        return {"type": self.model_type, "sha256": checkpoint_fingerprint(self._path())}

    def build(self, encoder_batch_size: int = 4, image_resize: ImageResize = "tensor") -> nn.Module:
        options = {"encoder_batch_size": encoder_batch_size, "image_resize": image_resize}
        if self.checkpoint == TINY:
            raise ValueError(TINY_BUILD)
        return SamSegmenter.from_checkpoint(self.model_type, self._path(), **options)
