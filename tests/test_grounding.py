"""GroundingDetector on a tiny random Grounding DINO and on hand-made model outputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from wsss_pl.classes import VOC
from wsss_pl.errors import WeightsError
from wsss_pl.labeling.detectors.grounding import Detections, GroundingDetector
from wsss_pl.labeling.tiny import tiny_detector

NUM_QUERIES = 20  # tiny_grounding_dino's


@pytest.fixture(scope="module")
def detector() -> GroundingDetector:
    return tiny_detector()


@pytest.fixture(scope="module")
def images() -> list[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, 256, (3, 120, 160), dtype=torch.uint8, generator=generator),
        torch.randint(0, 256, (3, 150, 90), dtype=torch.uint8, generator=generator),
    ]


class CallLog(nn.Module):
    """Wraps the model and records each call's batch size and caption token ids."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.calls: list[tuple[int, list[list[int]]]] = []

    def forward(self, **inputs: Tensor):
        ids = [
            row[mask.bool()].tolist()
            for row, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
        ]
        self.calls.append((inputs["pixel_values"].shape[0], ids))
        return self.inner(**inputs)


def test_resized_size_follows_the_grounding_dino_processor() -> None:
    detector = tiny_detector(image_size=800, max_size=1333)
    assert detector.resized_size(120, 160) == (800, 1066)
    assert detector.resized_size(160, 120) == (1066, 800)
    assert detector.resized_size(500, 2000) == (333, 1333)  # longer side capped
    assert detector.resized_size(800, 1000) == (800, 1000)  # already there: untouched
    pixel_values, pixel_mask = detector.preprocess(
        [torch.zeros(3, 120, 160, dtype=torch.uint8), torch.zeros(3, 160, 120, dtype=torch.uint8)]
    )
    assert pixel_values.shape == (2, 3, 1066, 1066)
    assert pixel_mask[0].sum() == 800 * 1066 and pixel_mask[1].sum() == 1066 * 800
    assert pixel_mask[0, 799, 1065] == 1 and pixel_mask[0, 800, 0] == 0
    # ImageNet-normalised black, zero padding
    assert torch.allclose(
        pixel_values[0, :, 0, 0], torch.tensor([-2.1179, -2.0357, -1.8044]), atol=1e-4
    )
    assert pixel_values[0, :, 900, 0].abs().sum() == 0


def test_tiny_detector_boxes_labels_and_thresholds(detector, images) -> None:
    present = [["dog", "sofa"], ["horse"]]
    everything = detector(images, present, VOC, box_threshold=0.0)
    for detections, image, names in zip(everything, images, present, strict=True):
        height, width = image.shape[-2:]
        # threshold 0: every query is either a labelled detection or counted as unmatched
        assert len(detections) + detections.num_unmatched == NUM_QUERIES
        assert detections.boxes.dtype == torch.float32 and detections.boxes.shape == (
            len(detections),
            4,
        )
        assert detections.labels.dtype == torch.long
        assert set(detections.labels.tolist()) <= {VOC.label_id(n) for n in names}
        boxes = detections.boxes
        assert (
            (boxes >= 0).all()
            and (boxes[:, 0::2] <= width).all()
            and (boxes[:, 1::2] <= height).all()
        )
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert len(detections.phrases) == len(detections)
        assert (detections.scores > 0).all()
    assert {p for d in everything for p in d.phrases} <= {
        "dog",
        "sofa",
        "horse",
        "halter",
        "saddle",
    }
    assert all(
        len(d) == 0 and d.num_unmatched == 0
        for d in detector(images, present, VOC, box_threshold=1.0)
    )
    # a middle threshold keeps exactly the boxes scoring above it, in the same order
    middle = float(everything[0].scores.median())
    kept = detector(images, present, VOC, box_threshold=middle)[0]
    expected = everything[0].scores > middle
    assert torch.equal(kept.scores, everything[0].scores[expected])
    assert torch.equal(kept.boxes, everything[0].boxes[expected])
    detector.set_threshold(middle)
    try:
        assert torch.equal(detector(images, present, VOC)[0].scores, kept.scores)
    finally:
        detector.set_threshold(0.3)


def test_empty_class_list_skips_the_model(detector, images, monkeypatch) -> None:
    log = CallLog(detector.model)
    monkeypatch.setattr(detector, "model", log)
    results = detector(images, [[], []], VOC, box_threshold=0.0)
    assert log.calls == []
    assert all(len(d) == 0 and d.boxes.shape == (0, 4) for d in results)
    results = detector(images, [[], ["cat"]], VOC, box_threshold=0.0)
    # One forward for the image with a class, filled to the fixed batch with neutral captions.
    assert [size for size, _ in log.calls] == [detector.batch_size]
    decoded = [detector.tokenizer.decode(ids, skip_special_tokens=True) for ids in log.calls[0][1]]
    assert decoded == ["cat."] + ["."] * (detector.batch_size - 1)
    assert len(results[0]) == 0 and len(results[1]) + results[1].num_unmatched == NUM_QUERIES


