"""SAM-family mask decoders over an image's boxes in chunks of a fixed size.

Every box of an image used to go to the mask decoder in one call, so its memory grew with the box
count without bound (ViT-B on a CPU: about 30 MB per box; a crowded COCO image with assist words
reaches hundreds of boxes). ``decode_in_chunks`` runs the decoder on at most ``chunk_size`` boxes
at a time; with ``fixed`` (``batch_mode: fixed``) every call has exactly ``chunk_size`` rows, a
short chunk filled with copies of its last box whose outputs are dropped. Kernels are chosen by
batch size (a box's mask logits differ in the last bits between calls of 1 and 4 rows, measured on
a CPU with SAM's decoder), so fixed chunks make a box's mask bit-identical whatever the number of
boxes of its image and its position among them.

``PaddingCounts`` counts the rows each model ran and how many of them were padding, for the
label pass's report (``wsss_pl.labeling.label_pass``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_DECODER_BATCH_SIZE = 8


@dataclass
class PaddingCounts:
    """Rows one model ran (``rows``, padding included) and how many were padding."""

    rows: int = 0
    padding: int = 0

    def add(self, real: int, run: int) -> None:
        """One forward of ``run`` rows of which ``real`` were real."""
        self.rows += run
        self.padding += run - real

    @property
    def share(self) -> float:
        """Padding rows / all rows (0 when nothing ran)."""
        return self.padding / self.rows if self.rows else 0.0


def check_chunk_size(chunk_size: object, key: str = "sam_decoder_batch_size") -> int:
    """``chunk_size`` as an int >= 1, or a ValueError naming ``key``."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{key} must be an integer >= 1, got {chunk_size!r}")
    return chunk_size


def decode_in_chunks(
    boxes: Tensor,
    chunk_size: int,
    fixed: bool,
    decode: Callable[[Tensor], tuple[Tensor, Tensor]],
    counts: PaddingCounts | None = None,
) -> tuple[Tensor, Tensor]:
    """``decode`` over ``boxes`` [N, 4] (N >= 1) at most ``chunk_size`` rows at a time.

    Args:
        boxes: float [N, 4] prompts in whatever frame ``decode`` expects.
        chunk_size: rows per decoder call.
        fixed: every call at exactly ``chunk_size`` rows (a short chunk padded with copies of
            its last box; their outputs are dropped).
        decode: one decoder call, boxes [R, 4] -> (masks [R, ...], scores [R]).
        counts: incremented with the rows run and the padding rows.

    Returns:
        (masks [N, ...], scores [N]) in box order.
    """
    chunk_size = check_chunk_size(chunk_size)
    if boxes.dim() != 2 or boxes.shape[0] == 0:
        raise ValueError(f"boxes must be [N, 4] with N >= 1, got {tuple(boxes.shape)}")
    masks: list[Tensor] = []
    scores: list[Tensor] = []
    for start in range(0, boxes.shape[0], chunk_size):
        chunk = boxes[start : start + chunk_size]
        real = chunk.shape[0]
        if fixed and real < chunk_size:
            chunk = torch.cat([chunk, chunk[-1:].expand(chunk_size - real, -1)])
        chunk_masks, chunk_scores = decode(chunk)
        if counts is not None:
            counts.add(real, chunk.shape[0])
        masks.append(chunk_masks[:real])
        scores.append(chunk_scores[:real])
    if len(masks) == 1:
        return masks[0], scores[0]
    return torch.cat(masks), torch.cat(scores)
