"""Shared checks for equivalence tests: are the reference outputs informative, and do two class
maps (or binary masks) agree except at near-ties?

Two float pipelines (PyTorch vs ONNX Runtime, batched vs single matrix products, another
attention kernel) give logits that differ in the last bits, so an exact arg-max comparison can
flip a pixel whose top-2 logits are (nearly) tied. ``compare_class_maps`` excuses exactly those
pixels: a pixel may differ only where the reference's margin (top-2 logit gap for a class map,
``|logit - threshold|`` for a binary mask) is below a stated ``tolerance``; every other differing
pixel counts. A comparison is only worth something when the reference is informative (most
margins far above the tolerance), which ``assert_informative_masks`` /
``assert_informative_class_map`` / ``assert_scores_spread`` check first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def _tensor(x: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(x) if isinstance(x, np.ndarray) else x.detach().cpu()


def top2_margin(logits: Tensor | np.ndarray, dim: int = 1) -> Tensor:
    """Gap between the largest and second-largest logit along ``dim`` (the class axis), float32,
    shape of ``logits`` without ``dim``: how far each pixel's arg-max is from a tie."""
    top2 = _tensor(logits).float().topk(2, dim=dim).values
    return top2.select(dim, 0) - top2.select(dim, 1)


def threshold_margin(logits: Tensor | np.ndarray, threshold: float = 0.0) -> Tensor:
    """``|logit - threshold|``: how far each pixel of a binary mask is from flipping."""
    return (_tensor(logits).float() - threshold).abs()


@dataclass(frozen=True)
class MapComparison:
    """Counts of a class-map comparison (see ``compare_class_maps``)."""

    pixels: int
    differing: int  # pixels whose class differs
    near_ties: int  # reference pixels with margin < tolerance (differing or not)
    unexcused: int  # differing pixels whose reference margin is >= tolerance

    @property
    def excused(self) -> int:
        return self.differing - self.unexcused


def compare_class_maps(
    got: Tensor | np.ndarray,
    expected: Tensor | np.ndarray,
    margin: Tensor | np.ndarray,
    tolerance: float,
) -> MapComparison:
    """Compare two class maps (or bool masks) of one shape, given the reference's per-pixel
    ``margin`` (``top2_margin`` / ``threshold_margin``, same shape). A pixel that differs is
    excused only when its margin is below ``tolerance``."""
    got, expected, margin = _tensor(got), _tensor(expected), _tensor(margin)
    assert got.shape == expected.shape == margin.shape, (got.shape, expected.shape, margin.shape)
    differs = got != expected
    tie = margin < tolerance
    return MapComparison(
        pixels=differs.numel(),
        differing=int(differs.sum()),
        near_ties=int(tie.sum()),
        unexcused=int((differs & ~tie).sum()),
    )


def assert_class_maps_match(
    got: Tensor | np.ndarray,
    expected: Tensor | np.ndarray,
    margin: Tensor | np.ndarray,
    tolerance: float,
    max_tie_fraction: float = 1e-2,
) -> MapComparison:
    """``compare_class_maps`` and assert: no differing pixel outside the near-ties, and near-ties
    are rare (at most ``max_tie_fraction`` of the pixels, so excusing them cannot hide much)."""
    result = compare_class_maps(got, expected, margin, tolerance)
    assert result.unexcused == 0, f"{result}: pixels differ where the margin is >= {tolerance}"
    assert result.near_ties <= max_tie_fraction * result.pixels, f"{result}: too many near-ties"
    return result


def box_region(box: Tensor, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns of the pixels whose centre lies in the xyxy ``box``, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)

    def span(low: float, high: float, size: int) -> slice:
        return slice(max(0, int(np.ceil(low - 0.5))), min(size, int(np.ceil(high - 0.5))))

    return span(y1, y2, height), span(x1, x2, width)


def assert_informative_masks(
    logits: Tensor,
    boxes: Tensor,
    threshold: float = 0.0,
    min_median: float = 1.0,
    coverage: tuple[float, float] = (0.02, 0.98),
) -> dict[str, float]:
    """Reference mask logits [N, H, W] for xyxy ``boxes`` [N, 4] are informative: median
    ``|logit - threshold|`` over all pixels > ``min_median``, and each mask covers between
    ``coverage`` of its box (neither nothing nor the whole box). Returns the measured numbers."""
    logits = _tensor(logits).float()
    margin = threshold_margin(logits, threshold)
    median = float(margin.median())
    assert median > min_median, f"median |logit - threshold| {median:.3g} <= {min_median}"
    fractions = []
    for mask, box in zip(logits > threshold, _tensor(boxes), strict=True):
        rows, cols = box_region(box, *mask.shape)
        fractions.append(float(mask[rows, cols].float().mean()))
    low, high = coverage
    assert all(low < f < high for f in fractions), f"mask coverage of its box: {fractions}"
    return {
        "median_margin": median,
        "near_threshold_fraction": float((margin < 0.1 * min_median).float().mean()),
        "min_coverage": min(fractions),
        "max_coverage": max(fractions),
    }


def assert_informative_class_map(
    logits: Tensor | np.ndarray, tolerance: float, min_classes: int = 2, dim: int = 1
) -> dict[str, float]:
    """Reference logits [B, C, H, W] (class axis ``dim``): the arg-max uses at least
    ``min_classes`` classes and the median top-2 margin is at least 100x ``tolerance`` (so the
    near-tie excuse covers few pixels)."""
    logits = _tensor(logits).float()
    classes = int(logits.argmax(dim).unique().numel())
    margin = top2_margin(logits, dim)
    median = float(margin.median())
    assert classes >= min_classes, f"only {classes} class(es) in the reference's arg-max"
    assert median >= 100 * tolerance, f"median top-2 margin {median:.3g} < 100 x {tolerance}"
    return {
        "classes": classes,
        "median_margin": median,
        "tie_fraction": float((margin < tolerance).float().mean()),
    }


def assert_scores_spread(
    scores: Tensor, threshold: float, min_each_side: int = 3, min_gap: float = 1e-3
) -> dict[str, float]:
    """Detector scores straddle ``threshold``: at least ``min_each_side`` strictly above and
    below it, none within ``min_gap`` of it, and a spread (max - min) over 0.1."""
    scores = _tensor(scores).float().flatten()
    above, below = int((scores > threshold).sum()), int((scores < threshold).sum())
    nearest = float((scores - threshold).abs().min())
    spread = float(scores.max() - scores.min())
    assert above >= min_each_side and below >= min_each_side, (above, below, threshold)
    assert nearest >= min_gap, f"a score lies {nearest:.2g} from the threshold {threshold}"
    assert spread > 0.1, f"scores spread over {spread:.3g} only"
    return {"above": above, "below": below, "nearest": nearest, "spread": spread}
