"""The training loss of one optimiser step, normalised as deeplab-pytorch normalises it, on any
number of ranks.

deeplab-pytorch (the paper's DeepLab-v2 recipe) takes a step from ``ITER_SIZE`` = 2 batches of 5
images: per batch and per output (each MSC scale and the max fusion) the cross-entropy averaged
over the batch's non-ignored pixels, summed over outputs, divided by ``ITER_SIZE``, gradients
accumulated. Here the step's ``G`` images (the global batch, spread over the ranks) fall into
``groups`` consecutive groups by their position in the global batch (group of position ``p``:
``p * groups // G``), and

    loss = sum over outputs o and groups g of  CE_sum[o, g] / valid_pixels[o, g]  / groups

where both sums run over all ranks. Each rank computes its images' per-(o, g) sums, one
all-reduce of the (detached) pixel counts and loss sums gives the global denominators, and the
rank back-propagates ``world_size x`` its share (DDP averages gradients over ranks), so the
gradient is the one-process gradient of the whole step, whatever the split. ``groups = 1`` is one
mean over all pixels of the step (Caffe's ``SoftmaxWithLoss`` ``VALID`` normalisation over one
batch of 10); ``groups = N`` is any split into N forward batches averaged (Caffe's ``iter_size``).
A group or output without a valid pixel adds 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_pl.classes import IGNORE_INDEX
from wsss_pl.models.msc import resize_labels_nearest


def group_pixel_sums(
    outputs: Sequence[Tensor], target: Tensor, group_of: Tensor, groups: int
) -> tuple[Tensor, Tensor]:
    """Per output and group: the cross-entropy summed over valid pixels, and their count.

    Args:
        outputs: logits float [B, K, h_o, w_o] per output; the labels are shrunk to each size by
            PIL ``NEAREST``'s rule (identity at the label size).
        target: labels [B, H, W] (255 ignored).
        group_of: int64 [B], the group 0..groups-1 of every image.
        groups: number of groups.

    Returns:
        ``(sums, counts)``, float32 [O, groups] each; ``sums`` carries the graph.
    """
    sums, counts = [], []
    for logits in outputs:
        labels = resize_labels_nearest(target, logits.shape[-2:])
        pixel = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
        per_image = pixel.flatten(1).sum(1)
        valid = (labels != IGNORE_INDEX).flatten(1).sum(1).to(per_image.dtype)
        zeros = per_image.new_zeros(groups)
        sums.append(zeros.index_add(0, group_of, per_image))
        counts.append(zeros.index_add(0, group_of, valid))
    return torch.stack(sums), torch.stack(counts)


def step_loss(
    outputs: Sequence[Tensor],
    target: Tensor,
    positions: Tensor,
    global_batch_size: int,
    groups: int = 1,
    world_size: int = 1,
    all_reduce_sum: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """This rank's loss to back-propagate and the step's loss value (see the module docstring).

    Args:
        outputs: logits per output, float [B, K, h_o, w_o].
        target: labels [B, H, W] of this rank's images.
        positions: int64 [B], each image's position 0..global_batch_size-1 in the step.
        global_batch_size: images of the step over all ranks (``G``).
        groups: deeplab-pytorch's ``ITER_SIZE`` (2 in the paper's recipe).
        world_size: ranks whose gradients DDP averages; the loss is scaled by it.
        all_reduce_sum: sums a tensor over the ranks (None: one rank).

    Returns:
        ``(loss, value)``: the scalar to back-propagate on this rank, and the detached loss of
        the whole step (the same on every rank).
    """
    if groups < 1 or global_batch_size < 1:
        raise ValueError(
            f"groups and global_batch_size must be >= 1, got {groups}, {global_batch_size}"
        )
    group_of = (positions.to(target.device).long() * groups) // global_batch_size
    sums, counts = group_pixel_sums(outputs, target, group_of, groups)
    stats = torch.cat([counts, sums.detach()])
    if all_reduce_sum is not None:
        stats = all_reduce_sum(stats)
    total_counts, total_sums = stats.split(counts.shape[0])
    denominator = total_counts.clamp_min(1.0)
    loss = (sums / denominator).sum() / groups * world_size
    value = (total_sums / denominator).sum() / groups
    return loss, value
