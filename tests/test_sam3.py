"""SAM 3 labeller (``Sam3Detector``) against transformers' own SAM 3 call, on a real sample.

The reference is the documented use: ``Sam3Processor(images=PIL image, text=phrase)`` ->
``Sam3Model`` -> ``post_process_instance_segmentation`` (or ``post_process_semantic_segmentation``),
one image and one phrase per call. Ours labels two images at once (the real VOC sample and a crop)
in a fixed batch of 2 images for the image encoder and 2 (image, phrase) rows for the prompt
decoder, every class phrase (prompt name + assist words) one prompt.

Compared: pixel values identical; per phrase the same instances in the same order, scores within
1e-5, boxes within 1e-3 px, mask pixels identical except where the reference's upsampled
probability lies within 1e-4 of the mask threshold (near-ties, at most 1% of the pixels).
The tiny random SAM 3 is ``informative_tiny("sam3")``: query logits x256 (scores spread over
0.002-0.48), mask logits x2^14 (median |logit| ~3.7), semantic x64; the box threshold sits in the
widest gap of the reference's own scores. The sibling test moves the mask threshold to 0.45 and
must fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from equivalence import assert_class_maps_match, assert_scores_spread, threshold_margin
from PIL import Image
from test_grounding_equivalence import MIN_GAP, as_tensor, gap_threshold, real_image

from wsss_pl.classes import VOC
from wsss_pl.labeling.detectors.sam3 import Sam3Detector, Sam3Spec
from wsss_pl.labeling.online import OnlinePseudoLabels
from wsss_pl.labeling.tiny import informative_tiny, tiny_sam3_processor

PRESENT = [["aeroplane", "person"], ["horse"]]  # horse: 3 phrases (horse, halter, saddle)
MASK_TIE = 1e-4  # probability distance from the mask threshold below which a pixel may differ


@pytest.fixture(scope="module")
def sam3():
    return informative_tiny("sam3"), tiny_sam3_processor()


@pytest.fixture(scope="module")
def images(sample_data) -> list[np.ndarray]:
    image = real_image(sample_data)
    return [image, np.ascontiguousarray(image[:200, 120:420])]


def reference_call(model, processor, image: np.ndarray, phrase: str):
    inputs = processor(images=Image.fromarray(image), text=phrase, return_tensors="pt")
    with torch.no_grad():
        outputs = model(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
        )
    return inputs, outputs


def phrases_of(names: list[str]) -> list[tuple[str, int]]:
    return [
        (phrase, VOC.label_id(name))
        for name in names
        for phrase in (VOC.prompt_name(name), *VOC.assist_words.get(name, ()))
    ]


def compare(sam3, images, mask_threshold: float = 0.5, make_detector=None) -> dict[str, float]:
    """``make_detector(box_threshold, mask_threshold)``: ours (default: a Sam3Detector around
    ``sam3``'s model in fixed batches of 2)."""
    model, processor = sam3
    calls = {}
    for k, (image, names) in enumerate(zip(images, PRESENT, strict=True)):
        for phrase, _ in phrases_of(names):
            calls[k, phrase] = reference_call(model, processor, image, phrase)
    scores = torch.cat(
        [
            (o.pred_logits.sigmoid() * o.presence_logits.sigmoid()).flatten()
            for _, o in calls.values()
        ]
    )
    threshold = gap_threshold(scores, 8, 40)
    spread = assert_scores_spread(scores, threshold, min_each_side=8, min_gap=MIN_GAP)
    if make_detector is None:
        detector = Sam3Detector(
            model, processor, threshold, mask_threshold=mask_threshold, batch_size=2
        )
    else:
        detector = make_detector(threshold, mask_threshold)
    found = detector([as_tensor(x) for x in images], PRESENT, VOC)
    totals = {"instances": 0, "pixels": 0, "differing": 0, "near_ties": 0, **spread}
    for k, (image, names) in enumerate(zip(images, PRESENT, strict=True)):
        size = image.shape[:2]
        inputs, _ = calls[k, phrases_of(names)[0][0]]
        assert torch.equal(detector.pixel_values([as_tensor(image)]), inputs["pixel_values"])
        expected = {
            "scores": [],
            "boxes": [],
            "masks": [],
            "margins": [],
            "labels": [],
            "phrases": [],
        }
        for phrase, label in phrases_of(names):
            _, outputs = calls[k, phrase]
            (ref,) = processor.post_process_instance_segmentation(
                outputs, threshold=threshold, mask_threshold=0.5, target_sizes=[size]
            )
            keep = (outputs.pred_logits.sigmoid() * outputs.presence_logits.sigmoid())[
                0
            ] > threshold
            probabilities = F.interpolate(
                outputs.pred_masks[:, keep].sigmoid(),
                size=size,
                mode="bilinear",
                align_corners=False,
            )[0]
            expected["scores"].append(ref["scores"])
            expected["boxes"].append(ref["boxes"])
            expected["masks"].append(ref["masks"].bool())
            expected["margins"].append(threshold_margin(probabilities, 0.5))
            expected["labels"] += [label] * len(ref["scores"])
            expected["phrases"] += [phrase] * len(ref["scores"])
        ours = found[k]
        assert ours.labels.tolist() == expected["labels"] and ours.phrases == expected["phrases"]
        torch.testing.assert_close(ours.scores, torch.cat(expected["scores"]), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.boxes, torch.cat(expected["boxes"]), rtol=0, atol=1e-3)
        result = assert_class_maps_match(
            ours.masks, torch.cat(expected["masks"]), torch.cat(expected["margins"]), MASK_TIE
        )
        totals["instances"] += len(ours)
        totals["pixels"] += result.pixels
        totals["differing"] += result.differing
        totals["near_ties"] += result.near_ties
    return totals


@pytest.mark.sample_data
def test_sam3_instances_match_the_official_call(sam3, images) -> None:
    totals = compare(sam3, images)
    print(f"SAM 3 vs reference: {totals}")
    assert totals["instances"] >= 6


@pytest.mark.sample_data
def test_sam3_comparison_fails_with_another_mask_threshold(sam3, images) -> None:
    with pytest.raises(AssertionError):
        compare(sam3, images, mask_threshold=0.45)


@pytest.mark.sample_data
def test_sam3_semantic_output_is_the_processors(sam3, images) -> None:
    model, processor = sam3
    image = images[1]
    detector = Sam3Detector(model, processor, 0.2, output="semantic", batch_mode="per_image")
    (found,) = detector([as_tensor(image)], [["horse"]], VOC)
    assert found.phrases and set(found.labels.tolist()) == {VOC.label_id("horse")}
    for mask, phrase in zip(found.masks, found.phrases, strict=True):
        _, outputs = reference_call(model, processor, image, phrase)
        (semantic,) = processor.post_process_semantic_segmentation(
            outputs, target_sizes=[image.shape[:2]], threshold=0.5
        )
        logits = F.interpolate(outputs.semantic_seg, size=image.shape[:2], mode="bilinear")[0, 0]
        assert_class_maps_match(
            mask, semantic.bool(), threshold_margin(logits.sigmoid(), 0.5), MASK_TIE
        )
        assert 0.02 < float(mask.float().mean()) < 0.98  # neither empty nor everything


def test_sam3_spec_makes_the_masks_and_says_how_to_get_the_gated_checkpoint(tmp_path) -> None:
    labels = OnlinePseudoLabels(detector=Sam3Spec("tiny"), sam_checkpoint="tiny")
    settings = labels.settings(VOC)
    assert settings["detector"]["name"] == "sam3_tiny"
    assert "none" in settings["sam"]["type"]  # no SAM runs: SAM 3 makes the masks
    labels.vocabulary = VOC  # what setup() sets from the dataset
    labeler = labels.build_labeler()
    assert labeler.segmenter is None
    from wsss_pl.errors import WeightsError

    with pytest.raises(WeightsError, match="huggingface.co/facebook/sam3"):
        Sam3Spec(str(tmp_path / "sam3")).settings()


@pytest.mark.sample_data
def test_sam3_fixed_batches_give_bit_identical_masks(sam3, images) -> None:
    model, processor = sam3
    detector = Sam3Detector(model, processor, 0.2, batch_size=2)
    image = as_tensor(images[1])
    mate = torch.flip(image, dims=[-1]).contiguous()
    alone = detector([image], [["person"]], VOC)[0]
    batched = detector([mate, image], [["horse"], ["person"]], VOC)[1]
    assert len(alone) >= 1
    assert torch.equal(alone.scores, batched.scores) and torch.equal(alone.masks, batched.masks)
    assert not torch.equal(detector([mate], [["person"]], VOC)[0].scores, alone.scores)


# --- the SAM 3 tracker as a box -> mask segmenter (refining another detector's boxes) ---------
BOXES = torch.tensor([[10.0, 20, 200, 150], [150, 40, 300, 230], [0, 0, 320, 240]])


@pytest.fixture(scope="module")
def tracker():
    from wsss_pl.labeling.segmenters import Sam2Segmenter
    from wsss_pl.labeling.tiny import TINY_SAM3_IMAGE_SIZE, tiny_sam3_tracker_processor

    model = informative_tiny("sam3_tracker")
    return Sam2Segmenter(model, tiny_sam3_tracker_processor(), 1, image_size=TINY_SAM3_IMAGE_SIZE)


def tracker_reference(segmenter, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The documented call: Sam3TrackerProcessor(images, input_boxes) -> Sam3TrackerModel
    (single-mask output) -> post_process_masks; mask logits [N, H, W]."""
    processor = segmenter.processor
    inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.no_grad():
        out = segmenter.model(**inputs, multimask_output=False)
    return processor.post_process_masks(out.pred_masks, inputs["original_sizes"], binarize=False)[
        0
    ][:, 0]


@pytest.mark.sample_data
def test_sam3_tracker_masks_match_the_official_call(tracker, images) -> None:
    from equivalence import assert_informative_masks

    image = as_tensor(images[1])
    logits = tracker_reference(tracker, image, BOXES[:2])
    print(f"SAM 3 tracker reference: {assert_informative_masks(logits, BOXES[:2])}")
    ((masks, _),) = tracker([image], [BOXES[:2]])
    assert torch.equal(masks, logits > 0)


@pytest.mark.sample_data
def test_sam3_tracker_comparison_fails_with_a_shifted_box(tracker, images) -> None:
    from equivalence import compare_class_maps

    image = as_tensor(images[1])
    ((masks, _),) = tracker([image], [BOXES[:2]])
    logits = tracker_reference(tracker, image, BOXES[:2] + 4.0)
    assert (
        compare_class_maps(masks, logits > 0, threshold_margin(logits), MASK_TIE).unexcused >= 100
    )


def test_sam3_tracker_spec_offline_message(tmp_path) -> None:
    from wsss_pl.errors import WeightsError
    from wsss_pl.labeling.segmenters import Sam3TrackerSpec

    assert Sam3TrackerSpec("tiny").settings() == {"type": "sam3_tracker_tiny", "seed": 0}
    with pytest.raises(WeightsError, match="huggingface.co/facebook/sam3"):
        Sam3TrackerSpec(str(tmp_path / "missing")).settings()
