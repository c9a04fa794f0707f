"""GroundingDetector against the official transformers pipeline for Grounding DINO.

The reference is what a user of IDEA-Research/grounding-dino-tiny runs: ``GroundingDinoProcessor``
(image processor with that checkpoint's preprocessor_config.json + the bert-base-uncased
tokenizer) -> ``GroundingDinoForObjectDetection`` -> ``post_process_grounded_object_detection``.
Both pipelines run the same tiny random model, batch size 1, at the real 800/1333 input size.

Random weights saturate the logits, so the model is ``informative_tiny("grounding_dino")``: its
token logits scaled by 1/4 (the same model for both pipelines); the reference's box scores must
spread across the box threshold, which is placed in the widest gap of the reference's own scores,
so that a handful of boxes pass, some fail, and no score lies near a threshold. A sibling test
swaps the resize (PIL's instead of the processor's) and the comparison must then fail.

What is compared:
- pixel_values: identical to the processor's (transformers 5's default torchvision backend; a
  float resize was up to one grey level off on ~15% of pixels, enough to reorder the model's
  top-k query selection), and as close to its PIL backend as the two official backends are to
  each other (at most 1 grey level when enlarging, 2 when shrinking).
- detections, end to end through our own preprocessing: the same boxes pass the box threshold, in
  the same (query) order, with equal scores and the same xyxy boxes in original-image pixels (ours
  are clipped to the image; the reference's are not), and each box's class agrees with the
  reference's phrase string (the decoded tokens above the text threshold).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from equivalence import assert_scores_spread
from PIL import Image
from torch import Tensor
from transformers import (
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
)

from wsss_pl.classes import VOC
from wsss_pl.labeling.detectors.grounding import Detections, GroundingDetector
from wsss_pl.labeling.detectors.prompt import Caption, build_captions
from wsss_pl.labeling.detectors.tokenizer import bert_tokenizer
from wsss_pl.labeling.tiny import informative_tiny

# IDEA-Research/grounding-dino-tiny preprocessor_config.json (resample 2 = bilinear).
PREPROCESSOR_CONFIG = {
    "do_resize": True,
    "size": {"shortest_edge": 800, "longest_edge": 1333},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_pad": True,
}
GREY_LEVEL = torch.tensor(PREPROCESSOR_CONFIG["image_std"]).view(1, 3, 1, 1) * 255
MIN_GAP = 1e-3  # smallest accepted distance between a threshold and any score it separates
REAL_IMAGE = "voc_sample/VOC2012/JPEGImages/2007_000032.jpg"  # 500 x 281: longest-edge capped
CLASS_LISTS = [["dog"], ["dog", "horse", "sofa"], ["tvmonitor", "pottedplant"]]


@pytest.fixture(scope="module")
def tokenizer():
    return bert_tokenizer()


@pytest.fixture(scope="module")
def model() -> GroundingDinoForObjectDetection:
    return informative_tiny("grounding_dino")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def processor(tokenizer) -> GroundingDinoProcessor:
    image_processor = GroundingDinoImageProcessor(**PREPROCESSOR_CONFIG)
    return GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: smooth blobs plus noise, so resizing has real structure to interpolate."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
    noisy = smooth + rng.integers(-40, 41, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def real_image(sample_data) -> np.ndarray:
    path = sample_data / REAL_IMAGE
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return np.asarray(Image.open(path).convert("RGB"))


def as_tensor(image: np.ndarray) -> Tensor:
    return torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()


def gap_threshold(values: Tensor, low: int, high: int) -> float:
    """Midpoint of the widest gap between consecutive sorted values such that between ``low`` and
    ``high`` of them lie above it; the gap must be at least ``2 * MIN_GAP``."""
    ordered = values.flatten().sort(descending=True).values.double()
    high = min(high, ordered.numel() - 1)
    gaps = ordered[low - 1 : high] - ordered[low : high + 1]
    k = low - 1 + int(gaps.argmax())
    assert gaps.max() > 2 * MIN_GAP, f"no clear gap in {ordered.tolist()}"
    return float((ordered[k] + ordered[k + 1]) / 2)


def word_classes(caption: Caption, tokenizer, present: list[str]) -> list[int]:
    """Class id (0 = none) of each caption token, from the vocabulary's words alone: a token's
    class is that of the caption word it is a piece of (independent of ``prompt.py``)."""
    by_word = {}
    for name in present:
        for phrase in (VOC.prompt_name(name), *VOC.assist_words.get(name, ())):
            for word in phrase.split():
                by_word[word] = VOC.label_id(name)
    words = caption.text.split()  # the caption puts spaces around every "."
    word_ids = tokenizer(caption.text).word_ids()
    return [0 if w is None else by_word.get(words[w], 0) for w in word_ids]


def official(processor, model, image: np.ndarray, caption: Caption):
    """Processor inputs and model outputs of the reference pipeline (batch of one)."""
    inputs = processor(images=Image.fromarray(image), text=caption.text, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    return inputs, outputs


def calibrate(outputs, num_tokens: int) -> tuple[float, float]:
    """(box threshold, text threshold) in clear gaps of the reference's own scores."""
    probabilities = outputs.logits[0, :, :num_tokens].sigmoid()
    scores = probabilities.max(dim=1).values
    box_threshold = gap_threshold(scores, 4, 10)
    spread = assert_scores_spread(scores, box_threshold, min_each_side=4, min_gap=MIN_GAP)
    print(f"reference box scores around {box_threshold:.3f}: {spread}")
    kept = probabilities[scores > box_threshold, 1:]  # the post-processing ignores [CLS]
    count = kept.numel()
    return box_threshold, gap_threshold(kept, count // 4, count * 3 // 5)


def compare(
    ours: Detections,
    processor,
    inputs,
    outputs,
    caption: Caption,
    present: list[str],
    tokenizer,
    thresholds: tuple[float, float],
    image_size: tuple[int, int],
) -> dict[str, int]:
    """Assert that ``ours`` are the reference's detections; returns counts of the cases seen."""
    box_threshold, text_threshold = thresholds
    height, width = image_size
    (reference,) = processor.post_process_grounded_object_detection(
        outputs,
        inputs["input_ids"],
        threshold=box_threshold,
        text_threshold=text_threshold,
        target_sizes=[(height, width)],
    )
    phrases = reference["text_labels"] if "text_labels" in reference else reference["labels"]
    num_tokens = inputs["input_ids"].shape[1]
    probabilities = outputs.logits[0, :, :num_tokens].sigmoid()
    kept = probabilities[probabilities.max(dim=1).values > box_threshold]
    assert len(kept) == len(phrases) == len(reference["scores"]) >= 4

    # The class each reference box should get: its best token above the text threshold among
    # the tokens of class words ([CLS], [SEP] and "." mean nothing).
    token_class = torch.tensor(word_classes(caption, tokenizer, present))
    candidates = (token_class > 0) & (kept > text_threshold)
    best = kept.masked_fill(~candidates, -1.0).argmax(dim=1)
    matched = candidates.any(dim=1)
    expected_labels = token_class[best][matched]

    assert len(ours) + ours.num_unmatched == len(phrases)
    assert ours.num_unmatched == int((~matched).sum())
    assert ours.labels.tolist() == expected_labels.tolist()
    assert torch.allclose(ours.scores, reference["scores"][matched], rtol=0, atol=1e-6)
    limits = torch.tensor([width, height, width, height], dtype=torch.float32)
    reference_boxes = torch.minimum(reference["boxes"].clamp(min=0), limits)  # ours are clipped
    assert torch.allclose(ours.boxes, reference_boxes[matched], rtol=0, atol=1e-3)

    # The reference's phrase (decoded tokens above the text threshold) agrees in meaning.
    tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    counts = {"boxes": len(phrases), "unmatched": 0, "one_class": 0, "several_classes": 0}
    ours_index = 0
    for i, phrase in enumerate(phrases):
        if not matched[i]:  # only [SEP] / "." (or nothing) above the text threshold
            words = phrase.replace("[SEP]", " ").replace(".", " ").split()
            assert words == [], f"unmatched box has phrase {phrase!r}"
            counts["unmatched"] += 1
            continue
        label = ours.labels[ours_index].item()
        piece = tokens[best[i]].removeprefix("##")
        assert piece in phrase, f"winning token {tokens[best[i]]!r} not in {phrase!r}"
        assert piece in ours.phrases[ours_index]
        classes_in_phrase = set(token_class[candidates[i]].tolist())
        assert label in classes_in_phrase
        counts["one_class" if len(classes_in_phrase) == 1 else "several_classes"] += 1
        ours_index += 1
    return counts


def test_text_inputs_are_the_processors(processor, tokenizer) -> None:
    caption = build_captions(VOC, ["sofa", "horse", "tvmonitor"], tokenizer)[0]
    assert caption.text == "horse . halter . saddle . sofa . tv monitor . tv . monitor ."
    ours = tokenizer([caption.text], padding=True, return_tensors="pt")  # GroundingDetector._run
    theirs = processor(text=caption.text, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(ours[key], theirs[key]), key
    # A user's list of labels ("horse. halter. ...") gives the very same tokens.
    labels = processor(
        text=["horse", "halter", "saddle", "sofa", "tv monitor", "tv", "monitor"],
        return_tensors="pt",
    )
    assert torch.equal(labels["input_ids"], ours["input_ids"])


def assert_close_to_pil(grey_levels: Tensor) -> None:
    """torch's uint8 resize kernel vs PIL's (both official backends): measured here, at most one
    grey level apart when enlarging (< 0.1% of pixels) and two when shrinking (8% differ)."""
    assert grey_levels.max() <= 2.01 and grey_levels.mean() < 0.1


def check_pixels(detector: GroundingDetector, processor, image: np.ndarray) -> None:
    """Our preprocessing vs the processor's: same size and mask, same values."""
    pixel_values, pixel_mask = detector.preprocess([as_tensor(image)])
    pil_image = Image.fromarray(image)
    reference = processor.image_processor(pil_image, return_tensors="pt")
    assert pixel_values.shape == reference["pixel_values"].shape
    assert torch.equal(pixel_mask, reference["pixel_mask"])
    grey_levels = (pixel_values - reference["pixel_values"]).abs() * GREY_LEVEL
    if getattr(processor.image_processor, "backend", None) == "torchvision":  # transformers 5
        assert grey_levels.max() < 1e-3  # the same uint8 resize; only float normalisation
    else:  # transformers 4's processor resizes with PIL, like GroundingDinoImageProcessorPil
        assert_close_to_pil(grey_levels)
    pil_backend = getattr(transformers, "GroundingDinoImageProcessorPil", None)
    if pil_backend is not None:
        reference = pil_backend(**PREPROCESSOR_CONFIG)(pil_image, return_tensors="pt")
        assert_close_to_pil((pixel_values - reference["pixel_values"]).abs() * GREY_LEVEL)


@pytest.mark.parametrize(
    ("height", "width", "resized"),
    [
        (240, 320, (800, 1066)),
        (900, 400, (1333, 592)),
        (1000, 1600, (800, 1280)),
        (800, 800, (800, 800)),
    ],
)
def test_pixel_values_match_the_processor(
    model, tokenizer, processor, height, width, resized
) -> None:
    detector = GroundingDetector(model, tokenizer, image_size=800, max_size=1333)
    assert detector.resized_size(height, width) == resized
    check_pixels(detector, processor, random_image(height, width))


def detect_both_ways(
    model, tokenizer, processor, image: np.ndarray, present: list[str], image_resize="tensor"
) -> dict[str, int]:
    """Reference pipeline vs GroundingDetector end to end; returns the cases seen."""
    caption = build_captions(VOC, present, tokenizer)[0]
    inputs, outputs = official(processor, model, image, caption)
    thresholds = calibrate(outputs, inputs["input_ids"].shape[1])
    detector = GroundingDetector(
        model,
        tokenizer,
        *thresholds,
        image_size=800,
        max_size=1333,
        image_resize=image_resize,
        batch_mode="per_image",  # the processor's call: one image, caption padded to its length
    )
    (ours,) = detector([as_tensor(image)], [present], VOC)
    return compare(
        ours, processor, inputs, outputs, caption, present, tokenizer, thresholds, image.shape[:2]
    )


def needs_torchvision_backend(processor) -> None:
    if getattr(processor.image_processor, "backend", None) != "torchvision":
        pytest.skip("exact pixels need transformers 5's torchvision image processor")


@pytest.mark.parametrize("present", CLASS_LISTS, ids="+".join)
@pytest.mark.parametrize(("height", "width"), [(800, 800), (240, 320)], ids=["as-is", "resized"])
def test_detections_match_the_official_pipeline(
    model, tokenizer, processor, height, width, present
) -> None:
    if (height, width) != (800, 800):
        needs_torchvision_backend(processor)
    image = random_image(height, width, seed=height)
    counts = detect_both_ways(model, tokenizer, processor, image, present)
    assert counts["one_class"] + counts["several_classes"] >= 1


def test_detection_comparison_fails_with_another_resize(model, tokenizer, processor) -> None:
    """The check above can fail: PIL's resize (the released code's, ``image_resize: pil``)
    instead of the processor's changes the pixels by a grey level or two, and the detections."""
    needs_torchvision_backend(processor)
    image = random_image(240, 320, seed=240)
    detect_both_ways(model, tokenizer, processor, image, CLASS_LISTS[1])  # as-is: the same
    with pytest.raises(AssertionError) as failure:
        detect_both_ways(model, tokenizer, processor, image, CLASS_LISTS[1], image_resize="pil")
    print(f"pil resize fails at: {failure.traceback[-1].statement}")


@pytest.mark.sample_data
def test_real_image_matches_the_official_pipeline(sample_data, model, tokenizer, processor) -> None:
    needs_torchvision_backend(processor)
    image = real_image(sample_data)
    detector = GroundingDetector(model, tokenizer, image_size=800, max_size=1333)
    assert detector.resized_size(*image.shape[:2]) == (749, 1333)
    check_pixels(detector, processor, image)
    totals: dict[str, int] = {}
    for present in CLASS_LISTS:
        counts = detect_both_ways(model, tokenizer, processor, image, present)
        totals = {k: totals.get(k, 0) + v for k, v in counts.items()}
    # boxes with no class token, with one class's tokens and with several classes' tokens
    assert totals["unmatched"] >= 1 and totals["one_class"] >= 1 and totals["several_classes"] >= 1
