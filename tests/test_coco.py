"""COCO: semantic ground truth from instances (polygons, RLE, crowd, overlaps), labels, errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from wsss_pl.classes import COCO as COCO_VOCABULARY
from wsss_pl.classes import COCO_CATEGORY_IDS
from wsss_pl.data.coco import COCO, COCODataset, annotation_mask
from wsss_pl.errors import CorruptFileError, DataError, UnknownClassError

PERSON, CAR, DOG = 1, 3, 18  # COCO category ids
HEIGHT, WIDTH = 20, 30


def _label(category_id: int) -> int:
    return COCO_CATEGORY_IDS.index(category_id) + 1


def _box_polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE (column-major run lengths, starting with a run of zeros)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _tiny_coco(root: Path, extra_annotation: dict[str, Any] | None = None) -> Path:
    """root/val2017 with 3 images + annotations/instances_val2017.json.

    Image 1: a smaller dog box, then a big person box overlapping it (so "later wins" would hide
    the dog), and a crowd of cars (uncompressed RLE) partly under the person. Image 2: one car as compressed RLE. Image 3: no annotations.
    """
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in ("a.jpg", "b.jpg", "empty.jpg"):
        Image.new("RGB", (WIDTH, HEIGHT), (90, 120, 150)).save(root / "val2017" / name)
    crowd = np.zeros((HEIGHT, WIDTH), dtype=bool)
    crowd[14:20, 0:10] = True
    car = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    car[3:9, 5:25] = 1
    compressed = mask_utils.encode(np.asfortranarray(car))
    compressed["counts"] = compressed["counts"].decode("ascii")
    annotations = [
        {
            "id": 2,
            "image_id": 1,
            "category_id": DOG,
            "iscrowd": 0,
            "segmentation": _box_polygon(14, 10, 26, 18),
        },
        {
            "id": 1,
            "image_id": 1,
            "category_id": PERSON,
            "iscrowd": 0,
            "segmentation": _box_polygon(2, 2, 20, 16),
        },
        {
            "id": 3,
            "image_id": 1,
            "category_id": CAR,
            "iscrowd": 1,
            "segmentation": _uncompressed_rle(crowd),
        },
        {"id": 4, "image_id": 2, "category_id": CAR, "iscrowd": 0, "segmentation": compressed},
    ]
    if extra_annotation is not None:
        annotations.append(extra_annotation)
    content = {
        "images": [
            {"id": i, "file_name": n, "height": HEIGHT, "width": WIDTH}
            for i, n in ((1, "a.jpg"), (2, "b.jpg"), (3, "empty.jpg"))
        ],
        "annotations": annotations,
        "categories": [
            {"id": c, "name": n}
            for c, n in zip(COCO_CATEGORY_IDS, COCO_VOCABULARY.class_names, strict=True)
        ],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(content))
    return root


def _gt(dataset: COCODataset, sample_id: str) -> np.ndarray:
    gt = dataset.load_gt(sample_id)
    assert gt.dtype == torch.uint8 and gt.shape == (HEIGHT, WIDTH)
    return gt.numpy()


def test_smaller_on_top_and_crowd(tmp_path: Path) -> None:
    dataset = COCODataset(_tiny_coco(tmp_path), "val", year=2017)
    assert dataset.ids == ["a", "b"]  # the image without annotations is left out
    gt = _gt(dataset, "a")
    assert gt[5, 5] == _label(PERSON)
    assert gt[13, 17] == _label(DOG)  # person/dog overlap: the smaller dog is on top
    assert gt[17, 23] == _label(DOG)
    assert gt[15, 5] == _label(PERSON)  # crowd covered by a non-crowd instance
    assert gt[18, 3] == 255  # crowd only
    assert gt[1, 28] == 0
    assert set(np.unique(gt).tolist()) == {0, _label(PERSON), _label(DOG), 255}
    # Image-level labels include the crowd class, in vocabulary order.
    assert dataset.image_labels("a") == ["person", "car", "dog"]


def test_ignore_overlap_policy(tmp_path: Path) -> None:
    dataset = COCODataset(_tiny_coco(tmp_path), "val", year=2017, overlap="ignore")
    gt = _gt(dataset, "a")
    assert gt[13, 17] == 255
    assert gt[5, 5] == _label(PERSON) and gt[17, 23] == _label(DOG) and gt[18, 3] == 255


def test_compressed_rle_and_keeping_empty_images(tmp_path: Path) -> None:
    dataset = COCODataset(
        _tiny_coco(tmp_path), "val", year=2017, drop_images_without_annotations=False
    )
    assert dataset.ids == ["a", "b", "empty"]
    expected = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    expected[3:9, 5:25] = _label(CAR)
    assert np.array_equal(_gt(dataset, "b"), expected)
    sample = dataset[2]
    assert sample is not None and float(sample["labels"].sum()) == 0.0
    assert sample["gt"] is not None and int(sample["gt"].max()) == 0


def test_same_class_overlap_is_not_ignored(tmp_path: Path) -> None:
    other_person = {
        "id": 5,
        "image_id": 1,
        "category_id": PERSON,
        "iscrowd": 0,
        "segmentation": _box_polygon(0, 0, 6, 6),
    }
    dataset = COCODataset(_tiny_coco(tmp_path, other_person), "val", year=2017, overlap="ignore")
    assert _gt(dataset, "a")[4, 4] == _label(PERSON)


def test_unknown_category(tmp_path: Path) -> None:
    bad = {
        "id": 9,
        "image_id": 2,
        "category_id": 12,
        "iscrowd": 0,
        "segmentation": _box_polygon(0, 0, 5, 5),
    }
    with pytest.raises(
        UnknownClassError, match=r"instances_val2017\.json.*'b'.*unknown category id 12"
    ):
        COCODataset(_tiny_coco(tmp_path, bad), "val", year=2017)


def test_missing_and_corrupt_images(tmp_path: Path) -> None:
    root = _tiny_coco(tmp_path)
    (root / "val2017" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 2 ids have no image file.*b\.jpg.*skip_missing"):
        COCODataset(root, "val", year=2017)
    assert COCODataset(root, "val", year=2017, skip_missing=True).ids == ["a"]
    (root / "val2017" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match=r"a\.jpg"):
        COCODataset(root, "val", year=2017, skip_missing=True)[0]
    assert COCODataset(root, "val", year=2017, skip_missing=True, skip_corrupt=True)[0] is None


def test_missing_root_says_what_to_get(tmp_path: Path) -> None:
    source = COCO(str(tmp_path / "absent"))
    pattern = r"(?s)train2014.*val2014.zip.*annotations_trainval2014.zip.*download: true"
    with pytest.raises(DataError, match=pattern):
        source.prepare_data()
    with pytest.raises(DataError, match=pattern):
        source.dataset("val")
    with pytest.raises(DataError, match="predict_split"):
        source.dataset("predict")


def test_download_calls_download_coco_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Path, int]] = []

    def fake_download_coco(root: Path, year: int) -> None:
        calls.append((root, year))
        _tiny_coco(root)

    fake = types.ModuleType("wsss_pl.data.download")
    fake.download_coco = fake_download_coco  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wsss_pl.data.download", fake)
    source = COCO(str(tmp_path / "dl"), year=2017, train_split="val", download=True)
    source.prepare_data()
    source.prepare_data()
    assert calls == [(tmp_path / "dl", 2017)]
    assert len(source.dataset("train")) == 2


@pytest.mark.sample_data
def test_real_sample(sample_data: Path) -> None:
    root = sample_data / "coco_sample"
    source = COCO(str(root), year=2017)
    source.prepare_data()
    dataset = source.dataset("val")
    content = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    per_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in content["annotations"]:
        per_image.setdefault(annotation["image_id"], []).append(annotation)
    images = {Path(i["file_name"]).stem: i for i in content["images"]}
    assert set(dataset.ids) == {s for s, i in images.items() if i["id"] in per_image}
    crowd_images = 0
    for sample_id in dataset.ids:
        image = images[sample_id]
        annotations = per_image[image["id"]]
        expected = sorted({_label(a["category_id"]) for a in annotations})
        labels = COCO_VOCABULARY.multi_hot(dataset.image_labels(sample_id))
        assert (torch.nonzero(labels).flatten() + 1).tolist() == expected
        crowd = [a for a in annotations if a["iscrowd"]]
        if not crowd and sample_id != dataset.ids[0]:
            continue  # rasterising every image is slow on a shared CPU; crowd images matter
        gt = dataset.load_gt(sample_id).numpy()
        assert gt.shape == (image["height"], image["width"])
        assert set(np.unique(gt).tolist()) <= set(expected) | {0, 255}
        covered = np.zeros(gt.shape, dtype=bool)
        for a in annotations:
            if not a["iscrowd"]:
                covered |= annotation_mask(a["segmentation"], *gt.shape)
        crowd_union = np.zeros(gt.shape, dtype=bool)
        for a in crowd:
            crowd_images += 1
            crowd_union |= annotation_mask(a["segmentation"], *gt.shape)
        # Instances always win (smaller_on_top never ignores); elsewhere: crowd 255, else 0.
        assert ((gt[covered] != 0) & (gt[covered] != 255)).all()
        assert np.array_equal(gt[~covered] == 255, crowd_union[~covered])
        assert set(np.unique(gt[~covered]).tolist()) <= {0, 255}
    assert crowd_images > 0
    sample = dataset[0]
    assert sample is not None and sample["image"].dtype == torch.uint8
    assert sample["image"].shape[1:] == sample["gt"].shape  # type: ignore[union-attr]
    assert len(source.dataset("train")) == 160