def test_long_class_lists_run_once_per_caption_chunk(detector, images, monkeypatch) -> None:
    small = GroundingDetector(
        detector.model,
        detector.tokenizer,
        max_text_tokens=12,
        image_size=256,
        max_size=427,
        batch_mode="free",
    )
    log = CallLog(detector.model)
    monkeypatch.setattr(small, "model", log)
    present = [["dog", "horse", "sofa"], ["cat"]]  # "dog . horse . halter . saddle ." is 11 tokens
    same_shape = [images[0], images[0].flip(-1)]
    results = small(same_shape, present, VOC, box_threshold=0.0)
    assert [size for size, _ in log.calls] == [2, 1]  # round 1 batched over both images
    decoded = [
        small.tokenizer.decode(ids, skip_special_tokens=True)
        for _, rows in log.calls
        for ids in rows
    ]
    small(images, present, VOC, box_threshold=0.0)  # other shapes are never batched together
    assert [size for size, _ in log.calls[2:]] == [1, 1, 1]
    small.batch_mode = "per_image"  # every image alone
    small(same_shape, present, VOC, box_threshold=0.0)
    assert [size for size, _ in log.calls[5:]] == [1, 1, 1]
    assert decoded == ["dog. horse. halter. saddle.", "cat.", "sofa."]
    assert len(results[0]) + results[0].num_unmatched == 2 * NUM_QUERIES
    assert set(results[0].labels.tolist()) <= {12, 13, 18}


class FakeGroundingDino(nn.Module):
    """Returns fixed logits [B, Q, 256] and boxes [B, Q, 4] (normalised cxcywh)."""

    def __init__(self, logits: Tensor, boxes: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.logits, self.boxes = logits, boxes

    def forward(self, **inputs: Tensor) -> SimpleNamespace:
        batch = inputs["pixel_values"].shape[0]
        return SimpleNamespace(logits=self.logits[:batch], pred_boxes=self.boxes[:batch])


def test_box_class_threshold_and_coordinates_exactly(detector, images, monkeypatch) -> None:
    # caption "dog . horse . halter . saddle ." -> [CLS] dog . horse . halt ##er . saddle . [SEP]
    probabilities = torch.zeros(1, 6, 256)
    probabilities[0, :, :11] = 0.01
    probabilities[0, 0, 1] = 0.5  # dog
    probabilities[0, 1, [3, 6]] = torch.tensor([0.2, 0.9])  # "##er" of halter -> horse
    probabilities[0, 2, 2] = 0.95  # only a "." token: unmatched, counted
    probabilities[0, 3, 1] = 0.3  # exactly the box threshold: dropped
    probabilities[0, 4, 8] = 0.31  # saddle, just above both thresholds
    probabilities[0, 5, [1, 3]] = torch.tensor([0.4, 0.2])  # box passes, horse under text thr.
    boxes = torch.tensor(
        [
            [0.5, 0.5, 0.2, 0.4],
            [0.95, 0.5, 0.2, 0.2],  # leaves the image on the right: clipped
            [0.5, 0.5, 0.1, 0.1],
            [0.5, 0.5, 0.1, 0.1],
            [0.05, 0.1, 0.2, 0.4],  # leaves on the top-left: clipped
            [0.25, 0.25, 0.5, 0.5],
        ]
    )[None]
    fake = FakeGroundingDino(torch.logit(probabilities), boxes)
    monkeypatch.setattr(detector, "model", fake)
    (result,) = detector(images[:1], [["horse", "dog"]], VOC)
    assert isinstance(result, Detections)
    assert result.labels.tolist() == [12, 13, 13, 12]  # query order, not score order
    assert result.phrases == ["dog", "halter", "saddle", "dog"]
    assert result.num_unmatched == 1
    assert torch.allclose(result.scores, torch.tensor([0.5, 0.9, 0.31, 0.4]))
    expected = torch.tensor(  # image 120 x 160 (H x W)
        [
            [64.0, 36.0, 96.0, 84.0],
            [136.0, 48.0, 160.0, 72.0],
            [0.0, 0.0, 24.0, 36.0],
            [0.0, 0.0, 80.0, 60.0],
        ]
    )
    assert result.boxes.dtype == torch.float32
    assert torch.allclose(result.boxes, expected, atol=1e-4)
    (strict,) = detector(images[:1], [["horse", "dog"]], VOC, box_threshold=0.45)
    assert strict.labels.tolist() == [12, 13] and strict.num_unmatched == 1


def test_from_pretrained_local_directory(detector, images, tmp_path) -> None:
    detector.model.save_pretrained(tmp_path)
    loaded = GroundingDetector.from_pretrained(str(tmp_path), image_size=256, max_size=427)
    assert len(loaded.tokenizer) == 30522  # no tokenizer in the dir: the packaged vocabulary
    expected = detector(images, [["dog"], ["cat"]], VOC, box_threshold=0.0)
    actual = loaded(images, [["dog"], ["cat"]], VOC, box_threshold=0.0)
    for a, b in zip(actual, expected, strict=True):
        assert torch.equal(a.labels, b.labels) and torch.allclose(a.boxes, b.boxes)
    with pytest.raises(WeightsError):
        GroundingDetector.from_pretrained(str(tmp_path / "absent"))


def test_pad_to_canvas_makes_boxes_independent_of_the_batch(detector, images) -> None:
    fixed = GroundingDetector(
        detector.model, detector.tokenizer, image_size=256, max_size=427, pad_to_canvas=True
    )
    pixel_values, pixel_mask = fixed.preprocess(images[:1], fixed.canvas_size(120, 160))
    assert pixel_values.shape == (1, 3, 256, 427) and pixel_mask.sum() == 256 * 341
    tall = torch.randint(0, 256, (3, 300, 100), dtype=torch.uint8)
    wide = torch.randint(0, 256, (3, 100, 300), dtype=torch.uint8)
    alone = fixed(images[:1], [["dog"]], VOC, box_threshold=0.0)[0]
    for other in (tall, wide):
        batched = fixed([images[0], other], [["dog"], ["cat"]], VOC, box_threshold=0.0)[0]
        assert torch.equal(batched.labels, alone.labels)
        assert torch.allclose(batched.scores, alone.scores, atol=1e-5)
        assert torch.allclose(batched.boxes, alone.boxes, atol=1e-3)
