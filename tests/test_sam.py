"""SamSegmenter on a tiny random SAM, checked against segment-anything's own SamPredictor.

The SAM is ``informative_tiny("sam")``: mask logits scaled (exactly, by 2**8) so that the
reference's logits sit far from the threshold (median |logit| ~5) and a comparison of masks means
something; each comparison has a sibling showing that a plausible mistake makes it fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from equivalence import (
    assert_class_maps_match,
    assert_informative_masks,
    compare_class_maps,
    threshold_margin,
)
from segment_anything import SamPredictor
from torch import Tensor

from wsss_pl.errors import WeightsError
from wsss_pl.labeling.segmenters.sam import SamSegmenter
from wsss_pl.labeling.tiny import informative_tiny, tiny_sam

# Mask pixels whose reference logit is this close to the threshold may flip between two float
# paths (batched vs single encoder); measured differences of such logits are ~1e-5.
MASK_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def segmenter() -> SamSegmenter:
    return SamSegmenter(informative_tiny("sam"), encoder_batch_size=4)


@pytest.fixture(scope="module")
def images() -> list[Tensor]:
    generator = torch.Generator().manual_seed(1)
    sizes = [(120, 160), (150, 90), (64, 64)]
    return [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes
    ]


BOXES = [
    torch.tensor([[10.0, 20.0, 100.0, 110.0], [0.0, 0.0, 160.0, 120.0], [50.0, 5.0, 60.0, 15.0]]),
    torch.tensor([[5.0, 5.0, 80.0, 140.0]]),
    torch.tensor([[0.0, 0.0, 32.0, 32.0], [16.0, 16.0, 64.0, 64.0]]),
]


def count_encoder_batches(segmenter: SamSegmenter, monkeypatch) -> list[int]:
    sizes: list[int] = []
    encoder = segmenter.sam.image_encoder
    original = encoder.forward

    def forward(x: Tensor) -> Tensor:
        sizes.append(x.shape[0])
        return original(x)

    monkeypatch.setattr(encoder, "forward", forward)
    return sizes


def test_masks_shapes_per_image(segmenter, images) -> None:
    results = segmenter(images, BOXES)
    assert len(results) == 3
    for (masks, scores), image, boxes in zip(results, images, BOXES, strict=True):
        assert masks.dtype == torch.bool and masks.shape == (len(boxes), *image.shape[-2:])
        assert scores.dtype == torch.float32 and scores.shape == (len(boxes),)


def predictor_reference(
    sam, image: Tensor, boxes: Tensor, multimask_index: int | None = None
) -> tuple[Tensor, Tensor]:
    """SamPredictor.predict_torch on ``image`` resized as SamSegmenter's ``tensor`` mode does:
    mask logits [N, H, W] and IoU [N] (``multimask_index``: that output of the 3-mask head
    instead of the single-mask output)."""
    predictor = SamPredictor(sam)
    size = predictor.transform.get_preprocess_shape(*image.shape[-2:], 1024)
    resized = F.interpolate(
        image[None].float(), size, mode="bilinear", align_corners=False, antialias=True
    )  # the predictor's own resize is PIL's: see test_paper_labels for that mode
    predictor.set_torch_image(resized, tuple(image.shape[-2:]))
    prompt = predictor.transform.apply_boxes_torch(boxes, tuple(image.shape[-2:]))
    logits, iou, _ = predictor.predict_torch(
        None, None, boxes=prompt, multimask_output=multimask_index is not None, return_logits=True
    )
    index = multimask_index or 0
    return logits[:, index], iou[:, index]


def test_matches_segment_anything_predictor(segmenter, images) -> None:
    """Same masks (bit for bit) as SamPredictor.predict_torch on the same resized image and boxes,
    with reference logits far from the threshold."""
    image, boxes = images[0], BOXES[0]
    masks, scores = segmenter([image], [boxes])[0]
    logits, iou = predictor_reference(segmenter.sam, image, boxes)
    stats = assert_informative_masks(logits, boxes)
    print(f"SAM reference: {stats}")
    assert torch.equal(masks, logits > segmenter.sam.mask_threshold)
    assert torch.allclose(scores, iou)


@pytest.mark.parametrize("mistake", ["box shifted 4 px", "multimask index 1"])
def test_predictor_comparison_fails_on_a_mistake(segmenter, images, mistake: str) -> None:
    """The check above can fail: a box off by 4 pixels or another mask output changes masks on
    pixels whose reference logit is far above float noise."""
    image, boxes = images[0], BOXES[0]
    masks, _ = segmenter([image], [boxes])[0]
    if mistake == "box shifted 4 px":
        logits, _ = predictor_reference(segmenter.sam, image, boxes + 4.0)
    else:
        logits, _ = predictor_reference(segmenter.sam, image, boxes, multimask_index=1)
    result = compare_class_maps(masks, logits > 0, threshold_margin(logits), MASK_TOLERANCE)
    print(f"SAM with {mistake}: {result}")
    assert result.unexcused >= 100


def test_images_without_boxes_are_not_encoded(segmenter, images, monkeypatch) -> None:
    sizes = count_encoder_batches(segmenter, monkeypatch)
    none = [torch.zeros(0, 4)] * 3
    results = segmenter(images, none)
    assert sizes == []
    for (masks, scores), image in zip(results, images, strict=True):
        assert masks.shape == (0, *image.shape[-2:]) and masks.dtype == torch.bool
        assert scores.shape == (0,)
    results = segmenter(images, [BOXES[0], torch.zeros(0, 4), BOXES[2]])
    assert sizes == [2]
    assert results[1][0].shape == (0, 150, 90)
    assert results[2][0].shape == (2, 64, 64)


def test_batched_encoder_equals_one_by_one(segmenter, images, monkeypatch) -> None:
    batched = segmenter(images, BOXES)
    single = SamSegmenter(segmenter.sam, encoder_batch_size=1)
    sizes = count_encoder_batches(single, monkeypatch)
    one_by_one = single(images, BOXES)
    assert sizes == [1, 1, 1]
    for (masks_a, scores_a), (masks_b, scores_b), image, boxes in zip(
        batched, one_by_one, images, BOXES, strict=True
    ):
        # Float noise between batch sizes may flip only pixels at a near-tie with the threshold.
        logits, _ = predictor_reference(single.sam, image, boxes)
        assert torch.equal(masks_b, logits > 0)  # a batch of one is the predictor, bit for bit
        assert_class_maps_match(masks_a, masks_b, threshold_margin(logits), MASK_TOLERANCE)
        assert torch.allclose(scores_a, scores_b, atol=1e-5)


def test_stays_frozen_in_train_mode(segmenter) -> None:
    segmenter.train()
    assert not segmenter.sam.training
    assert not any(p.requires_grad for p in segmenter.parameters())


def test_from_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="missing.pth"):
        SamSegmenter.from_checkpoint("vit_b", tmp_path / "missing.pth")
    wrong = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), wrong)
    with pytest.raises(WeightsError, match="SAM weights of a ViT of width 32, not vit_b"):
        SamSegmenter.from_checkpoint("vit_b", wrong)
    with pytest.raises(ValueError, match="model_type"):
        SamSegmenter.from_checkpoint("vit_x", wrong)  # type: ignore[arg-type]
