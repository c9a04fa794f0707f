"""merge_instances / mark_missing_classes on hand-made overlapping masks."""

from __future__ import annotations

import pytest
import torch

from wsss_pl.labeling.merge import mark_missing_classes, merge_instances


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture
def overlapping() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8x8 image: big class-1 mask (rows 0-5, score .9), small class-2 mask overlapping it
    (rows 4-7, cols 0-3, score .5), class-1 sliver (row 5, cols 6-7, score .4) in the big one."""
    masks = torch.stack([_box(8, 8, 0, 6, 0, 8), _box(8, 8, 4, 8, 0, 4), _box(8, 8, 5, 6, 6, 8)])
    return masks, torch.tensor([1, 2, 1]), torch.tensor([0.9, 0.5, 0.4])


def _expected_paper() -> torch.Tensor:
    out = torch.zeros(8, 8, dtype=torch.uint8)
    out[0:6, :] = 1
    out[4:8, 0:4] = 2  # later mask wins the overlap
    return out


def test_paper_policy_later_detection_wins(overlapping) -> None:
    masks, labels, scores = overlapping
    merged = merge_instances(masks, labels, scores, policy="paper")
    assert merged.dtype == torch.uint8 and merged.shape == (8, 8)
    assert torch.equal(merged, _expected_paper())
    # Reversing the detection order flips the owner of the overlap.
    rev = merge_instances(masks.flip(0), labels.flip(0), scores.flip(0), policy="paper")
    assert (rev[4:6, 0:4] == 1).all() and (rev[6:8, 0:4] == 2).all()


def test_score_policy_more_confident_wins(overlapping) -> None:
    masks, labels, scores = overlapping
    merged = merge_instances(masks, labels, scores, policy="score")
    assert (merged[4:6, 0:4] == 1).all()  # score .9 beats .5
    assert (merged[6:8, 0:4] == 2).all()  # uncontested
    assert (merged[6:8, 4:8] == 0).all()
    swapped = merge_instances(masks, labels, torch.tensor([0.1, 0.5, 0.4]), policy="score")
    assert (swapped[4:6, 0:4] == 2).all()


def test_area_policy_smaller_on_top() -> None:
    big, small = _box(6, 6, 0, 6, 0, 6), _box(6, 6, 2, 4, 2, 4)
    # The small mask comes first and has the lower score: only "area" puts it on top.
    masks, labels, scores = (
        torch.stack([small, big]),
        torch.tensor([3, 1]),
        torch.tensor([0.2, 0.9]),
    )
    assert (merge_instances(masks, labels, scores, policy="paper")[2:4, 2:4] == 1).all()
    assert (merge_instances(masks, labels, scores, policy="score")[2:4, 2:4] == 1).all()
    merged = merge_instances(masks, labels, scores, policy="area")
    assert (merged[2:4, 2:4] == 3).all()
    assert int((merged == 1).sum()) == 36 - 4


def test_conflict_ignore_only_between_classes(overlapping) -> None:
    masks, labels, scores = overlapping
    merged = merge_instances(masks, labels, scores, policy="paper", conflict="ignore")
    expected = _expected_paper()
    expected[4:6, 0:4] = 255  # class 1 vs class 2
    # The sliver (class 1 inside class 1) is a same-class overlap and stays 1.
    assert torch.equal(merged, expected)
    assert (merged[5, 6:8] == 1).all()


def test_no_instances_gives_background() -> None:
    merged = merge_instances(
        torch.zeros(0, 5, 7, dtype=torch.bool),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0),
        policy="score",
        conflict="ignore",
    )
    assert merged.dtype == torch.uint8 and merged.shape == (5, 7) and not merged.any()


def test_device_and_input_dtypes(overlapping) -> None:
    masks, labels, scores = overlapping
    # uint8 masks and int32 labels are accepted; output stays on the input's device.
    merged = merge_instances(masks.to(torch.uint8), labels.int(), scores.double())
    assert merged.device == masks.device and torch.equal(merged, _expected_paper())
    if torch.cuda.is_available():
        on_gpu = merge_instances(masks.cuda(), labels.cuda(), scores.cuda(), policy="area")
        assert on_gpu.is_cuda
        assert torch.equal(on_gpu.cpu(), merge_instances(masks, labels, scores, policy="area"))


def test_matches_sequential_painting_on_random_masks() -> None:
    """Vectorised result == the literal 'paint in order, later overwrites' loop."""
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(12, 20, 30, generator=gen) > 0.6
    labels = torch.randint(1, 6, (12,), generator=gen)
    scores = torch.rand(12, generator=gen)
    for policy, order in (
        ("paper", torch.arange(12)),
        ("score", torch.sort(scores, stable=True).indices),
        ("area", torch.sort(masks.flatten(1).sum(1), descending=True, stable=True).indices),
    ):
        painted = torch.zeros(20, 30, dtype=torch.uint8)
        for i in order.tolist():
            painted[masks[i]] = int(labels[i])
        assert torch.equal(merge_instances(masks, labels, scores, policy=policy), painted), policy


def test_bad_inputs_raise() -> None:
    masks = torch.ones(2, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="1..254"):
        merge_instances(masks, torch.tensor([0, 1]), torch.ones(2))
    with pytest.raises(ValueError, match=r"\[N\]"):
        merge_instances(masks, torch.tensor([1]), torch.ones(2))
    with pytest.raises(ValueError, match="merge policy"):
        merge_instances(masks, torch.tensor([1, 2]), torch.ones(2), policy="biggest")  # type: ignore[arg-type]


def test_mark_missing_classes() -> None:
    label = torch.tensor([[0, 1], [255, 0]], dtype=torch.uint8)
    assert mark_missing_classes(label, [], "ignore_background") is label
    assert mark_missing_classes(label, [3], "leave") is label
    marked = mark_missing_classes(label, [3], "ignore_background")
    assert torch.equal(marked, torch.tensor([[255, 1], [255, 255]], dtype=torch.uint8))
    assert label[0, 0] == 0  # input not modified
    with pytest.raises(ValueError, match="missing-class policy"):
        mark_missing_classes(label, [3], "drop")  # type: ignore[arg-type]
