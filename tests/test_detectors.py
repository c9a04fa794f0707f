"""The pluggable detectors (``detector:`` class_path) against their libraries' own reference calls.

- Grounding DINO as a ``GroundingDinoSpec`` is the plain ``detector:`` string: same cache
  fingerprint, byte-identical label PNGs on the real samples.
- MM-Grounding-DINO through ``GroundingDetector`` against transformers' own pipeline
  (``GroundingDinoProcessor`` -> ``MMGroundingDinoForObjectDetection`` ->
  ``post_process_grounded_object_detection``), with the Grounding DINO test's comparison.
- OWLv2 (``OwlV2Detector``) against ``Owlv2Processor`` -> ``Owlv2ForObjectDetection`` ->
  ``post_process_grounded_object_detection``: same boxes above the threshold, same order, scores
  within 1e-5, boxes within 1e-3 px, each box's class the class of the reference's query, whether
  the image runs alone or in a fixed batch of two with padded queries, and whatever its number
  of phrases (rounds of ``max_queries`` merged into the one-call result).

Tiny random models (``informative_tiny``): their token / query logits are scaled so that scores
spread across the box threshold, which sits in the widest gap of the reference's own scores
(``gap_threshold``: no score within 1e-3 of it). Each comparison has a sibling that must fail.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from equivalence import assert_scores_spread
from PIL import Image
from test_grounding_equivalence import (
    MIN_GAP,
    as_tensor,
    detect_both_ways,
    gap_threshold,
    real_image,
)
from test_grounding_equivalence import processor as processor  # noqa: F401  (fixture)
from test_grounding_equivalence import tokenizer as tokenizer  # noqa: F401  (fixture)

from wsss_pl.classes import VOC
from wsss_pl.data.datamodule import WSSSDataModule
from wsss_pl.data.folder import ImageFolder
from wsss_pl.labeling.detectors import (
    DetectorOptions,
    GroundingDinoSpec,
    MMGroundingDinoSpec,
    OmDetTurboDetector,
    OmDetTurboSpec,
    OwlV2Detector,
    OwlV2Spec,
    class_queries,
)
from wsss_pl.labeling.label_pass import run_label_pass
from wsss_pl.labeling.labeller_factory import build_detector
from wsss_pl.labeling.online import OnlinePseudoLabels
from wsss_pl.labeling.tiny import (
    informative_tiny,
    tiny_omdet_turbo,
    tiny_omdet_turbo_processor,
    tiny_owlv2_processor,
)

CLASS_LISTS = [["dog"], ["dog", "horse", "sofa"], ["tvmonitor", "pottedplant"]]


# --- Grounding DINO: the default is unchanged --------------------------------------------------
def test_string_and_spec_give_one_fingerprint() -> None:
    plain = OnlinePseudoLabels(detector="tiny", sam_checkpoint="tiny")
    spec = OnlinePseudoLabels(detector=GroundingDinoSpec("tiny"), sam_checkpoint="tiny")
    assert plain.settings(VOC) == spec.settings(VOC)
    assert plain.settings(VOC)["detector"] == {"name": "tiny", "seed": 0}  # as before detectors
    other = OnlinePseudoLabels(detector=MMGroundingDinoSpec("tiny"), sam_checkpoint="tiny")
    assert other.settings(VOC)["detector"] != plain.settings(VOC)["detector"]


def _folder(tmp_path: Path, sample_data: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    paths = sorted((sample_data / "voc_sample/VOC2012/JPEGImages").glob("*.jpg"))[:2]
    paths += sorted((sample_data / "coco_sample/train2017").glob("*.jpg"))[7:8]
    classes = [["person"], ["dog", "person"], ["horse", "tvmonitor"]]
    for path in paths:
        shutil.copy(path, root / path.name)
    labels = {p.name: c for p, c in zip(paths, classes, strict=True)}
    (root / "labels.json").write_text(json.dumps(labels))
    return root


def label_pass(root: Path, cache: Path, detector) -> tuple[str, dict[str, bytes]]:
    source = ImageFolder(str(root), list(VOC.class_names), name="mixed")
    labels = OnlinePseudoLabels(cache_root=str(cache), detector=detector, sam_checkpoint="tiny")
    data = WSSSDataModule(
        source, labels, batch_size=4, val_batch_size=1, num_workers=0, crop_size=33,
        pin_memory=False,
    )  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert run_label_pass(trainer, data) == 0
    assert labels.cache is not None
    pngs = {p.name: p.read_bytes() for p in sorted(labels.cache.directory.glob("*.png"))}
    return labels.cache.directory.name, pngs


@pytest.mark.sample_data
def test_spec_labels_are_byte_identical_to_the_string_default(tmp_path, sample_data) -> None:
    root = _folder(tmp_path, sample_data)
    name, plain = label_pass(root, tmp_path / "plain", "tiny")
    spec_name, spec = label_pass(root, tmp_path / "spec", GroundingDinoSpec("tiny"))
    assert name == spec_name and len(plain) == 3 and plain == spec
    painted = [np.asarray(Image.open(p)).any() for p in (tmp_path / "plain").rglob("*.png")]
    assert any(painted)  # boxes matched classes: the comparison covers masks


# --- MM-Grounding-DINO -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def mm_model():
    return informative_tiny("mm_grounding_dino")


@pytest.mark.sample_data
def test_mm_grounding_dino_matches_the_official_pipeline(
    sample_data, mm_model, tokenizer, processor
) -> None:
    image = real_image(sample_data)
    totals: dict[str, int] = {}
    for present in CLASS_LISTS:
        counts = detect_both_ways(mm_model, tokenizer, processor, image, present)
        totals = {k: totals.get(k, 0) + v for k, v in counts.items()}
    print(f"MM-Grounding-DINO vs reference on {image.shape[:2]}: {totals}")
    assert totals["one_class"] >= 1 and totals["boxes"] >= 12


@pytest.mark.sample_data
def test_mm_grounding_dino_comparison_fails_with_another_resize(
    sample_data, mm_model, tokenizer, processor
) -> None:
    image = real_image(sample_data)
    with pytest.raises(AssertionError):
        detect_both_ways(mm_model, tokenizer, processor, image, CLASS_LISTS[1], image_resize="pil")


def test_mm_grounding_dino_spec_builds_a_per_image_softmax_detector() -> None:
    detector = build_detector(MMGroundingDinoSpec("tiny"), DetectorOptions())
    patched = [m for m in detector.modules() if type(m).__name__.startswith("PerImage")]
    assert len(patched) == 1  # the bi-attention's batch-wide max shift is taken per image


# --- OWLv2 -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def owl():
    return informative_tiny("owlv2"), tiny_owlv2_processor()


def owl_reference(model, processor, image: np.ndarray, texts: list[str], threshold=None):
    """The documented OWLv2 call on one image; threshold None: calibrate it in a score gap."""
    inputs = processor(images=Image.fromarray(image), text=[texts], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    if threshold is None:
        scores = outputs.logits[0].max(-1).values.sigmoid()
        threshold = gap_threshold(scores, 4, 12)
        spread = assert_scores_spread(scores, threshold, min_each_side=4, min_gap=MIN_GAP)
        print(f"OWLv2 reference scores around {threshold:.3f}: {spread}")
    (result,) = processor.post_process_grounded_object_detection(
        outputs, threshold=threshold, target_sizes=[image.shape[:2]], text_labels=[texts]
    )
    return inputs, result, threshold


def owl_both_ways(
    owl, images: list[np.ndarray], present: list[list[str]], template="a photo of a {}"
) -> int:
    """Reference per image (one call, all its queries) vs OwlV2Detector on all images at once
    (fixed batch of 2, 4 queries per forward: the images' 1-11 phrases run in padded rounds,
    merged). Returns the boxes compared."""
    model, processor = owl
    references = []
    for image, names in zip(images, present, strict=True):
        queries = class_queries(VOC, names, "a photo of a {}")
        references.append(
            (queries, *owl_reference(model, processor, image, [q[0] for q in queries]))
        )
    compared = 0
    for k, image in enumerate(images):
        queries, inputs, reference, threshold = references[k]
        detector = OwlV2Detector(
            model, processor, threshold, batch_size=2, query_template=template, max_queries=4
        )
        assert torch.equal(detector.pixel_values([as_tensor(image)]), inputs["pixel_values"])
        found = detector([as_tensor(x) for x in images], present, VOC)[k]
        # An image with more than 4 phrases runs in rounds of 4 queries: merged, they must be
        # the reference's one call with every query.
        assert len(found) == len(reference["scores"]) >= 1
        assert found.num_unmatched == 0
        torch.testing.assert_close(found.scores, reference["scores"], rtol=0, atol=1e-5)
        torch.testing.assert_close(found.boxes, reference["boxes"], rtol=0, atol=1e-3)
        assert found.labels.tolist() == [queries[j][2] for j in reference["labels"].tolist()]
        assert found.phrases == [queries[j][1] for j in reference["labels"].tolist()]
        compared += len(found)
    return compared


@pytest.mark.sample_data
def test_owlv2_matches_the_official_pipeline(sample_data, owl) -> None:
    image = real_image(sample_data)
    other = np.ascontiguousarray(image[:200, 100:400])
    present = [["dog", "horse", "diningtable"], ["tvmonitor", "pottedplant"]]
    compared = owl_both_ways(owl, [image, other], present)
    print(f"OWLv2: {compared} boxes identical to the reference's")
    assert compared >= 8


@pytest.mark.sample_data
def test_owlv2_comparison_fails_with_another_query_text(sample_data, owl) -> None:
    image = real_image(sample_data)
    with pytest.raises(AssertionError):
        owl_both_ways(owl, [image], [["dog", "horse"]], template="{}")


def test_owlv2_spec_fingerprint_and_input_size() -> None:
    spec = OwlV2Spec("tiny")
    assert spec.settings()["query_template"] == "a photo of a {}"
    assert spec.input_size(281, 500, DetectorOptions()) == spec.input_size(
        500, 20, DetectorOptions()
    )
    with pytest.raises(ValueError, match="query_template"):
        OwlV2Spec("tiny", query_template="a photo")


# --- OmDet-Turbo -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def omdet():
    return tiny_omdet_turbo(), tiny_omdet_turbo_processor()


def omdet_both_ways(
    omdet, images: list[np.ndarray], present: list[list[str]], reorder: bool = False
) -> int:
    """Reference per image (processor -> model -> post-processing with NMS 0.5) vs
    OmDetTurboDetector on both images in one fixed batch of 2 (``reorder``: ours gets each
    image's classes in reverse order, which changes the task prompt). Returns the boxes compared."""
    model, processor = omdet
    compared = 0
    for k, (image, names) in enumerate(zip(images, present, strict=True)):
        classes = [phrase for _, phrase, _ in class_queries(VOC, names, "{}")]
        inputs = processor(images=Image.fromarray(image), text=classes, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        scores = outputs.decoder_class_logits[0].sigmoid()
        threshold = gap_threshold(scores, 6, 30)
        spread = assert_scores_spread(scores, threshold, min_each_side=6, min_gap=MIN_GAP)
        print(f"OmDet-Turbo reference scores around {threshold:.3f}: {spread}")
        (reference,) = processor.post_process_grounded_object_detection(
            outputs, threshold=threshold, nms_threshold=0.5, target_sizes=[image.shape[:2]]
        )
        detector = OmDetTurboDetector(model, processor, threshold, batch_size=2)
        ours = [p[::-1] for p in present] if reorder else present
        found = detector([as_tensor(x) for x in images], ours, VOC)[k]
        queries = class_queries(VOC, names, "{}")
        assert len(found) == len(reference["scores"]) >= 2
        torch.testing.assert_close(found.scores, reference["scores"], rtol=0, atol=1e-5)
        torch.testing.assert_close(found.boxes, reference["boxes"], rtol=0, atol=1e-3)
        assert found.labels.tolist() == [queries[j][2] for j in reference["labels"].tolist()]
        compared += len(found)
    return compared


@pytest.mark.sample_data
def test_omdet_turbo_matches_the_official_pipeline(sample_data, omdet) -> None:
    image = real_image(sample_data)
    other = np.ascontiguousarray(image[:200, 100:400])
    compared = omdet_both_ways(omdet, [image, other], [["dog", "horse"], ["tvmonitor", "cat"]])
    print(f"OmDet-Turbo: {compared} boxes identical to the reference's")
    assert compared >= 4


@pytest.mark.sample_data
def test_omdet_turbo_comparison_fails_with_another_class_order(sample_data, omdet) -> None:
    image = real_image(sample_data)
    with pytest.raises(AssertionError):
        omdet_both_ways(omdet, [image], [["dog", "horse"]], reorder=True)


# --- batching: an image's detections never depend on its batch mates (fixed mode) -------------
@pytest.mark.sample_data
@pytest.mark.parametrize(
    "spec",
    [MMGroundingDinoSpec("tiny"), OwlV2Spec("tiny"), OmDetTurboSpec("tiny")],
    ids=["mm_grounding_dino", "owlv2", "omdet_turbo"],
)
def test_fixed_batches_give_bit_identical_detections(sample_data, spec) -> None:
    image = as_tensor(real_image(sample_data))
    mate = torch.flip(image, dims=[-1]).contiguous()  # same shape, other content
    detector = build_detector(spec, DetectorOptions(box_threshold=0.05, batch_size=2))
    present = [["dog", "horse"], ["tvmonitor", "cat"]]  # 4 phrases each
    alone = detector([image], present[:1], VOC)[0]
    batched = detector([mate, image], present[::-1], VOC)[1]
    assert len(alone) >= 1
    assert torch.equal(alone.scores, batched.scores) and torch.equal(alone.boxes, batched.boxes)
    assert torch.equal(alone.labels, batched.labels)
    # Can fail: the mate's own detections differ from the image's.
    assert not torch.equal(detector([mate], present[:1], VOC)[0].scores, alone.scores)
