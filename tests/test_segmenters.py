"""Pluggable segmenters: each against its own library's reference predictor (tiny random)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wsss_pl.errors import WeightsError
from wsss_pl.labeling.segmenters import HQSamSpec, SamSpec

BOXES = torch.tensor([[10.0, 20, 200, 150], [150, 40, 300, 230], [0, 0, 320, 240]])


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 240, 320), dtype=torch.uint8, generator=generator)


def test_hq_sam_matches_its_predictor(image: torch.Tensor) -> None:
    from segment_anything_hq import SamPredictor

    segmenter = HQSamSpec(checkpoint="tiny").build()
    (masks, scores), (empty, _) = segmenter([image, image], [BOXES, torch.zeros(0, 4)])
    assert (
        masks.shape == (3, 240, 320) and masks.dtype == torch.bool and empty.shape == (0, 240, 320)
    )
    predictor = SamPredictor(segmenter.sam)
    resized = F.interpolate(
        image[None].float(), (768, 1024), mode="bilinear", align_corners=False, antialias=True
    )  # the segmenter's resize; the predictor's own is PIL's (not bit-identical)
    predictor.set_torch_image(resized, (240, 320))
    prompt = predictor.transform.apply_boxes_torch(BOXES, (240, 320))
    expected, iou, _ = predictor.predict_torch(
        None, None, boxes=prompt, multimask_output=False, hq_token_only=False
    )
    assert torch.equal(masks, expected[:, 0])
    assert torch.allclose(scores, iou[:, 0])
    assert 0 < int(masks.sum()) < masks.numel()  # not trivially empty or full


def test_sam_spec_is_the_default_segmenter(image: torch.Tensor) -> None:
    from wsss_pl.labeling.tiny import tiny_segmenter

    spec = SamSpec(checkpoint="tiny")
    assert spec.settings() == {"type": "tiny", "seed": 0}  # the fingerprint as before
    ((masks, _),) = spec.build()([image], [BOXES])
    ((reference, _),) = tiny_segmenter()([image], [BOXES])
    assert torch.equal(masks, reference)


def test_offline_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="lkeab/hq-sam"):
        HQSamSpec(checkpoint=str(tmp_path / "sam_hq_vit_h.pth")).settings()
    from wsss_pl.labeling.tiny import tiny_sam

    plain = tmp_path / "plain.pth"
    torch.save(tiny_sam().state_dict(), plain)
    with pytest.raises(WeightsError, match="HQ-SAM vit_b"):
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


def test_sam2_matches_transformers_reference(image: torch.Tensor) -> None:
    """Sam2Segmenter (device preprocessing, batched encoder, all boxes per decoder call) gives the
    masks of the documented transformers call: processor(images, input_boxes) -> Sam2Model ->
    post_process_masks."""
    from wsss_pl.labeling.segmenters import Sam2Spec

    segmenter = Sam2Spec(model="tiny").build(encoder_batch_size=1)
    processor = segmenter.processor
    inputs = processor(images=image, input_boxes=[BOXES.tolist()], return_tensors="pt")
    with torch.no_grad():
        out = segmenter.model(**inputs, multimask_output=False)
    expected = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][:, 0]
    (masks, scores), (empty, _) = segmenter([image, image], [BOXES, torch.zeros(0, 4)])
    assert masks.shape == (3, 240, 320) and empty.shape == (0, 240, 320)
    assert torch.equal(masks, expected.bool())
    assert torch.allclose(scores, out.iou_scores[0, :, 0], atol=1e-5)
    assert 0 < int(masks.sum()) < masks.numel()
    # A batched encoder gives the same masks up to the last bits of batched matrix products.
    other = torch.flip(image, dims=[2])
    batched = Sam2Spec(model="tiny").build(encoder_batch_size=2)([image, other], [BOXES, BOXES])
    assert (batched[0][0] != masks).float().mean() < 1e-3


def test_sam2_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsss_pl.labeling.segmenters import Sam2Spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="sam2.1-hiera-large"):
        Sam2Spec(model="facebook/sam2.1-hiera-large").settings()
