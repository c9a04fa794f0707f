"""Every model family loaded the way users get it: a folder (or file) given by path in a config.

Per family, a tiny random model is SAVED in its official layout (``save_pretrained`` of the model
and its processor) into a temp folder, named by path through the config's ``class_path`` /
``init_args`` exactly as a user writes it, and built by the ``label`` command's own code path
(``build_cli(..., cli_class=LabelCLI)`` -> ``OnlinePseudoLabels.setup`` -> ``build_labeler``).
Its outputs on the real VOC sample images are compared with the library's documented call
loading the same folder (``XxxProcessor.from_pretrained(DIR)`` -> ``XxxModel.from_pretrained(DIR)``
-> the processor's post-processing). Outputs are informative: the tiny models' output layers are
scaled in their saved weights and each threshold sits in a clear gap of the reference's own
scores (some boxes pass, some do not); every comparison has a perturbation that must fail.

SAM / HQ-SAM (official ``.pth`` state dicts) are covered by their one-line family / ViT-size
errors here: their official builders only make full-size ViTs (ViT-B: ~13 s per image on two CPU
cores), too slow for this file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from equivalence import assert_informative_masks, assert_scores_spread, compare_class_maps
from equivalence import threshold_margin as margin_of
from PIL import Image
from test_grounding_equivalence import (
    MIN_GAP,
    PREPROCESSOR_CONFIG,
    as_tensor,
    calibrate,
    compare,
    gap_threshold,
    official,
)

from wsss_pl.classes import VOC
from wsss_pl.errors import WeightsError
from wsss_pl.labeling.detectors.prompt import build_captions
from wsss_pl.labeling.detectors.tokenizer import bert_tokenizer
from wsss_pl.labeling.tiny import (
    scale_mask_logits,
    tiny_grounding_dino,
    tiny_mm_grounding_dino,
    tiny_omdet_turbo,
    tiny_omdet_turbo_processor,
    tiny_owlv2,
    tiny_owlv2_processor,
    tiny_sam,
    tiny_sam3,
    tiny_sam3_processor,
    tiny_sam3_tracker,
    tiny_sam3_tracker_processor,
)

pytestmark = pytest.mark.sample_data
IMAGES = ("2007_000032.jpg", "2007_000033.jpg")
CLASSES = list(VOC.class_names)


@pytest.fixture(scope="module")
def images(sample_data) -> list[np.ndarray]:
    root = sample_data / "voc_sample/VOC2012/JPEGImages"
    if not all((root / name).is_file() for name in IMAGES):
        pytest.skip(f"VOC sample images not found in {root}")
    return [np.asarray(Image.open(root / name).convert("RGB")) for name in IMAGES]


def build_from_config(tmp_path: Path, sample_data: Path, labels: dict[str, Any]) -> Any:
    """The labeller the ``label`` command builds from a config whose ``data.train_labels``
    init_args are ``labels`` (the detector / segmenter given by class_path and folder path)."""
    from wsss_pl.lightning_cli import LabelCLI, build_cli

    root = tmp_path / "images"
    if not root.is_dir():
        root.mkdir()
        for name in IMAGES:
            shutil.copy(sample_data / "voc_sample/VOC2012/JPEGImages" / name, root / name)
        (root / "labels.json").write_text(json.dumps({name: ["dog"] for name in IMAGES}))
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False},
        "model": {
            "net": {
                "class_path": "wsss_pl.models.deeplab_v2.DeepLabV2",
                "init_args": {"num_classes": 21, "backbone": "resnet18", "pretrained": None},
            }
        },
        "data": {
            "source": {
                "class_path": "wsss_pl.data.folder.ImageFolder",
                "init_args": {"root": str(root), "classes": CLASSES},
            },
            "train_labels": {
                "class_path": "wsss_pl.labeling.online.OnlinePseudoLabels",
                "init_args": {"cache_root": str(tmp_path / "cache"), **labels},
            },
            "batch_size": 2,
            "num_workers": 0,
            "pin_memory": False,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = build_cli(["--config", str(path)], run=False, cli_class=LabelCLI)
    online = cli.datamodule.train_labels
    online.setup(cli.datamodule.source)  # opens the cache: fingerprints (hashes) the folder
    return online.build_labeler()


def spec(class_path: str, **init_args: Any) -> dict[str, Any]:
    return {"class_path": class_path, "init_args": init_args}


# --- Grounding DINO and MM-Grounding-DINO ----------------------------------------------------
SHORTEST_EDGE = 256  # the folder's preprocessor and the config's detector_image_size (CPU time)


def save_grounding(directory: Path, mm: bool) -> Path:
    """A tiny (MM-)Grounding-DINO saved as a hub folder: model, BERT tokenizer and the
    grounding-dino-tiny preprocessor config at a shorter side of 256. Token logits scaled by 1/4 in the saved weights (the
    decoder's last layer norm feeds the contrastive head); MM's class bias set to -1."""
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

    model = tiny_mm_grounding_dino() if mm else tiny_grounding_dino()
    with torch.no_grad():
        norm = model.model.decoder.layer_norm
        norm.weight.mul_(0.25)
        norm.bias.mul_(0.25)
        if mm:
            for head in model.class_embed:
                head.bias.fill_(-1.0)
    model.save_pretrained(directory)
    small = {**PREPROCESSOR_CONFIG, "size": {"shortest_edge": SHORTEST_EDGE, "longest_edge": 1333}}
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(**small), tokenizer=bert_tokenizer()
    )
    processor.save_pretrained(directory)
    return directory


GROUNDING = {
    "grounding_dino": ("GroundingDinoSpec", "GroundingDinoForObjectDetection"),
    "mm_grounding_dino": ("MMGroundingDinoSpec", "MMGroundingDinoForObjectDetection"),
}


def grounding_reference(directory: Path, model_class: str, image: np.ndarray, present: list[str]):
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(directory)
    model = getattr(transformers, model_class).from_pretrained(directory).eval()
    caption = build_captions(VOC, present, processor.tokenizer)[0]
    inputs, outputs = official(processor, model, image, caption)
    return processor, caption, inputs, outputs


def grounding_labeller(tmp_path, sample_data, family: str, directory: Path, thresholds):
    """Our detector from a config; the rules of transformers' processor (``tensor`` resize, one
    image per forward, the best class token above the text threshold)."""
    labels = {
        "detector": spec(
            f"wsss_pl.labeling.detectors.{GROUNDING[family][0]}", model=str(directory)
        ),
        "sam_checkpoint": "tiny",
        "box_threshold": thresholds[0],
        "text_threshold": thresholds[1],
        "caption_style": "prompt_names",
        "phrase_rule": "best_class_token",
        "image_resize": "tensor",
        "clip_boxes": True,
        "batch_mode": "per_image",
        "detector_image_size": SHORTEST_EDGE,
    }
    return build_from_config(tmp_path, sample_data, labels).detector


@pytest.mark.parametrize("family", list(GROUNDING))
def test_grounding_folders_match_the_documented_call(tmp_path, sample_data, images, family) -> None:
    directory = save_grounding(tmp_path / family, mm=family == "mm_grounding_dino")
    present = ["dog", "horse", "sofa"]
    image = images[0]
    processor, caption, inputs, outputs = grounding_reference(
        directory, GROUNDING[family][1], image, present
    )
    thresholds = calibrate(outputs, inputs["input_ids"].shape[1])
    detector = grounding_labeller(tmp_path, sample_data, family, directory, thresholds)
    assert type(detector.model).__name__ == GROUNDING[family][1]
    (ours,) = detector([as_tensor(image)], [present], VOC)
    tokenizer = processor.tokenizer
    args = (processor, inputs, outputs, caption, present, tokenizer, thresholds, image.shape[:2])
    counts = compare(ours, *args)
    print(f"{family} from a folder vs the documented call: {counts}")
    assert counts["one_class"] + counts["several_classes"] >= 1
    # Must fail: the reference of the other class on the same folder (what the old loader did
    # to MM-Grounding-DINO: its class bias and logit scale dropped), or another image.
    if family == "mm_grounding_dino":
        _, _, bad_inputs, bad_outputs = grounding_reference(
            directory, GROUNDING["grounding_dino"][1], image, present
        )
    else:
        bad_inputs, bad_outputs = official(
            processor, detector.model, image[:, ::-1].copy(), caption
        )
    with pytest.raises(AssertionError):
        compare(ours, processor, bad_inputs, bad_outputs, *args[3:])


# --- OWLv2: more phrases than max_queries ----------------------------------------------------
def save_owlv2(directory: Path) -> Path:
    """A tiny OWLv2 folder; its query logits tamed in the saved weights (logit scale fixed at
    elu(-0.5) + 1 = 0.61, shift / 8) so that scores spread across thresholds."""
    model = tiny_owlv2()
    with torch.no_grad():
        model.class_head.logit_scale.weight.zero_()
        model.class_head.logit_scale.bias.fill_(-0.5)
        model.class_head.logit_shift.weight.mul_(0.125)
        model.class_head.logit_shift.bias.mul_(0.125)
    model.save_pretrained(directory)
    tiny_owlv2_processor().save_pretrained(directory)
    return directory


def owl_reference(directory: Path, image: np.ndarray, texts: list[str], threshold=None):
    """The documented one-image call with every query at once; threshold None: in a gap."""
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    processor = Owlv2Processor.from_pretrained(directory)
    model = Owlv2ForObjectDetection.from_pretrained(directory).eval()
    inputs = processor(images=Image.fromarray(image), text=[texts], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    if threshold is None:
        scores = outputs.logits[0].max(-1).values.sigmoid()
        threshold = gap_threshold(scores, 8, 40)
        print(f"OWLv2 scores: {assert_scores_spread(scores, threshold, 8, MIN_GAP)}")
    (result,) = processor.post_process_grounded_object_detection(
        outputs, threshold=threshold, target_sizes=[image.shape[:2]], text_labels=[texts]
    )
    return result, threshold


def assert_same_boxes(found, reference, queries) -> None:
    assert len(found) == len(reference["scores"]) >= 1
    torch.testing.assert_close(found.scores, reference["scores"], rtol=0, atol=1e-5)
    torch.testing.assert_close(found.boxes, reference["boxes"], rtol=0, atol=1e-3)
    assert found.labels.tolist() == [queries[j][2] for j in reference["labels"].tolist()]
    assert found.phrases == [queries[j][1] for j in reference["labels"].tolist()]


def test_owlv2_folder_with_more_phrases_than_max_queries(tmp_path, sample_data, images) -> None:
    from wsss_pl.labeling.detectors import class_queries

    directory = save_owlv2(tmp_path / "owlv2")
    present = [["dog", "horse", "diningtable"], ["tvmonitor", "pottedplant"]]
    queries = [class_queries(VOC, names, "a photo of a {}") for names in present]
    assert len(queries[0]) == 11 > 8  # dog, horse + 2 assist words, dining table + 6
    references = [
        owl_reference(directory, image, [q[0] for q in qs])
        for image, qs in zip(images, queries, strict=True)
    ]
    threshold = min(t for _, t in references)  # one box threshold: re-run both at it
    references = [
        owl_reference(directory, image, [q[0] for q in qs], threshold)[0]
        for image, qs in zip(images, queries, strict=True)
    ]
    labels = {
        "detector": spec("wsss_pl.labeling.detectors.OwlV2Spec", model=str(directory)),
        "sam_checkpoint": "tiny",
        "box_threshold": threshold,
        "detector_batch_size": 2,  # fixed batches of 2 images x 8 queries: rounds 8 + 3
    }
    detector = build_from_config(tmp_path, sample_data, labels).detector
    assert type(detector.model).__name__ == "Owlv2ForObjectDetection"
    assert detector.max_queries == 8
    found = detector([as_tensor(x) for x in images], present, VOC)
    for ours, reference, qs in zip(found, references, queries, strict=True):
        assert_same_boxes(ours, reference, qs)
    print(f"OWLv2 folder: {[len(f) for f in found]} boxes as the one-call reference")
    # Must fail: the rounds of 8 + 3 queries as separate calls (the old OWLv2 rounds).
    rounds = [
        owl_reference(directory, images[0], [q[0] for q in queries[0][s : s + 8]], threshold)[0]
        for s in (0, 8)
    ]
    rounds[1]["labels"] = rounds[1]["labels"] + 8
    per_round = {k: torch.cat([r[k] for r in rounds]) for k in ("scores", "boxes", "labels")}
    with pytest.raises(AssertionError):
        assert_same_boxes(found[0], per_round, queries[0])


# --- OmDet-Turbo -----------------------------------------------------------------------------
def test_omdet_turbo_folder_matches_the_documented_call(tmp_path, sample_data, images) -> None:
    from transformers import OmDetTurboForObjectDetection, OmDetTurboProcessor

    from wsss_pl.labeling.detectors import class_queries

    directory = tmp_path / "omdet"
    tiny_omdet_turbo().save_pretrained(directory)
    tiny_omdet_turbo_processor().save_pretrained(directory)
    processor = OmDetTurboProcessor.from_pretrained(directory)
    model = OmDetTurboForObjectDetection.from_pretrained(directory).eval()
    present = ["dog", "horse"]
    queries = class_queries(VOC, present, "{}")

    def reference(classes: list[str], threshold=None):
        inputs = processor(images=Image.fromarray(images[0]), text=classes, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        if threshold is None:
            scores = outputs.decoder_class_logits[0].sigmoid()
            threshold = gap_threshold(scores, 6, 30)
            print(f"OmDet-Turbo scores: {assert_scores_spread(scores, threshold, 6, MIN_GAP)}")
        (result,) = processor.post_process_grounded_object_detection(
            outputs, threshold=threshold, nms_threshold=0.5, target_sizes=[images[0].shape[:2]]
        )
        return result, threshold

    expected, threshold = reference([phrase for _, phrase, _ in queries])
    labels = {
        "detector": spec("wsss_pl.labeling.detectors.OmDetTurboSpec", model=str(directory)),
        "sam_checkpoint": "tiny",
        "box_threshold": threshold,
        "detector_batch_size": 2,
    }
    detector = build_from_config(tmp_path, sample_data, labels).detector
    assert type(detector.model).__name__ == "OmDetTurboForObjectDetection"
    (ours,) = detector([as_tensor(images[0])], [present], VOC)
    assert_same_boxes(ours, expected, queries)
    # Must fail: the classes in another order (another task prompt).
    reordered, _ = reference([phrase for _, phrase, _ in queries][::-1], threshold)
    reordered["labels"] = len(queries) - 1 - reordered["labels"]
    with pytest.raises(AssertionError):
        assert_same_boxes(ours, reordered, queries)


# --- SAM 3 (text prompts -> masks) ------------------------------------------------------------
def save_sam3(directory: Path) -> Path:
    """A tiny SAM 3 folder with ``informative_tiny("sam3")``'s output scales in its saved weights:
    query logits x256 (text and query projections x16 each), instance masks x2^14 (instance
    projection), semantic x2^6 (semantic projection)."""
    model = tiny_sam3()
    with torch.no_grad():
        for layer in (model.dot_product_scoring.text_proj, model.dot_product_scoring.query_proj):
            layer.weight.mul_(16.0)
            layer.bias.mul_(16.0)
        for layer, factor in (
            (model.mask_decoder.instance_projection, 2.0**14),
            (model.mask_decoder.semantic_projection, 2.0**6),
        ):
            layer.weight.mul_(factor)
            layer.bias.mul_(factor)
    model.save_pretrained(directory)
    tiny_sam3_processor().save_pretrained(directory)
    return directory


def test_sam3_folder_matches_the_documented_call(tmp_path, sample_data, images) -> None:
    from test_sam3 import PRESENT
    from test_sam3 import compare as compare_sam3
    from transformers import Sam3Model, Sam3Processor

    directory = save_sam3(tmp_path / "sam3")
    reference = (
        Sam3Model.from_pretrained(directory).eval(),
        Sam3Processor.from_pretrained(directory),
    )
    crops = [images[0], np.ascontiguousarray(images[0][:200, 120:420])]

    def from_config(box_threshold: float, mask_threshold: float):
        labels = {
            "detector": spec(
                "wsss_pl.labeling.detectors.Sam3Spec",
                model=str(directory),
                mask_threshold=mask_threshold,
            ),
            "sam_checkpoint": "tiny",
            "box_threshold": box_threshold,
            "detector_batch_size": 2,
        }
        labeller = build_from_config(tmp_path, sample_data, labels)
        assert labeller.segmenter is None and type(labeller.detector.model) is Sam3Model
        return labeller.detector

    totals = compare_sam3(reference, crops, make_detector=from_config)
    print(f"SAM 3 folder vs the documented call ({PRESENT}): {totals}")
    assert totals["instances"] >= 6
    with pytest.raises(AssertionError):  # must fail: another mask threshold
        compare_sam3(reference, crops, 0.45, make_detector=from_config)


# --- SAM 2.1 and the SAM 3 tracker (box -> mask) ----------------------------------------------
BOXES = torch.tensor([[40.0, 30, 300, 260], [200, 60, 480, 270]])  # on the 500 x 281 image


def save_sam2(directory: Path) -> Path:
    from transformers import Sam2ImageProcessor, Sam2Processor

    from wsss_pl.labeling.tiny import tiny_sam2

    scale_mask_logits(tiny_sam2(), 2.0**20).save_pretrained(directory)
    Sam2Processor(image_processor=Sam2ImageProcessor()).save_pretrained(directory)
    return directory


def save_sam3_tracker(directory: Path) -> Path:
    tiny_sam3_tracker(mask_logit_scale=2.0**18).save_pretrained(directory)
    tiny_sam3_tracker_processor().save_pretrained(directory)
    return directory


SEGMENTERS = {
    "sam2": ("Sam2Spec", "Sam2Model", "Sam2Processor", save_sam2),
    "sam3_tracker": (
        "Sam3TrackerSpec",
        "Sam3TrackerModel",
        "Sam3TrackerProcessor",
        save_sam3_tracker,
    ),
}


@pytest.mark.parametrize("family", list(SEGMENTERS))
def test_segmenter_folders_match_the_documented_call(tmp_path, sample_data, images, family) -> None:
    import transformers

    spec_name, model_class, processor_class, save = SEGMENTERS[family]
    directory = save(tmp_path / family)
    processor = getattr(transformers, processor_class).from_pretrained(directory)
    model = getattr(transformers, model_class).from_pretrained(directory).eval()
    image = as_tensor(images[0])

    def reference(boxes: torch.Tensor) -> torch.Tensor:
        inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs, multimask_output=False)
        logits = processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], binarize=False
        )
        return logits[0][:, 0]

    logits = reference(BOXES)
    print(f"{family} reference: {assert_informative_masks(logits, BOXES)}")
    labels = {
        "detector": "tiny",
        "sam_checkpoint": "tiny",
        "segmenter": spec(f"wsss_pl.labeling.segmenters.{spec_name}", model=str(directory)),
    }
    segmenter = build_from_config(tmp_path, sample_data, labels).segmenter
    assert type(segmenter.model).__name__ == model_class
    ((masks, _),) = segmenter([image], [BOXES])
    assert torch.equal(masks, logits > 0)
    # Must fail: boxes 4 px off.
    shifted = reference(BOXES + 4.0)
    assert compare_class_maps(masks, shifted > 0, margin_of(shifted), 1e-3).unexcused >= 100


# --- a folder or file of another family: one line naming what it holds and the spec --------
def test_a_folder_of_another_family_names_the_spec_that_fits(tmp_path) -> None:
    from wsss_pl.labeling.detectors import GroundingDinoSpec, MMGroundingDinoSpec, OwlV2Spec
    from wsss_pl.labeling.segmenters import Sam2Spec, SamSpec

    mm = tmp_path / "mm"
    tiny_mm_grounding_dino().save_pretrained(mm)
    with pytest.raises(WeightsError) as error:
        GroundingDinoSpec(str(mm)).settings()
    message = str(error.value)
    assert "\n" not in message and str(mm) in message and "'mm-grounding-dino'" in message
    assert "MMGroundingDinoSpec" in message
    with pytest.raises(WeightsError, match=r"'mm-grounding-dino'.*MMGroundingDinoSpec"):
        OwlV2Spec(str(mm)).settings()
    with pytest.raises(WeightsError, match=r"'mm-grounding-dino'.*use .*MMGroundingDinoSpec"):
        Sam2Spec(str(mm)).settings()
    assert MMGroundingDinoSpec(str(mm)).settings()["family"] == "mm_grounding_dino"  # fits
    with pytest.raises(WeightsError, match=r"is a model folder holding .*'mm-grounding-dino'"):
        SamSpec(model_type="vit_b", checkpoint=str(mm), download=False).settings()


def test_bad_folders_and_sam_files_are_one_line_errors(tmp_path) -> None:
    from wsss_pl.labeling.detectors import GroundingDinoSpec
    from wsss_pl.labeling.segmenters import HQSamSpec, SamSegmenter

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="no config.json"):
        GroundingDinoSpec(str(empty)).settings()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match=r"config.json is not readable JSON"):
        GroundingDinoSpec(str(broken)).settings()
    unknown = tmp_path / "bert"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(WeightsError, match=r"'bert'.*no wsss_pl spec"):
        GroundingDinoSpec(str(unknown)).settings()
    # A folder whose weights lack what the class needs: an error, not random weights.
    partial = tmp_path / "partial"
    tiny_grounding_dino().save_pretrained(partial)
    from safetensors.torch import load_file, save_file

    state = load_file(partial / "model.safetensors")
    save_file(
        {k: v for k, v in state.items() if "bbox_embed" not in k}, partial / "model.safetensors"
    )
    from wsss_pl.labeling.detectors import DetectorOptions

    with pytest.raises(WeightsError, match=r"lacks \d+ weights of GroundingDinoForObjectDetection"):
        GroundingDinoSpec(str(partial)).build(DetectorOptions())
    # segment-anything files: the other SAM family, the other ViT size, not SAM at all.
    plain = tmp_path / "sam.pth"
    torch.save(tiny_sam().state_dict(), plain)
    with pytest.raises(WeightsError, match=r"plain segment-anything SAM checkpoint.*SamSpec"):
        HQSamSpec(model_type="vit_b", checkpoint=str(plain)).build()
    with pytest.raises(
        WeightsError, match=r"SAM weights of a ViT of width 32, not vit_h: not an official"
    ):
        SamSegmenter.from_checkpoint("vit_h", plain)
    vit_b = tmp_path / "vit_b.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}, vit_b)
    with pytest.raises(
        WeightsError,
        match=r"SAM weights of vit_b \(width 768\), not vit_h: set model_type: vit_b on SamSpec",
    ):
        SamSegmenter.from_checkpoint("vit_h", vit_b)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(WeightsError, match=r"holds no SAM weights"):
        SamSegmenter.from_checkpoint("vit_h", other)
