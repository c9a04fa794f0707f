"""Multi-scale (MSC) training as in DeepLab-v2's baseline (the released MSC prototxt and
kazuto1011/deeplab-pytorch's ``MSC`` + ``resize_labels``).

The net sees the batch at every scale (1, 0.75, 0.5); the logits of the smaller scales are
resized bilinearly to the scale-1 logits and max-fused pixel-wise. Each scale's logits and the
fusion get a cross-entropy loss against the labels shrunk by nearest neighbour to that logit size
(losses are summed), so the loss lives at 1/8 resolution like the paper's, not at label size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_pl.classes import IGNORE_INDEX
from wsss_pl.data.augment import resize_labels_nearest

__all__ = ["check_scales", "msc_forward", "msc_loss", "resize_labels_nearest"]


def check_scales(scales: Sequence[float]) -> list[float]:
    """Validated MSC scales: positive, scale 1.0 included (the fusion size), as floats."""
    scales = [float(s) for s in scales]
    if not scales or any(s <= 0 for s in scales) or 1.0 not in scales:
        raise ValueError(
            f"msc_scales must be positive factors including 1.0 (e.g. [1.0, 0.75, 0.5]), "
            f"got {scales!r}"
        )
    return scales


def msc_forward(net: nn.Module, images: Tensor, scales: Sequence[float]) -> list[Tensor]:
    """Logits of every scale, then their max fusion.

    Args:
        net: float [B, 3, H, W] -> logits [B, K, h, w].
        images: float [B, 3, H, W].
        scales: resize factors including 1.0; a scale s resizes the input with
            ``F.interpolate(scale_factor=s, mode="bilinear", align_corners=False)``
            (deeplab-pytorch's call), 1.0 is not resampled.

    Returns:
        ``len(scales) + 1`` float tensors: logits [B, K, h_s, w_s] per scale in the given order,
        then the pixel-wise max over all scales after bilinear resizing to scale 1.0's size.
    """
    scales = check_scales(scales)
    outputs = []
    for scale in scales:
        scaled = (
            images
            if scale == 1.0
            else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        )
        outputs.append(net(scaled))
    size = outputs[scales.index(1.0)].shape[-2:]
    resized = [
        out
        if out.shape[-2:] == size
        else F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        for out in outputs
    ]
    return [*outputs, torch.stack(resized).amax(dim=0)]


def msc_loss(outputs: Sequence[Tensor], target: Tensor) -> Tensor:
    """Sum over outputs of cross-entropy (ignore 255) against ``target`` [B, H, W] shrunk by
    nearest neighbour to each output's size; an output without a valid label pixel adds 0
    (keeping the graph, so DDP gradients stay in step)."""
    total = outputs[0].new_zeros(())
    for logits in outputs:
        labels = resize_labels_nearest(target, logits.shape[-2:])
        if bool((labels == IGNORE_INDEX).all()):
            total = total + logits.sum() * 0.0
        else:
            total = total + F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
    return total
