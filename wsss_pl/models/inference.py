"""Test-time inference: multi-scale and horizontal-flip averaging of class probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Tensor:
    """Class probabilities at input resolution, averaged over scales and flips.

    For every scale the batch is resized (bilinear, align_corners=False; scale 1.0 is not
    resampled), run through ``model`` (with its mirror image in the same batch when ``flip``),
    the logits are upsampled to (H, W) bilinearly, mirrored back, and turned into softmax
    probabilities. The result is the arithmetic mean of those ``len(scales) * (1 + flip)``
    probability maps: probabilities, not logits and not log-probabilities (despite the name,
    kept for the call sites); ``argmax(dim=1)`` gives the prediction, and with
    ``scales=(1.0,), flip=False`` it is exactly ``softmax(upsample(model(images)))``.

    Args:
        model: maps float [B, 3, h, w] to logits [B, C, h', w'] at any h', w'; put it in eval
            mode first (this function does not change its mode). Runs under ``torch.no_grad``.
        images: float [B, 3, H, W], normalised as the model expects.
        scales: positive resize factors of the input.
        flip: also average the horizontally mirrored input.

    Returns:
        float32 [B, C, H, W], non-negative, summing to 1 over C at every pixel.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive factors, got {scales!r}")
    batch, (height, width) = images.shape[0], images.shape[-2:]

    total: Tensor | None = None
    for scale in scales:
        if scale == 1.0:
            scaled = images
        else:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        # One forward for both the image and its mirror: twice the batch, half the calls.
        inputs = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
        logits = F.interpolate(
            model(inputs).float(), size=(height, width), mode="bilinear", align_corners=False
        )
        probs = logits.softmax(dim=1)
        if flip:
            probs = probs[:batch] + probs[batch:].flip(-1)
        total = probs if total is None else total + probs
    assert total is not None
    return total / (len(scales) * (2 if flip else 1))


@torch.no_grad()
def predict_msc_max(
    model: nn.Module,
    images: Tensor,
    scales: Sequence[float] = (1.0, 0.75, 0.5),
    flip: bool = False,
) -> Tensor:
    """Class probabilities from DeepLab-v2's MSC test: max-fused logits, as its released MSC model
    and deeplab-pytorch's ``MSC`` in eval mode compute them.

    The logits of every scale are resized to the scale-1.0 logits and max-fused there
    (``wsss_pl.models.msc.msc_forward``), then upsampled bilinearly to (H, W) and softmaxed.
    With ``flip`` the probabilities of the image and of its mirror are averaged (DeepLab-v2 itself
    does not flip).

    Args:
        model: float [B, 3, h, w] -> logits; in eval mode.
        images: float [B, 3, H, W], normalised as the model expects.
        scales: resize factors, 1.0 included.

    Returns:
        float32 [B, C, H, W] probabilities.
    """
    from wsss_pl.models.msc import msc_forward

    batch, (height, width) = images.shape[0], images.shape[-2:]
    inputs = torch.cat([images, images.flip(-1)]) if flip else images
    fused = msc_forward(model, inputs, scales)[-1]
    probs = F.interpolate(
        fused.float(), size=(height, width), mode="bilinear", align_corners=False
    ).softmax(dim=1)
    if flip:
        probs = (probs[:batch] + probs[batch:].flip(-1)) / 2
    return probs
