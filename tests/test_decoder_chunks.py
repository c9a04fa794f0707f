"""SAM-family mask decoders run an image's boxes in fixed-size chunks (``sam_decoder_batch_size``):
bounded memory, masks bit-identical whatever the box count, the chunk size fingerprinted, and the
label pass reports each model's padding rows."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from wsss_pl.classes import VOC
from wsss_pl.data.datamodule import WSSSDataModule
from wsss_pl.data.folder import ImageFolder
from wsss_pl.labeling.label_pass import run_label_pass
from wsss_pl.labeling.labeller_factory import build_segmenter
from wsss_pl.labeling.online import OnlinePseudoLabels
from wsss_pl.labeling.segmenters import HQSamSpec, Sam2Spec, Sam3TrackerSpec, SamSegmenter
from wsss_pl.labeling.segmenters.chunks import PaddingCounts, decode_in_chunks
from wsss_pl.labeling.tiny import informative_tiny, vit_b_shaped_sam


@pytest.fixture(scope="module")
def image(sample_data: Path) -> Tensor:
    """A 160x200 crop of a real VOC image (small masks keep the tests fast)."""
    path = sorted((sample_data / "voc_sample/VOC2012/JPEGImages").glob("*.jpg"))[0]
    pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)
    return pixels[:, 100:260, 150:350].contiguous()


def _boxes(image: Tensor, count: int, seed: int = 0) -> Tensor:
    """``count`` random xyxy boxes inside the image, at least 8 px wide and high."""
    height, width = image.shape[-2:]
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width - 40, height - 40])
    size = 8 + torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) / 2
    far = torch.minimum(corner + size, torch.tensor([float(width), float(height)]))
    return torch.cat([corner, far], dim=1)


@pytest.fixture(scope="module")
def vit_b(image: Tensor) -> tuple[SamSegmenter, dict, tuple[int, int]]:
    """SAM ViT-B's real 256-wide decoder (random weights) at a 256 px input, and the decoder
    inputs of ``image`` (encoded once: these tests are about the decoder)."""
    segmenter = SamSegmenter(vit_b_shaped_sam(256), encoder_batch_size=1, fixed_batch=True)
    pixels, input_size = segmenter._input_image(image)
    with torch.no_grad():
        (inputs,) = segmenter._encode(pixels[None])
    return segmenter, inputs, input_size


def _segment(segmenter, image: Tensor, boxes: Tensor, chunk: int, fixed: bool = True):
    """(masks, scores) of ``boxes`` through ``segmenter`` (or, for the ``vit_b`` fixture, its
    decoder on the cached embedding) at decoder chunks of ``chunk``."""
    if isinstance(segmenter, tuple):
        segmenter, inputs, input_size = segmenter
        segmenter.decoder_batch_size, segmenter.fixed_batch = chunk, fixed
        with torch.no_grad():
            return segmenter._decode(inputs, boxes, input_size, image)
    segmenter.decoder_batch_size, segmenter.fixed_batch = chunk, fixed
    ((masks, scores),) = segmenter([image], [boxes])
    return masks, scores


@pytest.mark.sample_data
def test_a_box_mask_does_not_depend_on_its_images_box_count(vit_b, image) -> None:
    boxes = _boxes(image, 11)
    many = _segment(vit_b, image, boxes, 4)  # chunks [0..4), [4..8), [8..11) + 1 copy
    few = _segment(vit_b, image, boxes[:3], 4)  # one chunk, 1 copy of box 2
    alone = _segment(vit_b, image, boxes[5:6], 4)  # box 5 at position 0 instead of 1
    assert many[0].shape == (11, *image.shape[-2:]) and many[0][:3].any()
    assert torch.equal(few[0], many[0][:3]) and torch.equal(few[1], many[1][:3])
    assert torch.equal(alone[0][0], many[0][5]) and torch.equal(alone[1][0], many[1][5])
    # The check can fail: unpadded calls of 3 and 11 rows give other bits for the same boxes.
    loose = _segment(vit_b, image, boxes, 11, fixed=False)
    loose_few = _segment(vit_b, image, boxes[:3], 11, fixed=False)
    assert not torch.equal(loose_few[1], loose[1][:3])


@pytest.mark.sample_data
def test_chunks_equal_one_call_on_the_padded_chunk(vit_b, image) -> None:
    boxes = _boxes(image, 7, seed=1)
    masks, scores = _segment(vit_b, image, boxes, 4)
    padded_tail = torch.cat([boxes[4:], boxes[-1:]])  # rows 4..6 + a copy of the last box
    for rows, call in ((slice(0, 4), boxes[:4]), (slice(4, 7), padded_tail)):
        one_masks, one_scores = _segment(vit_b, image, call, 1000, fixed=False)
        n = rows.stop - rows.start
        assert torch.equal(masks[rows], one_masks[:n]) and torch.equal(scores[rows], one_scores[:n])
    counts = vit_b[0].padding["sam_decoder"]
    assert counts.rows >= 8 and counts.padding >= 1


def test_decode_in_chunks_bounds_calls_and_counts_padding() -> None:
    calls: list[int] = []

    def decode(chunk: Tensor) -> tuple[Tensor, Tensor]:
        calls.append(chunk.shape[0])
        return chunk[:, :2].clone(), chunk[:, 0].clone()

    boxes = torch.arange(44.0).reshape(11, 4)
    counts = PaddingCounts()
    masks, scores = decode_in_chunks(boxes, 4, True, decode, counts)
    assert calls == [4, 4, 4] and (counts.rows, counts.padding) == (12, 1)
    assert torch.equal(masks, boxes[:, :2]) and torch.equal(scores, boxes[:, 0])
    calls.clear()
    decode_in_chunks(boxes, 4, False, decode)
    assert calls == [4, 4, 3]
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="sam_decoder_batch_size must be an integer >= 1"):
            decode_in_chunks(boxes, bad, True, decode)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="N >= 1"):
        decode_in_chunks(boxes[:0], 4, True, decode)


@pytest.mark.sample_data
@pytest.mark.parametrize("spec", ["hq_sam", "sam2", "sam3_tracker"])
def test_every_box_prompted_sam_family_decodes_in_chunks(spec: str, image) -> None:
    """HQ-SAM, SAM 2.1 and the SAM 3 tracker go through the same chunking (SAM: above)."""
    built = {
        "hq_sam": lambda: build_segmenter(HQSamSpec(checkpoint="tiny"), encoder_batch_size=1),
        "sam2": lambda: build_segmenter(Sam2Spec(model="tiny"), encoder_batch_size=1),
        "sam3_tracker": lambda: build_segmenter(
            Sam3TrackerSpec(model="tiny"), encoder_batch_size=1
        ),
    }[spec]()
    if spec != "sam3_tracker":  # informative weights: masks well away from the threshold
        inner = "sam" if spec == "hq_sam" else "model"
        setattr(built, inner, informative_tiny(spec).eval())
    boxes = _boxes(image, 5, seed=2)
    built.fixed_batch = True
    masks, scores = _segment(built, image, boxes, 2)
    counts = built.padding["sam_decoder"]
    assert (counts.rows, counts.padding) == (6, 1)  # 3 calls of exactly 2 boxes
    assert built.padding["sam_encoder"].rows == 1
    whole, whole_scores = _segment(built, image, boxes, 5, fixed=False)
    assert masks.shape == whole.shape and scores.shape == (5,)
    assert (masks != whole).float().mean() < 1e-3  # same masks up to float noise at the edge
    torch.testing.assert_close(scores, whole_scores, rtol=1e-4, atol=1e-5)


def test_fingerprint_holds_the_decoder_chunk_size(tmp_path: Path) -> None:
    def settings(**options) -> dict:
        labels = OnlinePseudoLabels(
            cache_root=str(tmp_path), detector="tiny", sam_checkpoint="tiny", **options
        )
        return labels.settings(VOC)

    default = settings()
    assert default["sam_decoder_batch_size"] == 8
    assert settings(sam_decoder_batch_size=16) != default
    assert settings(sam_decoder_batch_size=8) == default
    for bad in (0, True, "8"):
        with pytest.raises(ValueError, match="sam_decoder_batch_size must be an integer >= 1"):
            OnlinePseudoLabels(detector="tiny", sam_checkpoint="tiny", sam_decoder_batch_size=bad)


# --- the label pass reports padding ------------------------------------------------------------
def _mixed_folder(tmp_path: Path, sample_data: Path) -> Path:
    """The 3 VOC samples (3 detector shapes) and 3 COCO images (2 more shapes)."""
    root = tmp_path / "images"
    root.mkdir()
    voc = sorted((sample_data / "voc_sample/VOC2012/JPEGImages").glob("*.jpg"))
    coco = sorted((sample_data / "coco_sample/train2017").glob("*.jpg"))
    labels = {}
    for i, path in enumerate([*voc, coco[7], coco[9], coco[10]]):
        shutil.copy(path, root / path.name)
        labels[path.name] = [["person"], ["dog", "person"], ["horse"]][i % 3]
    (root / "labels.json").write_text(json.dumps(labels))
    return root


@pytest.mark.sample_data
def test_label_pass_reports_and_warns_about_padding(tmp_path, sample_data, capsys, caplog) -> None:
    root = _mixed_folder(tmp_path, sample_data)
    labels = OnlinePseudoLabels(
        cache_root=str(tmp_path / "cache"), detector="tiny", sam_checkpoint="tiny", write_workers=0
    )
    source = ImageFolder(str(root), list(VOC.class_names), name="mixed")
    data = WSSSDataModule(source, labels, batch_size=8, val_batch_size=1, num_workers=0,
                          crop_size=33, pin_memory=False)  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with caplog.at_level(logging.WARNING, logger="wsss_pl.labeling.label_pass"):
        assert run_label_pass(trainer, data) == 0
    shapes: dict[tuple[int, int], int] = {}
    for path in root.glob("*.jpg"):
        width, height = Image.open(path).size
        shape = labels.detector_input_size(height, width)
        shapes[shape] = shapes.get(shape, 0) + 1
    expected_rows = sum(-(-n // 4) * 4 for n in shapes.values())
    assert labels.cache is not None
    report = json.loads((labels.cache.directory / "label_pass/rank0.json").read_text())
    detector = report["padding"]["detector"]
    assert detector["rows"] == expected_rows and detector["padding_rows"] == expected_rows - 6
    assert set(report["padding"]) == {"detector", "sam_encoder", "sam_decoder"}
    printed = capsys.readouterr().out
    assert "padding rows per model (rank 0): detector" in printed
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "detector:" in warned and "detector_batch_size" in warned
    assert "sam_decoder_batch_size" in warned  # 1-3 boxes per image in chunks of 8
