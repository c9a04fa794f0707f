"""Batch augmentation on the device, after the labels are known (DataModule.on_after_batch_transfer).

Training: per sample random scale, pad (image with the mean colour, labels with 255), random crop,
random horizontal flip; then ImageNet-style normalisation of the whole batch. Evaluation: only
normalisation, at full (padded) size. Masks are resized with nearest neighbour, never blended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from wsss_pl.classes import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_KEYS = ("target", "gt")


class BatchAugment:
    """Paired (image, masks) augmentation of a collated batch, on whatever device it lives on.

    Args:
        crop_size: side of the square training crop (DeepLab-v2 on VOC: 321).
        scale_range: (min, max) random rescale factor of each training sample.
        flip: random horizontal flip with probability 0.5.
        mean, std: per-channel normalisation of images in [0, 1].
    """

    def __init__(
        self,
        crop_size: int = 321,
        scale_range: Sequence[float] = (0.5, 1.5),
        flip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(
                f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}"
            )
        self.crop_size = crop_size
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip = flip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        # Own RNG for scale / crop / flip, seeded per rank (``seed``): with one global seed
        # every DDP rank would draw the same augmentation for its j-th sample.
        self.generator = torch.Generator()

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:  # one host-to-device copy per device, not per batch
            self._stats[device] = (self.mean.to(device), self.std.to(device))
        return self._stats[device]

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
        """Scale, crop and flip every sample of ``batch`` independently; returns the same dict."""
        images, masks = [], {key: [] for key in MASK_KEYS}
        for i, (height, width) in enumerate(batch["size"].tolist()):
            image = batch["image"][i : i + 1, :, :height, :width]
            sample_masks = {key: batch[key][i : i + 1, :height, :width] for key in MASK_KEYS}
            image, sample_masks = self._augment_one(image, sample_masks)
            images.append(image)
            for key in MASK_KEYS:
                masks[key].append(sample_masks[key])
        batch["image"] = torch.cat(images)
        for key in MASK_KEYS:
            batch[key] = torch.cat(masks[key])
        return batch

    def _augment_one(
        self, image: torch.Tensor, masks: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """image uint8 [1,3,h,w], masks uint8 [1,h,w] -> normalised crop [1,3,S,S], masks [1,S,S]."""
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand((), generator=self.generator).item()
        height, width = image.shape[-2:]
        new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = F.interpolate(image.float(), size=new_size, mode="bilinear", align_corners=False)
        image = self.normalize(image.clamp(0, 255))
        masks = {
            key: F.interpolate(m[:, None].float(), size=new_size, mode="nearest")[:, 0].to(
                torch.uint8
            )
            for key, m in masks.items()
        }
        # Pad to at least the crop: image with 0 (the mean after normalisation), masks with ignore.
        pad_h = max(self.crop_size - new_size[0], 0)
        pad_w = max(self.crop_size - new_size[1], 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            masks = {
                k: F.pad(m, (0, pad_w, 0, pad_h), value=IGNORE_INDEX) for k, m in masks.items()
            }
        top = int(
            torch.randint(0, image.shape[-2] - self.crop_size + 1, (), generator=self.generator)
        )
        left = int(
            torch.randint(0, image.shape[-1] - self.crop_size + 1, (), generator=self.generator)
        )
        window = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
        image = image[..., window[0], window[1]]
        masks = {k: m[..., window[0], window[1]] for k, m in masks.items()}
        if self.flip and torch.rand((), generator=self.generator).item() < 0.5:
            image = image.flip(-1)
            masks = {k: m.flip(-1) for k, m in masks.items()}
        return image.contiguous(), {k: m.contiguous() for k, m in masks.items()}
