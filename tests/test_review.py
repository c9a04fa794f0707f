"""Review composites: the README's panels, empty panels that say why, the detector's boxes on
the label panel (moved into the training crop), and W&B rows of one size."""

from __future__ import annotations

import numpy as np
import torch

from wsss_pl.classes import VOC
from wsss_pl.data.augment import BatchAugment
from wsss_pl.review import EMPTY, GAP, MIN_PANEL_WIDTH, PALETTE, TITLE_HEIGHT, compose
from wsss_pl.review_callback import _augmented_boxes, _same_size, review_row

NAMES = ["background", *VOC.class_names]
DOG = 12


def _row(label: np.ndarray | None, boxes: list[dict] | None = None) -> dict:
    rng = np.random.default_rng(0)
    gt = np.zeros((40, 60), np.uint8)
    gt[10:30, 10:40] = DOG
    return review_row(
        "a",
        rng.integers(0, 256, (40, 60, 3), dtype=np.uint8),
        label,
        gt,
        np.zeros_like(gt),
        {"label": "no training label: validation images are not labelled"},
        boxes,
    )


def _panel(picture: np.ndarray, index: int, height: int = 40, width: int = 60) -> np.ndarray:
    scale = -(-MIN_PANEL_WIDTH // width)
    x = index * (width * scale + GAP)
    return picture[TITLE_HEIGHT : TITLE_HEIGHT + height * scale, x : x + width * scale]


def test_five_panels_in_the_readme_order_and_an_empty_panel_says_why() -> None:
    row = _row(None)
    assert [k for k in row if k not in ("id", "notes")] == [
        "image", "label", "ground_truth", "prediction", "error",
    ]  # fmt: skip
    picture = compose(row, NAMES)
    scale = -(-MIN_PANEL_WIDTH // 60)
    assert picture.shape[1] == 5 * 60 * scale + 4 * GAP
    label_panel = _panel(picture, 1)
    grey = (label_panel == EMPTY).all(axis=2)
    dark = label_panel.sum(axis=2) < 200
    assert grey.mean() > 0.8 and dark.sum() > 100  # grey, with the note written in it
    error_panel = _panel(picture, 4)  # prediction all background vs a dog: white where wrong
    assert (error_panel[20 * scale, 20 * scale] == 255).all()
    assert (error_panel[2 * scale, 2 * scale] == 0).all()


def test_boxes_are_drawn_on_the_label_panel_only_when_given() -> None:
    label = np.zeros((40, 60), np.uint8)
    box = {"box": [10.0, 10.0, 40.0, 30.0], "label": DOG, "class": "dog", "score": 0.87}
    with_boxes = compose(_row(label, [box]), NAMES)
    without = compose(_row(label), NAMES)
    dog = PALETTE[DOG]
    scale = -(-MIN_PANEL_WIDTH // 60)
    for picture, expected in ((with_boxes, True), (without, False)):
        panel = _panel(picture, 1)
        edge = panel[20 * scale, 10 * scale - 2 : 10 * scale + 3]  # the box's left edge
        assert bool((edge == dog).all(axis=1).any()) is expected
    assert (_panel(with_boxes, 2) == _panel(without, 2)).all()  # not on ground truth


def test_augmented_boxes_follow_the_crop_scale_and_flip() -> None:
    """A box around a rectangle of the original image bounds the same rectangle in the
    augmented training crop, for several random scales, crops and flips."""
    height, width, crop = 48, 64, 40
    augment = BatchAugment(crop_size=crop, scale_range=(0.6, 1.4))
    for seed in range(6):
        gt = torch.zeros(1, height, width, dtype=torch.uint8)
        gt[0, 12:30, 20:50] = DOG
        batch = {
            "image": torch.zeros(1, 3, height, width, dtype=torch.uint8),
            "size": torch.tensor([[height, width]]),
            "aug_seed": torch.tensor([seed]),
            "target": gt.clone(),
            "gt": gt.clone(),
        }
        out = augment.train_batch(batch)
        (moved,) = _augmented_boxes(
            [{"box": [20, 12, 50, 30], "label": DOG}], out["aug_geometry"][0].tolist(), crop
        )
        ys, xs = torch.nonzero(out["gt"][0] == DOG, as_tuple=True)
        if len(ys) == 0:
            continue
        x0, y0, x1, y1 = moved["box"]
        # The crop cuts the rectangle: compare inside the crop, to a pixel of nearest rounding.
        assert (
            abs(max(x0, 0) - int(xs.min())) <= 1.5 and abs(min(x1, crop) - int(xs.max()) - 1) <= 1.5
        )
        assert (
            abs(max(y0, 0) - int(ys.min())) <= 1.5 and abs(min(y1, crop) - int(ys.max()) - 1) <= 1.5
        )


def test_mixed_sizes_are_padded_to_one_size_for_wandb() -> None:
    small, large = _row(np.zeros((40, 60), np.uint8)), _row(None)
    large["image"] = np.zeros((50, 70, 3), np.uint8)
    for key in ("ground_truth", "prediction", "error"):
        large[key] = np.ones((50, 70), np.uint8)
    padded = _same_size([small, large])
    assert {p["image"].shape for p in padded} == {(50, 70, 3)}
    assert padded[0]["ground_truth"].shape == (50, 70) and padded[0]["ground_truth"][45, 65] == 255
    assert padded[0]["error"][45, 65] == 0 and padded[1]["label"] is None
    assert (padded[0]["ground_truth"][:40, :60] == small["ground_truth"]).all()
    assert _same_size([small, small]) == [small, small]
