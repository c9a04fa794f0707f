"""Batching samples of different sizes: pad images with 0 and label maps with 255.

Batch (a dict; ``collate_samples`` output, CPU until Lightning moves it to the device):
    id:          list[str]
    image:       uint8 [B, 3, H, W], padded with 0 to the largest H and W of the batch
    labels:      float32 [B, C] multi-hot image-level labels
    gt:          uint8 [B, H, W], padded with 255 (all 255 for samples without ground truth)
    has_gt:      bool [B]
    target:      uint8 [B, H, W] training label, padded with 255 (255 where still to be labelled)
    needs_label: bool [B], True where the label source must make the target on the device
    padding:     bool [B], True for repeats that only even out DDP evaluation shards (not counted)
    size:        int64 [B, 2] original (height, width) of every sample
    aug_seed, batch_position: int64 [B], only from ``GlobalBatchSampler``: each sample's
                 augmentation seed and its position 0..G-1 in the step's global batch
    num_skipped: int, samples dropped because they were unreadable (skip_corrupt)
    num_labelled, num_unmatched_boxes, num_missing_classes: int, the online labeler's counts
"""

from __future__ import annotations

from typing import Any

import torch

from wsss_pl.classes import IGNORE_INDEX
from wsss_pl.data.base import Sample


def _pad_stack(
    tensors: list[torch.Tensor | None], height: int, width: int, fill: int
) -> torch.Tensor:
    """Stack [..., h, w] uint8 tensors into [B, ..., height, width]; None becomes all ``fill``."""
    reference = next(t for t in tensors if t is not None)
    out = torch.full((len(tensors), *reference.shape[:-2], height, width), fill, dtype=torch.uint8)
    for i, tensor in enumerate(tensors):
        if tensor is not None:
            out[i, ..., : tensor.shape[-2], : tensor.shape[-1]] = tensor
    return out


def collate_samples(samples: list[Sample | None]) -> dict[str, Any]:
    """Collate dataset samples into one padded batch (see the module docstring)."""
    kept = [s for s in samples if s is not None]
    if not kept:
        raise RuntimeError("every sample of a batch was unreadable; see the skip warnings above")
    height = max(s["image"].shape[1] for s in kept)
    width = max(s["image"].shape[2] for s in kept)
    has_gt = [s["gt"] is not None for s in kept]
    gts = [s["gt"] for s in kept]
    targets = [s["target"] for s in kept]
    batch: dict[str, Any] = {
        "id": [s["id"] for s in kept],
        "image": _pad_stack([s["image"] for s in kept], height, width, 0),
        "labels": torch.stack([s["labels"] for s in kept]),
        "has_gt": torch.tensor(has_gt, dtype=torch.bool),
        "needs_label": torch.tensor([t is None for t in targets], dtype=torch.bool),
        "padding": torch.tensor([bool(s.get("padding", False)) for s in kept], dtype=torch.bool),
        "size": torch.tensor([list(s["image"].shape[1:]) for s in kept], dtype=torch.int64),
        "num_skipped": len(samples) - len(kept),
        # Filled by an online label source on the device; logged (summed) by the module.
        "num_labelled": 0,
        "num_unmatched_boxes": 0,
        "num_missing_classes": 0,
    }
    for key in ("aug_seed", "batch_position"):
        if all(key in s for s in kept):
            batch[key] = torch.tensor([int(s[key]) for s in kept], dtype=torch.int64)  # type: ignore[literal-required]
    empty = torch.full((len(kept), height, width), IGNORE_INDEX, dtype=torch.uint8)
    batch["gt"] = _pad_stack(gts, height, width, IGNORE_INDEX) if any(has_gt) else empty
    batch["target"] = (
        _pad_stack(targets, height, width, IGNORE_INDEX)
        if any(t is not None for t in targets)
        else empty.clone()
    )
    return batch
