"""Merge instance masks of one image into one semantic label map.

Label convention: uint8 [H, W], 0 = background, 1..C = classes, 255 = ignore. Everything runs on the
device of the input tensors with whole-tensor operations (no per-pixel Python loops).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from wsss_pl.classes import IGNORE_INDEX

MergePolicy = Literal["paper", "score", "area"]
ConflictPolicy = Literal["keep", "ignore"]
MissingPolicy = Literal["leave", "ignore_background"]


def _paint_order(masks: torch.Tensor, scores: torch.Tensor, policy: MergePolicy) -> torch.Tensor:
    """Instance indices in painting order (last painted wins), long [N].

    Stable sorts keep detection order among ties, so ties fall back to "later wins" as in the paper.
    """
    n = masks.shape[0]
    if policy == "paper":
        return torch.arange(n, device=masks.device)
    if policy == "score":
        return torch.sort(scores, stable=True).indices  # ascending: most confident painted last
    if policy == "area":
        areas = masks.flatten(1).sum(dim=1)
        return torch.sort(areas, descending=True, stable=True).indices  # smallest painted last
    raise ValueError(f"unknown merge policy {policy!r}; choose 'paper', 'score' or 'area'")


def merge_instances(
    masks: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    policy: MergePolicy = "paper",
    conflict: ConflictPolicy = "keep",
) -> torch.Tensor:
    """Paint instance masks into one semantic map.

    Args:
        masks: bool [N, H, W], one mask per detected instance, in detection order.
        labels: long [N], class id 1..C (at most 254) of each instance.
        scores: float [N], detection confidence of each instance.
        policy: which instance owns a pixel covered by several masks:
            ``"paper"`` the later one in detection order (Sun et al. 2023), ``"score"`` the more
            confident one, ``"area"`` the smaller one (small objects on top of large ones).
        conflict: ``"keep"`` applies ``policy`` everywhere; ``"ignore"`` sets pixels claimed by
            instances of *different* classes to 255 (same-class overlaps keep their class).

    Returns:
        uint8 [H, W] on ``masks.device``; pixels covered by no mask are 0. N = 0 gives all zeros.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {tuple(masks.shape)}")
    n, height, width = masks.shape
    if labels.shape != (n,) or scores.shape != (n,):
        raise ValueError(
            f"labels and scores must be [N] = [{n}], got {tuple(labels.shape)} and "
            f"{tuple(scores.shape)}"
        )
    if conflict not in ("keep", "ignore"):
        raise ValueError(f"unknown conflict policy {conflict!r}; choose 'keep' or 'ignore'")
    device = masks.device
    if n == 0:
        return torch.zeros(height, width, dtype=torch.uint8, device=device)
    masks = masks.bool()
    labels = labels.to(device=device, dtype=torch.long)
    if int(labels.min()) < 1 or int(labels.max()) > 254:
        raise ValueError(f"instance labels must be class ids 1..254, got {labels.tolist()}")

    order = _paint_order(masks, scores.to(device), policy)
    # The winner of a pixel is the last mask in painting order that covers it: flip the ordered
    # stack and take the first True along dim 0 (argmax returns the first maximum).
    flipped = masks[order].flip(0).to(torch.uint8)
    winner = order[n - 1 - flipped.argmax(dim=0)]  # long [H, W]
    covered = masks.any(dim=0)
    label_u8 = labels.to(torch.uint8)
    merged = torch.where(
        covered, label_u8[winner], torch.zeros((), dtype=torch.uint8, device=device)
    )

    if conflict == "ignore":
        per_instance = label_u8.view(n, 1, 1)
        highest = torch.where(masks, per_instance, 0).amax(dim=0)
        lowest = torch.where(masks, per_instance, 255).amin(dim=0)
        merged[covered & (highest != lowest)] = IGNORE_INDEX
    return merged


def mark_missing_classes(
    label: torch.Tensor, missing: Sequence[int], policy: MissingPolicy
) -> torch.Tensor:
    """Handle prompted classes that got no box.

    Args:
        label: uint8 [H, W] merged map.
        missing: class ids (1..C) that the image-level label names but no detection matched.
        policy: ``"leave"`` returns ``label`` unchanged; ``"ignore_background"`` sets background
            pixels to 255 when ``missing`` is non-empty, because the missing object's pixels are
            somewhere in what is now background and must not be trained as background.

    Returns:
        uint8 [H, W] on ``label.device`` (a new tensor when changed, ``label`` itself otherwise).
    """
    if policy not in ("leave", "ignore_background"):
        raise ValueError(
            f"unknown missing-class policy {policy!r}; choose 'leave' or 'ignore_background'"
        )
    if policy == "leave" or len(missing) == 0:
        return label
    return label.masked_fill(label == 0, IGNORE_INDEX)
