"""Box prompts from annotations: SAM masks for the dataset's own boxes (tiny random SAM)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_pl.classes import COCO as COCO_VOCABULARY
from wsss_pl.classes import VOC
from wsss_pl.data.coco import COCO
from wsss_pl.data.collate import collate_samples
from wsss_pl.data.synthetic import SyntheticVOC
from wsss_pl.errors import DataError, UnknownClassError
from wsss_pl.labeling.box_prompts import (
    BoxLabeler,
    BoxPromptLabels,
    ImageBoxes,
    coco_boxes,
    json_boxes,
    voc_xml_boxes,
    yolo_boxes,
)
from wsss_pl.labeling.storage.cache import decode_rle
from wsss_pl.labeling.tiny import tiny_segmenter


def _centres_inside(box: list[float], height: int, width: int) -> torch.Tensor:
    """bool [H, W]: pixels whose centre (x + 0.5, y + 0.5) lies in [x1, x2) x [y1, y2)."""
    x1, y1, x2, y2 = box
    xs, ys = torch.arange(width) + 0.5, torch.arange(height) + 0.5
    return ((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None, :]


def test_voc_xml_boxes_are_zero_based_xyxy(tmp_path: Path) -> None:
    xml = tmp_path / "a.xml"
    xml.write_text(
        "<annotation><object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin>"
        "<ymin>11</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object><object><name>cat</name>"
        "<difficult>1</difficult><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>7</xmax><ymax>8</ymax>"
        "</bndbox></object></annotation>"
    )
    boxes = voc_xml_boxes(xml, VOC)
    assert boxes.boxes.tolist() == [[0, 10, 20, 30], [4, 5, 7, 8]]
    assert boxes.labels.tolist() == [VOC.label_id("dog"), VOC.label_id("cat")]
    assert voc_xml_boxes(xml, VOC, include_difficult=False).labels.tolist() == [VOC.label_id("dog")]
    xml.write_text("<annotation><object><name>doggo</name></object></annotation>")
    with pytest.raises(UnknownClassError, match="doggo"):
        voc_xml_boxes(xml, VOC)


def test_json_and_yolo_box_files(tmp_path: Path) -> None:
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"x": [{"box": [1, 2, 11, 22], "class": "cat", "crowd": True}]}))
    boxes = json_boxes(path, VOC)["x"]
    assert boxes.boxes.tolist() == [[1, 2, 11, 22]] and boxes.crowd.tolist() == [True]
    path.write_text(json.dumps({"x": [{"box": [5, 2, 1, 22], "class": "cat"}]}))
    with pytest.raises(DataError, match="x2 > x1"):
        json_boxes(path, VOC)
    yolo = tmp_path / "y.txt"
    yolo.write_text("11 0.5 0.5 0.5 0.25\n")  # class index 11 = dog (0-based)
    boxes = yolo_boxes(yolo, 40, 80, VOC)
    assert boxes.boxes.tolist() == [[20, 15, 60, 25]] and boxes.labels.tolist() == [12]


def test_labeler_one_mask_per_box_and_crowd_is_ignore() -> None:
    image = torch.randint(0, 255, (3, 60, 90), dtype=torch.uint8)
    boxes = ImageBoxes(
        torch.tensor([[5.0, 5, 40, 50], [30, 10, 80, 40], [60, 40, 90, 60]]),
        torch.tensor([3, 8, 15]),
        torch.tensor([False, False, True]),
    )
    labeler = BoxLabeler(tiny_segmenter(), VOC)
    (result,) = labeler([image], [boxes], [["bird", "cat", "person", "dog"]])
    assert len(result.metadata["instances"]) == 2  # the crowd box is no instance
    masks = [decode_rle(i["rle"]) for i in result.metadata["instances"]]
    assert all(m.shape == (60, 90) for m in masks)
    covered = masks[0] | masks[1]
    crowd = torch.zeros(60, 90, dtype=torch.bool)
    crowd[40:60, 60:90] = True
    assert bool((result.label[crowd & ~covered] == 255).all())
    assert not bool((result.label[~crowd] == 255).any())
    assert result.missing_classes == ["dog"]  # a prompted class without a box
    assert result.metadata["crowd_boxes"] == [[60.0, 40.0, 90.0, 60.0]]


@pytest.mark.sample_data
def test_real_coco_sample_boxes_and_labels(sample_data: Path, tmp_path: Path) -> None:
    from pycocotools.coco import COCO as PyCOCO

    root = sample_data / "coco_sample"
    annotation_file = root / "annotations" / "instances_val2017.json"
    reference = PyCOCO(str(annotation_file))
    boxes = coco_boxes(annotation_file, COCO_VOCABULARY)
    to_label = {c: i + 1 for i, c in enumerate(COCO_VOCABULARY.category_ids or ())}
    num_checked = 0
    for image_id, info in reference.imgs.items():
        anns = reference.loadAnns(reference.getAnnIds(imgIds=[image_id], iscrowd=None))
        expected = [
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in anns
        ]
        got = boxes[Path(info["file_name"]).stem]
        assert np.allclose(got.boxes.numpy(), np.array(expected).reshape(-1, 4), atol=1e-3)
        assert got.labels.tolist() == [to_label[a["category_id"]] for a in anns]
        assert got.crowd.tolist() == [bool(a["iscrowd"]) for a in anns]
        num_checked += len(anns)
    assert num_checked > 1000

    # Label the crowd images of val (tiny random SAM) through the label source's own batch path.
    source = COCO(str(root), year=2017, train_split="val", val_split="val")
    labels = BoxPromptLabels(cache_root=str(tmp_path / "cache"), sam_checkpoint="tiny")
    labels.setup(source)
    dataset = source.dataset("train")
    crowd_ids = [i for i in dataset.ids if bool(boxes[i].crowd.any())][:3]
    assert crowd_ids
    batch = collate_samples([dataset[dataset.ids.index(i)] for i in crowd_ids])
    labels.label_batch(batch)
    labels.flush()  # cache writes run in the background until flushed
    assert labels.cache is not None and sorted(labels.cache.ids()) == sorted(crowd_ids)
    for row, sample_id in enumerate(crowd_ids):
        metadata = labels.cache.load_metadata(sample_id)
        label = labels.cache.load(sample_id)
        assert metadata is not None and label is not None
        h, w = label.shape
        own = boxes[sample_id]
        # every non-crowd box got exactly one mask, in box order, with its class
        assert [i["label"] for i in metadata["instances"]] == own.labels[~own.crowd].tolist()
        masks = [decode_rle(i["rle"]) for i in metadata["instances"]]
        assert all(m.shape == (h, w) for m in masks)
        covered = torch.stack(masks).any(0) if masks else torch.zeros(h, w, dtype=torch.bool)
        for x1, y1, x2, y2 in own.boxes[own.crowd].tolist():
            region = _centres_inside([x1, y1, x2, y2], h, w)
            assert bool((label[region & ~covered] == 255).all())
        assert torch.equal(batch["target"][row, :h, :w], label)
        assert sorted(metadata["classes"]) == sorted(dataset.image_labels(sample_id))


def test_label_pass_on_voc_xml_boxes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The ``label`` pass, cache and fingerprint are shared with the online labeler."""
    import lightning.pytorch as pl

    from wsss_pl.data.datamodule import WSSSDataModule
    from wsss_pl.labeling.label_pass import run_label_pass

    source = SyntheticVOC(str(tmp_path / "voc"), num_train=5, num_val=1, image_size=(48, 64))
    labels = BoxPromptLabels(cache_root=str(tmp_path / "cache"), sam_checkpoint="tiny")
    data = WSSSDataModule(source, labels, batch_size=2, num_workers=0, pin_memory=False)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert run_label_pass(trainer, data) == 0
    printed = capsys.readouterr().out
    assert "pseudo-label quality" in printed
    assert "top confusions" in printed and "worst images (rank 0)" in printed  # the diagnosis
    assert labels.cache is not None and len(labels.cache) == 5
    settings = json.loads((labels.cache.directory / "manifest.json").read_text())["settings"]
    assert settings["prompt"] == "boxes" and settings["boxes"].startswith("voc:")
    for sample_id in labels.cache.ids():
        xml = voc_xml_boxes(tmp_path / "voc" / "VOC2012" / "Annotations" / f"{sample_id}.xml", VOC)
        metadata = labels.cache.load_metadata(sample_id)
        assert metadata is not None and len(metadata["instances"]) == len(xml.labels)
    # Another box source is another fingerprint.
    box_file = tmp_path / "boxes.json"
    box_file.write_text(
        json.dumps({source.dataset("train").ids[0]: [{"box": [1, 2, 11, 22], "class": "cat"}]})
    )
    other = BoxPromptLabels(
        cache_root=str(tmp_path / "cache"), sam_checkpoint="tiny", box_file=str(box_file)
    )
    other.setup(source)
    assert other.cache is not None and other.cache.directory != labels.cache.directory
    with pytest.raises(DataError, match="nope.json"):
        BoxPromptLabels(sam_checkpoint="tiny", box_file=str(tmp_path / "nope.json")).setup(source)
