"""The synthetic VOC-format dataset: layout, determinism, idempotence, masks vs. XML labels."""

from __future__ import annotations

import hashlib
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_pl.classes import VOC
from wsss_pl.data.synthetic import MARKER_NAME, SyntheticVOC, make_synthetic_voc
from wsss_pl.errors import DataError, UnknownClassError


def _digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root/VOC2012."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "VOC2012").rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_voc(tmp_path_factory.mktemp("synth"), num_train=6, num_val=3)


def test_layout(synth: Path) -> None:
    voc = synth / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    train = lists.joinpath("train.txt").read_text().split()
    val = lists.joinpath("val.txt").read_text().split()
    assert train == [f"synth_{k:06d}" for k in range(6)]
    assert val == [f"synth_{k:06d}" for k in range(6, 9)]
    for sample_id in train + val:
        with Image.open(voc / "JPEGImages" / f"{sample_id}.jpg") as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (160, 120))
        with Image.open(voc / "SegmentationClass" / f"{sample_id}.png") as label:
            assert (label.format, label.mode, label.size) == ("PNG", "P", (160, 120))
        assert (voc / "Annotations" / f"{sample_id}.xml").is_file()
    # Nothing left over from the staging directory.
    assert [p.name for p in synth.iterdir()] == ["VOC2012"]


def test_masks_match_xml_labels(synth: Path) -> None:
    voc = synth / "VOC2012"
    default = {"aeroplane", "bus", "cat", "dog", "person"}
    seen: set[str] = set()
    for xml in sorted((voc / "Annotations").glob("*.xml")):
        names = {o.findtext("name") for o in ET.parse(xml).getroot().iter("object")}
        assert 1 <= len(names) <= 3 and names <= default
        label = np.asarray(Image.open(voc / "SegmentationClass" / f"{xml.stem}.png"))
        values = set(np.unique(label).tolist())
        assert {0, 255} <= values
        assert values - {0, 255} == {VOC.label_id(n) for n in names}
        # The 255 boundary is thin: every class keeps interior pixels.
        for name in names:
            assert (label == VOC.label_id(name)).sum() > 50
        assert (label == 255).mean() < 0.2
        seen |= names
    assert seen == default  # every class appears across the 9 images


def test_classes_are_visually_distinct(synth: Path) -> None:
    """Mean colour of a class's pixels is the same across images and differs between classes."""
    voc = synth / "VOC2012"
    means: dict[int, list[np.ndarray]] = {}
    for path in sorted((voc / "SegmentationClass").glob("*.png")):
        label = np.asarray(Image.open(path))
        image = np.asarray(Image.open(voc / "JPEGImages" / f"{path.stem}.jpg"), dtype=np.float32)
        for value in set(np.unique(label).tolist()) - {0, 255}:
            means.setdefault(value, []).append(image[label == value].mean(axis=0))
    centres = {v: np.mean(m, axis=0) for v, m in means.items()}
    for value, samples in means.items():
        for other, centre in centres.items():
            if other != value:
                spread = max(np.abs(s - centres[value]).max() for s in samples)
                assert np.abs(centre - centres[value]).max() > 2 * spread


def test_deterministic_and_idempotent(tmp_path: Path, synth: Path) -> None:
    again = make_synthetic_voc(tmp_path / "a", num_train=6, num_val=3)
    assert _digest(again) == _digest(synth)
    before = {p: p.stat().st_mtime_ns for p in (again / "VOC2012").rglob("*")}
    make_synthetic_voc(tmp_path / "a", num_train=6, num_val=3)
    assert {p: p.stat().st_mtime_ns for p in (again / "VOC2012").rglob("*")} == before
    other_seed = make_synthetic_voc(tmp_path / "b", num_train=6, num_val=3, seed=1)
    assert _digest(other_seed) != _digest(synth)


def test_regenerates_when_parameters_change(tmp_path: Path) -> None:
    make_synthetic_voc(tmp_path, num_train=2, num_val=1)
    make_synthetic_voc(tmp_path, num_train=3, num_val=2, image_size=(64, 80))
    voc = tmp_path / "VOC2012"
    assert len(list((voc / "JPEGImages").glob("*.jpg"))) == 5
    with Image.open(voc / "JPEGImages" / "synth_000000.jpg") as image:
        assert image.size == (80, 64)


def test_incomplete_generation_is_redone(tmp_path: Path) -> None:
    """A dataset without its marker (killed mid-way) is never taken as complete."""
    make_synthetic_voc(tmp_path, num_train=2, num_val=1)
    marker = tmp_path / "VOC2012" / MARKER_NAME
    marker.write_text("{truncated")
    (tmp_path / "VOC2012" / "JPEGImages" / "synth_000001.jpg").unlink()
    make_synthetic_voc(tmp_path, num_train=2, num_val=1)
    assert (tmp_path / "VOC2012" / "JPEGImages" / "synth_000001.jpg").is_file()


def test_refuses_to_overwrite_foreign_voc(tmp_path: Path) -> None:
    (tmp_path / "VOC2012" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DataError, match="not a synthetic dataset"):
        make_synthetic_voc(tmp_path, num_train=2, num_val=1)


def test_rejects_unknown_class(tmp_path: Path) -> None:
    with pytest.raises(UnknownClassError, match="unicorn"):
        make_synthetic_voc(tmp_path, classes=("cat", "unicorn"))


def test_source_splits(synth: Path) -> None:
    source = SyntheticVOC(str(synth), num_train=6, num_val=3)
    assert source.vocabulary is VOC
    assert source.name.startswith("synthetic_voc")
    train, val = source.dataset("train"), source.dataset("val")
    assert len(train) == 6 and len(val) == 3
    assert source.dataset("test").ids == val.ids == source.dataset("predict").ids
    sample = train[0]
    assert sample is not None
    assert sample["image"].shape == (3, 120, 160) and sample["image"].dtype == torch.uint8
    assert sample["labels"].shape == (20,) and sample["labels"].dtype == torch.float32
    assert sample["gt"] is not None and sample["gt"].shape == (120, 160)
    present = set(sample["gt"].unique().tolist()) - {0, 255}
    assert present == {VOC.label_id(n) for n in VOC.names_of(sample["labels"])}


def test_source_prepares_lazily(tmp_path: Path) -> None:
    source = SyntheticVOC(str(tmp_path / "lazy"), num_train=2, num_val=1, image_size=(48, 64))
    assert len(source.dataset("val")) == 1
    assert (tmp_path / "lazy" / "VOC2012" / MARKER_NAME).is_file()
