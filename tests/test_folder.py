"""A folder of the user's own images: JSON and text labels, masks, vocabulary and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_pl.classes import voc_palette
from wsss_pl.data.folder import ImageFolder, ImageFolderDataset, read_labels_file
from wsss_pl.errors import CorruptFileError, DataError, UnknownClassError
from wsss_pl.io import write_label

CLASSES = ["cat", "traffic light", "pot"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root with a.jpg (20x30), b.png (10x12) and sub/c.jpeg, plus masks/{a,b}.png."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (30, 20), (200, 10, 10)).save(root / "a.jpg")
    Image.new("RGB", (12, 10), (10, 200, 10)).save(root / "b.png")
    Image.new("RGB", (8, 8), (10, 10, 200)).save(root / "sub" / "c.jpeg")
    mask_a = np.zeros((20, 30), dtype=np.uint8)
    mask_a[5:10, 5:10] = 1
    mask_a[0, 0] = 255
    write_label(root / "masks" / "a.png", mask_a, voc_palette())
    write_label(root / "masks" / "b.png", np.full((10, 12), 2, dtype=np.uint8), voc_palette())
    return root


def _source(root: Path, **kwargs: object) -> ImageFolder:
    return ImageFolder(str(root), CLASSES, **kwargs)  # type: ignore[arg-type]


def test_json_labels_and_vocabulary(folder: Path) -> None:
    (folder / "labels.json").write_text(
        json.dumps({"a.jpg": ["cat"], "b": ["traffic light", "cat"], "sub/c.jpeg": ["pot"]})
    )
    source = _source(
        folder,
        name="pets",
        prompt_names={"pot": "flower pot"},
        assist_words={"cat": ["kitten"]},
    )
    source.prepare_data()
    assert source.name == "pets" and source.vocabulary.num_classes == 4
    assert source.vocabulary.prompt_name("pot") == "flower pot"
    assert tuple(source.vocabulary.assist_words["cat"]) == ("kitten",)
    dataset = source.dataset("train")
    assert dataset.ids == ["a", "b", "c"]
    sample = dataset[1]
    assert sample is not None and sample["id"] == "b"
    assert sample["image"].shape == (3, 10, 12) and sample["image"].dtype == torch.uint8
    assert sample["labels"].tolist() == [1.0, 1.0, 0.0]
    assert sample["gt"] is None  # no masks_dir configured
    assert dataset.image_path("c") == folder / "sub" / "c.jpeg"


def test_text_labels_with_masks(folder: Path) -> None:
    (folder / "val.txt").write_text("# file classes\na.jpg cat\n\nb.png traffic light , pot\n")
    source = _source(folder, train_labels="val.txt", val_labels="val.txt", masks_dir="masks")
    dataset = source.dataset("val")
    assert dataset.ids == ["a", "b"]
    assert dataset.image_labels("b") == ["traffic light", "pot"]
    gt = dataset[0]["gt"]  # type: ignore[index]
    assert gt is not None and gt.shape == (20, 30) and gt[6, 6] == 1 and gt[0, 0] == 255


def test_dataset_directly_with_tab_separated_text(folder: Path) -> None:
    (folder / "l.txt").write_text("a\tcat,pot\n")
    source = _source(folder)
    dataset = ImageFolderDataset(folder, folder / "l.txt", source.vocabulary)
    assert dataset.ids == ["a"] and dataset.image_labels("a") == ["cat", "pot"]


def test_val_defaults_to_train_labels(folder: Path) -> None:
    (folder / "labels.json").write_text(json.dumps({"a": ["cat"]}))
    (folder / "val.json").write_text(json.dumps({"b": ["pot"]}))
    assert _source(folder).dataset("val").ids == ["a"]
    assert _source(folder, val_labels="val.json").dataset("test").ids == ["b"]
    assert _source(folder, val_labels="val.json").dataset("train").ids == ["a"]


def test_unknown_class(folder: Path) -> None:
    (folder / "labels.json").write_text(json.dumps({"a.jpg": ["cat"], "b.png": ["dog"]}))
    with pytest.raises(
        UnknownClassError, match=r"labels\.json.*'b'.*'dog'.*cat, traffic light, pot"
    ):
        _source(folder).dataset("train")


def test_empty_label_set(folder: Path) -> None:
    (folder / "labels.txt").write_text("a.jpg cat\nb.png\n")
    with pytest.raises(DataError, match=r"labels\.txt.*'b' has no classes.*allow_empty"):
        _source(folder, train_labels="labels.txt").dataset("train")
    dataset = _source(folder, train_labels="labels.txt", allow_empty=True).dataset("train")
    sample = dataset[1]
    assert sample is not None and float(sample["labels"].sum()) == 0.0


def test_duplicate_ids(folder: Path) -> None:
    Image.new("RGB", (4, 4)).save(folder / "sub" / "a.png")
    (folder / "labels.json").write_text(json.dumps({"a.jpg": ["cat"], "sub/a.png": ["pot"]}))
    with pytest.raises(DataError, match=r"'sub/a.png' and 'a.jpg' have the same id 'a'"):
        _source(folder).dataset("train")
    (folder / "labels.txt").write_text("a.jpg cat\na.jpg pot\n")
    with pytest.raises(DataError, match=r"'a.jpg' is listed twice \(line 2\)"):
        read_labels_file(folder / "labels.txt")


def test_ambiguous_bare_id(folder: Path) -> None:
    Image.new("RGB", (4, 4)).save(folder / "a.png")
    (folder / "labels.json").write_text(json.dumps({"a": ["cat"]}))
    with pytest.raises(DataError, match=r"id 'a' matches several images \(a.jpg, a.png\)"):
        _source(folder).dataset("train")


def test_missing_image_and_mask(folder: Path) -> None:
    (folder / "labels.json").write_text(json.dumps({"a.jpg": ["cat"], "zzz": ["cat"]}))
    with pytest.raises(DataError, match=r"1 of 2 ids have no image file.*zzz"):
        _source(folder).dataset("train")
    assert _source(folder, skip_missing=True).dataset("train").ids == ["a"]
    (folder / "labels.json").write_text(json.dumps({"a.jpg": ["cat"], "sub/c.jpeg": ["pot"]}))
    with pytest.raises(DataError, match=r"no mask PNG.*c \("):
        _source(folder, masks_dir="masks").dataset("train")
    assert _source(folder, masks_dir="masks", skip_missing=True).dataset("train").ids == ["a"]


def test_mask_with_out_of_range_value(folder: Path) -> None:
    write_label(folder / "masks" / "a.png", np.full((20, 30), 7, dtype=np.uint8), voc_palette())
    (folder / "labels.json").write_text(json.dumps({"a.jpg": ["cat"]}))
    with pytest.raises(CorruptFileError, match=r"masks/a\.png has value 7.*1\.\.3"):
        _source(folder, masks_dir="masks").dataset("val")[0]


def test_corrupt_image(folder: Path) -> None:
    (folder / "b.png").write_bytes(b"not a png")
    (folder / "labels.json").write_text(json.dumps({"a.jpg": ["cat"], "b.png": ["pot"]}))
    with pytest.raises(CorruptFileError, match=r"b\.png"):
        _source(folder).dataset("train")[1]
    assert _source(folder, skip_corrupt=True).dataset("train")[1] is None


def test_bad_inputs(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _source(tmp_path / "nope").prepare_data()
    with pytest.raises(DataError, match=r"labels file labels\.json not found"):
        _source(folder).prepare_data()
    (folder / "labels.json").write_text(json.dumps({"a.jpg": "cat"}))
    with pytest.raises(DataError, match=r"entry 'a.jpg' must be a list"):
        _source(folder).dataset("train")
    (folder / "labels.json").write_text("{oops")
    with pytest.raises(CorruptFileError, match="malformed JSON"):
        _source(folder).dataset("train")
    with pytest.raises(UnknownClassError, match="'dog'"):
        ImageFolder(str(folder), CLASSES, prompt_names={"dog": "puppy"})


def test_default_name_differs_between_folders(tmp_path: Path) -> None:
    """Two image folders with the same classes never share a pseudo-label cache directory."""
    a = ImageFolder(str(tmp_path / "a" / "images"), classes=["cat"])
    b = ImageFolder(str(tmp_path / "b" / "images"), classes=["cat"])
    assert a.name != b.name and a.name.startswith("images-")
    assert ImageFolder(str(tmp_path / "a" / "images"), classes=["cat"]).name == a.name
