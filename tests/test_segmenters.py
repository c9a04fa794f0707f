"""Pluggable segmenters: each against its own library's reference predictor (tiny random).

The equivalence tests use ``informative_tiny`` (mask logits scaled so the reference's are far
from the threshold) and each has a sibling showing that a plausible mistake makes it fail.
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

from wsss_pl.errors import WeightsError
from wsss_pl.labeling.segmenters import HQSamSpec, SamSpec
from wsss_pl.labeling.tiny import informative_tiny

BOXES = torch.tensor([[10.0, 20, 200, 150], [150, 40, 300, 230], [0, 0, 320, 240]])
MASK_TOLERANCE = 1e-3  # |logit| below this may flip between two float paths (see test_sam)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 240, 320), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def hq_segmenter():
    from wsss_pl.labeling.segmenters import HQSamSegmenter

    return HQSamSegmenter(informative_tiny("hq_sam"))


def hq_reference(sam, image: torch.Tensor, boxes: torch.Tensor, hq_token_only: bool = False):
    """segment_anything_hq.SamPredictor.predict_torch on the image resized as the segmenter's
    ``tensor`` mode does: mask logits [N, H, W] and IoU [N]."""
    from segment_anything_hq import SamPredictor

    predictor = SamPredictor(sam)
    resized = F.interpolate(
        image[None].float(), (768, 1024), mode="bilinear", align_corners=False, antialias=True
    )  # the segmenter's resize; the predictor's own is PIL's (not bit-identical)
    predictor.set_torch_image(resized, (240, 320))
    prompt = predictor.transform.apply_boxes_torch(boxes, (240, 320))
    logits, iou, _ = predictor.predict_torch(
        None, None, boxes=prompt, multimask_output=False, hq_token_only=hq_token_only,
        return_logits=True,
    )  # fmt: skip
    return logits[:, 0], iou[:, 0]


def test_hq_sam_matches_its_predictor(image: torch.Tensor, hq_segmenter) -> None:
    """Bit-identical masks to segment_anything_hq's predictor (``tensor`` resize on both sides;
    with ``image_resize: pil`` that is the predictor's ``set_image``)."""
    (masks, scores), (empty, _) = hq_segmenter([image, image], [BOXES, torch.zeros(0, 4)])
    assert (
        masks.shape == (3, 240, 320) and masks.dtype == torch.bool and empty.shape == (0, 240, 320)
    )
    logits, iou = hq_reference(hq_segmenter.sam, image, BOXES)
    print(f"HQ-SAM reference: {assert_informative_masks(logits, BOXES)}")
    assert torch.equal(masks, logits > 0)
    assert torch.allclose(scores, iou)


@pytest.mark.parametrize("mistake", ["box shifted 4 px", "hq_token_only"])
def test_hq_sam_comparison_fails_on_a_mistake(image, hq_segmenter, mistake: str) -> None:
    ((masks, _),) = hq_segmenter([image], [BOXES])
    if mistake == "box shifted 4 px":
        logits, _ = hq_reference(hq_segmenter.sam, image, BOXES + 4.0)
    else:  # the HQ token alone instead of SAM's + HQ's logits (the package's default)
        logits, _ = hq_reference(hq_segmenter.sam, image, BOXES, hq_token_only=True)
    result = compare_class_maps(masks, logits > 0, threshold_margin(logits), MASK_TOLERANCE)
    print(f"HQ-SAM with {mistake}: {result}")
    assert result.unexcused >= 100


def test_sam_spec_is_the_default_segmenter(image: torch.Tensor) -> None:
    from wsss_pl.labeling.labeller_factory import build_segmenter
    from wsss_pl.labeling.tiny import tiny_segmenter

    spec = SamSpec(checkpoint="tiny")
    assert spec.settings() == {"type": "tiny", "seed": 0}  # the fingerprint as before
    ((masks, _),) = build_segmenter(spec)([image], [BOXES])
    ((reference, _),) = tiny_segmenter()([image], [BOXES])
    assert torch.equal(masks, reference)


def test_offline_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="lkeab/hq-sam"):
        HQSamSpec(checkpoint=str(tmp_path / "sam_hq_vit_h.pth")).settings()
    from wsss_pl.labeling.tiny import tiny_sam

    plain = tmp_path / "plain.pth"
    torch.save(tiny_sam().state_dict(), plain)
    with pytest.raises(
        WeightsError, match="plain segment-anything SAM checkpoint, not HQ-SAM: use .*SamSpec"
    ):
        HQSamSpec(model_type="vit_b", checkpoint=str(plain)).build()


