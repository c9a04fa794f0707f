"""Batch augmentation on the device, after the labels are known (DataModule.on_after_batch_transfer).

Training, per sample, in deeplab-pytorch's order (``libs/datasets/base.py``): random scale (a
factor drawn from a discrete set, the reference's ``SCALES``, or uniformly from a range), new size
``int(side * factor)``; image resized bilinearly, masks with PIL ``NEAREST``'s rule
(``resize_mask_nearest``); pad bottom/right to the crop (image with the mean colour of the model's input
convention, masks with 255); random crop; random horizontal flip. Images come out normalised with
``mean``/``std``. Evaluation: only normalisation, at full (padded) size.

Random draws come from one generator per rank (``seed``), or, when the batch carries
``aug_seed`` (``wsss_pl.data.samplers.GlobalBatchSampler``), from one generator per sample seeded
by its place in the global batch stream, so a sample is augmented the same on any GPU count.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss_pl.classes import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DeepLab-v2 / deeplab-pytorch's mean pixel (``IMAGE.MEAN``), RGB order, 0..255.
CAFFE_MEAN_RGB = (122.675, 116.669, 104.008)
# deeplab-pytorch's ``SCALES`` (Caffe DeepLab-v2's random scale list).
PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
MASK_KEYS = ("target", "gt")


class BatchAugment:
    """Paired (image, masks) augmentation of a collated batch, on whatever device it lives on.

    Args:
        crop_size: side of the square training crop (DeepLab-v2 on VOC: 321).
        scale_range: (min, max) of a uniformly drawn rescale factor; used when ``scales`` is None.
        flip: random horizontal flip with probability 0.5.
        mean, std: per-channel normalisation of images in [0, 1].
        scales: discrete rescale factors, one drawn uniformly per sample (the paper's recipe:
            ``PAPER_SCALES``); None draws from ``scale_range``.
        pad_rgb: the crop padding colour, RGB 0..255 before normalisation; None: ``mean`` (which
            normalises to 0). ``set_pad_rgb`` changes it (the data module sets the mean of the
            model's input convention, e.g. ``CAFFE_MEAN_RGB`` for Caffe-input DeepLab-v2).
    """

    def __init__(
        self,
        crop_size: int = 321,
        scale_range: Sequence[float] = (0.5, 1.5),
        flip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        scales: Sequence[float] | None = None,
        pad_rgb: Sequence[float] | None = None,
    ) -> None:
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(
                f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}"
            )
        if scales is not None and (not len(scales) or any(not float(f) > 0 for f in scales)):
            raise ValueError(f"scales must be a non-empty list of factors > 0, got {scales}")
        self.crop_size = crop_size
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.scales = [float(f) for f in scales] if scales is not None else None
        self.flip = flip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.set_pad_rgb(pad_rgb if pad_rgb is not None else [255.0 * m for m in mean])
        # Own RNG for scale / crop / flip, seeded per rank (``seed``): with one global seed
        # every DDP rank would draw the same augmentation for its j-th sample.
        self.generator = torch.Generator()

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def set_pad_rgb(self, pad_rgb: Sequence[float]) -> None:
        """Crop padding colour, RGB 0..255 (stored normalised: [1, 3, 1, 1])."""
        if len(pad_rgb) != 3:
            raise ValueError(f"pad colour must be 3 RGB values in 0..255, got {pad_rgb}")
        self.pad_rgb = tuple(float(v) for v in pad_rgb)
        colour = torch.tensor(self.pad_rgb, dtype=torch.float32).view(1, 3, 1, 1)
        self.pad_value = (colour / 255.0 - self.mean) / self.std
        self._stats.clear()

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:  # one host-to-device copy per device, not per batch
            self._stats[device] = (
                self.mean.to(device),
                self.std.to(device),
                self.pad_value.to(device),
            )
        return self._stats[device][:2]

    def _pad_value(self, device: torch.device) -> torch.Tensor:
        self._mean_std(device)
        return self._stats[device][2]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float32 [B, 3, H, W] normalised."""
        mean, std = self._mean_std(images.device)
        return (images.float() / 255.0 - mean) / std

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """float32 normalised [B, 3, H, W] -> uint8 [B, 3, H, W] (for visualisation)."""
        mean, std = self._mean_std(images.device)
        return ((images * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)

    def eval_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        batch["image"] = self.normalize(batch["image"])
        return batch

    def train_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Scale, crop and flip every sample of ``batch`` independently; returns the same dict,
        with ``aug_geometry`` float32 [B, 5] (CPU): per sample the y and x scale factors, the
        crop's top and left in the scaled image, and 1.0 if flipped (to map boxes for review)."""
        images, masks = [], {key: [] for key in MASK_KEYS}
        geometry: list[list[float]] = []
        seeds = batch["aug_seed"].tolist() if "aug_seed" in batch else None
        for i, (height, width) in enumerate(batch["size"].tolist()):
            image = batch["image"][i : i + 1, :, :height, :width]
            sample_masks = {key: batch[key][i : i + 1, :height, :width] for key in MASK_KEYS}
            generator = self.generator
            if seeds is not None:
                generator = torch.Generator()
                generator.manual_seed(int(seeds[i]))
            image, sample_masks = self._augment_one(image, sample_masks, generator, geometry)
            images.append(image)
            for key in MASK_KEYS:
                masks[key].append(sample_masks[key])
        batch["image"] = torch.cat(images)
        batch["aug_geometry"] = torch.tensor(geometry, dtype=torch.float32).reshape(-1, 5)
        for key in MASK_KEYS:
            batch[key] = torch.cat(masks[key])
        return batch

    def draw_scale(self, generator: torch.Generator) -> float:
        """One rescale factor: uniform over ``scales`` when set, else over ``scale_range``."""
        if self.scales is not None:
            return self.scales[int(torch.randint(len(self.scales), (), generator=generator))]
        low, high = self.scale_range
        return low + (high - low) * torch.rand((), generator=generator).item()

    def _augment_one(
        self,
        image: torch.Tensor,
        masks: dict[str, torch.Tensor],
        generator: torch.Generator,
        geometry: list[list[float]] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """image uint8 [1,3,h,w], masks uint8 [1,h,w] -> normalised crop [1,3,S,S], masks [1,S,S].

        ``geometry``, if given, gets [scale_y, scale_x, top, left, flipped] appended."""
        scale = self.draw_scale(generator)
        height, width = image.shape[-2:]
        # int() as the reference (``int(h * scale)``), at least one pixel.
        new_size = (max(1, int(height * scale)), max(1, int(width * scale)))
        image = F.interpolate(image.float(), size=new_size, mode="bilinear", align_corners=False)
        image = self.normalize(image.clamp(0, 255))
        masks = {key: resize_mask_nearest(m, new_size) for key, m in masks.items()}
        # Pad bottom/right to at least the crop: image with the pad colour, masks with ignore.
        pad_h = max(self.crop_size - new_size[0], 0)
        pad_w = max(self.crop_size - new_size[1], 0)
        if pad_h or pad_w:
            padded = self._pad_value(image.device).expand(
                1, 3, new_size[0] + pad_h, new_size[1] + pad_w
            )
            padded = padded.clone()
            padded[..., : new_size[0], : new_size[1]] = image
            image = padded
            masks = {
                k: F.pad(m, (0, pad_w, 0, pad_h), value=IGNORE_INDEX) for k, m in masks.items()
            }
        top = int(torch.randint(0, image.shape[-2] - self.crop_size + 1, (), generator=generator))
        left = int(torch.randint(0, image.shape[-1] - self.crop_size + 1, (), generator=generator))
        window = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
        image = image[..., window[0], window[1]]
        masks = {k: m[..., window[0], window[1]] for k, m in masks.items()}
        flipped = self.flip and torch.rand((), generator=generator).item() < 0.5
        if flipped:
            image = image.flip(-1)
            masks = {k: m.flip(-1) for k, m in masks.items()}
        if geometry is not None:
            geometry.append([new_size[0] / height, new_size[1] / width, top, left, float(flipped)])
        return image.contiguous(), {k: m.contiguous() for k, m in masks.items()}


def resize_mask_nearest(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """uint8 [N, h, w] -> uint8 [N, *size], bit for bit PIL ``Image.resize(NEAREST)``
    (see ``resize_labels_nearest``); the old ``F.interpolate(mode="nearest")`` samples
    ``floor(i * in / out)``, half a pixel off the bilinear image resize."""
    return resize_labels_nearest(mask, size).to(mask.dtype)


@functools.lru_cache(maxsize=4096)
def _pil_nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of ``n_out`` pixels, as PIL's ``ImagingScaleAffine`` picks it: the
    centre ``0.5 * s`` advanced by ``s = n_in / n_out`` per pixel by repeated float64
    addition, truncated. (The closed form ``floor((i + 0.5) * s)`` differs where the sum lands
    a rounding error below an integer, e.g. 500 -> 625 columns, pixel 7; ``nearest-exact`` in
    float32 differs elsewhere.)"""
    steps = np.full(n_out, n_in / n_out, dtype=np.float64)
    steps[0] *= 0.5
    return np.minimum(np.add.accumulate(steps).astype(np.int64), n_in - 1)


def resize_labels_nearest(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Labels [B, H, W] (any integer dtype) -> long [B, h, w], PIL ``Image.NEAREST``'s pixels.

    The rule of deeplab-pytorch's ``resize_labels`` (MSC label shrinking) and of its training
    augmentation's label resize; tested equal to PIL on odd sizes (tests/test_recipe.py).
    """
    height, width = labels.shape[-2:]
    rows = torch.from_numpy(_pil_nearest_index(int(height), int(size[0]))).to(labels.device)
    cols = torch.from_numpy(_pil_nearest_index(int(width), int(size[1]))).to(labels.device)
    return labels.long()[:, rows][:, :, cols]