def test_online_labels_with_a_pluggable_segmenter(tmp_path: Path) -> None:
    """``segmenter:`` in the label source: HQ-SAM labels a batch; SamSpec keeps SAM's cache."""
    from wsss_pl.data.collate import collate_samples
    from wsss_pl.data.synthetic import SyntheticVOC
    from wsss_pl.labeling.online import OnlinePseudoLabels

    source = SyntheticVOC(str(tmp_path / "voc"), num_train=2, num_val=1, image_size=(48, 64))
    common = {"cache_root": str(tmp_path / "cache"), "detector": "tiny", "box_threshold": 0.05}
    caches = []
    for kwargs in ({"sam_checkpoint": "tiny"}, {"segmenter": SamSpec(checkpoint="tiny")},
                   {"segmenter": HQSamSpec(checkpoint="tiny")}):  # fmt: skip
        labels = OnlinePseudoLabels(**common, **kwargs)  # type: ignore[arg-type]
        labels.setup(source)
        assert labels.cache is not None
        caches.append(labels.cache.directory)
    assert caches[0] == caches[1] != caches[2]
    dataset = source.dataset("train")
    batch = collate_samples([dataset[0], dataset[1]])
    labels.label_batch(batch)
    labels.flush()  # cache writes run in the background until flushed
    assert not bool(batch["needs_label"].any()) and len(labels.cache) == 2
    from wsss_pl.labeling.segmenters import HQSamSegmenter

    assert isinstance(labels._labeler.segmenter, HQSamSegmenter)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def sam2_segmenter():
    from wsss_pl.labeling.segmenters import Sam2Segmenter, sam2_processor

    return Sam2Segmenter(informative_tiny("sam2"), sam2_processor(), encoder_batch_size=1)


def sam2_reference(segmenter, image: torch.Tensor, boxes: torch.Tensor, multimask_index=None):
    """The documented transformers call: processor(images, input_boxes) -> Sam2Model ->
    post_process_masks; mask logits [N, H, W] and IoU [N] (``multimask_index``: that output of
    the 3-mask head instead of the single-mask output)."""
    processor = segmenter.processor
    inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.no_grad():
        out = segmenter.model(**inputs, multimask_output=multimask_index is not None)
    logits = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], binarize=False)
    index = multimask_index or 0
    return logits[0][:, index], out.iou_scores[0, :, index]


def test_sam2_matches_transformers_reference(image: torch.Tensor, sam2_segmenter) -> None:
    """Sam2Segmenter (device preprocessing, batched encoder, all boxes per decoder call) gives the
    masks of the documented transformers call, bit for bit, with its single-mask output (the
    mask chosen by stability, which depends on the logits' scale: informative ones here)."""
    logits, iou = sam2_reference(sam2_segmenter, image, BOXES)
    print(f"SAM 2 reference: {assert_informative_masks(logits, BOXES)}")
    (masks, scores), (empty, _) = sam2_segmenter([image, image], [BOXES, torch.zeros(0, 4)])
    assert masks.shape == (3, 240, 320) and empty.shape == (0, 240, 320)
    assert torch.equal(masks, logits > 0)
    assert torch.allclose(scores, iou, atol=1e-5)
    # A batched encoder gives the same masks up to the last bits of batched matrix products:
    # only near-ties with the threshold may flip.
    from wsss_pl.labeling.segmenters import Sam2Segmenter

    batched = Sam2Segmenter(sam2_segmenter.model, sam2_segmenter.processor, encoder_batch_size=2)
    other = torch.flip(image, dims=[2])
    ((batched_masks, _), _) = batched([image, other], [BOXES, BOXES])
    assert_class_maps_match(batched_masks, masks, threshold_margin(logits), MASK_TOLERANCE)


@pytest.mark.parametrize("mistake", ["box shifted 4 px", "multimask index 0"])
def test_sam2_comparison_fails_on_a_mistake(image, sam2_segmenter, mistake: str) -> None:
    ((masks, _),) = sam2_segmenter([image], [BOXES])
    if mistake == "box shifted 4 px":
        logits, _ = sam2_reference(sam2_segmenter, image, BOXES + 4.0)
    else:  # the first of the three multimask outputs instead of the single-mask output
        logits, _ = sam2_reference(sam2_segmenter, image, BOXES, multimask_index=0)
    result = compare_class_maps(masks, logits > 0, threshold_margin(logits), MASK_TOLERANCE)
    print(f"SAM 2 with {mistake}: {result}")
    assert result.unexcused >= 100


def test_sam2_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsss_pl.labeling.segmenters import Sam2Spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="sam2.1-hiera-large"):
        Sam2Spec(model="facebook/sam2.1-hiera-large").settings()
