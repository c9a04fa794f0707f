"""VOC loader: layout resolution, labels, ground truth and errors; on synthetic and real samples."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_pl.classes import VOC as VOC_VOCABULARY
from wsss_pl.classes import voc_palette
from wsss_pl.data.synthetic import make_synthetic_voc
from wsss_pl.data.voc import VOC, VOCDataset
from wsss_pl.errors import CorruptFileError, DataError, UnknownClassError
from wsss_pl.io import read_label, write_label


@pytest.fixture(scope="module")
def synth_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_voc(
        tmp_path_factory.mktemp("voc_template"), num_train=4, num_val=2, image_size=(48, 64)
    )


@pytest.fixture
def synth(tmp_path: Path, synth_template: Path) -> Path:
    """A private, mutable copy of a tiny synthetic VOC root."""
    root = tmp_path / "voc"
    shutil.copytree(synth_template, root)
    return root


def _write_list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


# --- synthetic data ----------------------------------------------------------------------------


def test_synthetic_splits_and_xml_labels(synth: Path) -> None:
    source = VOC(str(synth), train_split="train", predict_split=None)
    source.prepare_data()
    train = source.dataset("train")
    assert train.ids == [f"synth_{k:06d}" for k in range(4)]
    assert len(source.dataset("val")) == 2 and source.dataset("test").ids == [
        "synth_000004",
        "synth_000005",
    ]
    with pytest.raises(DataError, match="predict_split"):
        source.dataset("predict")
    for index in range(len(train)):
        sample = train[index]
        assert sample is not None
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 48, 64)
        assert sample["gt"] is not None and sample["gt"].dtype == torch.uint8
        from_mask = set(sample["gt"].unique().tolist()) - {0, 255}
        from_xml = {VOC_VOCABULARY.label_id(n) for n in VOC_VOCABULARY.names_of(sample["labels"])}
        assert from_mask == from_xml and from_xml


def test_vocdevkit_parent_and_txt_split(tmp_path: Path, synth: Path) -> None:
    shutil.move(str(synth), tmp_path / "data" / "VOCdevkit")
    custom = tmp_path / "my_list.txt"
    # Lines in the "image path  label path" format of some WSSS lists; the id is the stem.
    custom.write_text("/JPEGImages/synth_000003.jpg /SegmentationClassAug/synth_000003.png\n\n")
    dataset = VOCDataset(tmp_path / "data", str(custom))
    assert dataset.ids == ["synth_000003"]
    assert dataset.base == tmp_path / "data" / "VOCdevkit"


def test_split_resolution_order(synth: Path) -> None:
    """VOC2012/ImageSets/Segmentation/<split>.txt wins over <root>/<split>.txt."""
    _write_list(synth / "train.txt", ["synth_000000", "synth_000001", "synth_000002"])
    _write_list(synth / "extra.txt", ["synth_000001"])
    assert len(VOCDataset(synth, "train")) == 4
    assert VOCDataset(synth, "extra").ids == ["synth_000001"]
    with pytest.raises(DataError, match=r"no id list found.*nope\.txt"):
        VOCDataset(synth, "nope")


def test_gt_dirs_search_order(synth: Path) -> None:
    original = read_label(synth / "VOC2012" / "SegmentationClass" / "synth_000000.png")
    write_label(
        synth / "SegmentationClassAug" / "synth_000000.png",
        torch.zeros_like(original),
        voc_palette(),
    )
    dataset = VOCDataset(synth, "train")
    sample = dataset[0]
    assert sample is not None and sample["gt"] is not None
    assert int(sample["gt"].max()) == 0  # SegmentationClassAug comes before SegmentationClass
    assert torch.equal(
        dataset[1]["gt"], read_label(synth / "VOC2012/SegmentationClass/synth_000001.png")
    )  # type: ignore[index]
    only_official = VOCDataset(synth, "train", gt_dirs=["VOC2012/SegmentationClass"])
    assert torch.equal(only_official[0]["gt"], original)  # type: ignore[index]


def test_split_without_any_gt_has_none(synth: Path) -> None:
    shutil.rmtree(synth / "VOC2012" / "SegmentationClass")
    sample = VOCDataset(synth, "val")[0]
    assert sample is not None and sample["gt"] is None


def test_partial_gt_is_an_error_or_skipped(synth: Path) -> None:
    (synth / "VOC2012" / "SegmentationClass" / "synth_000002.png").unlink()
    with pytest.raises(
        DataError, match=r"1 of 4 ids have no ground-truth.*synth_000002.*skip_missing"
    ):
        VOCDataset(synth, "train")
    assert "synth_000002" not in VOCDataset(synth, "train", skip_missing=True).ids


def test_missing_image_is_an_error_or_skipped(synth: Path) -> None:
    (synth / "VOC2012" / "JPEGImages" / "synth_000001.jpg").unlink()
    with pytest.raises(DataError, match=r"no JPEG image.*synth_000001"):
        VOCDataset(synth, "train")
    assert VOCDataset(synth, "train", skip_missing=True).ids == [
        "synth_000000",
        "synth_000002",
        "synth_000003",
    ]


def test_duplicate_id_in_list(synth: Path) -> None:
    _write_list(synth / "dup.txt", ["synth_000000", "synth_000001", "synth_000000"])
    with pytest.raises(DataError, match=r"dup\.txt.*synth_000000.*lines 1 and 3"):
        VOCDataset(synth, "dup")


# --- labels ------------------------------------------------------------------------------------


def test_labels_file_overrides_xml_and_empty_set_is_counted(
    synth: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labels = {f"synth_{k:06d}": ["bus"] for k in range(4)}
    labels["synth_000001"] = []
    (synth / "labels.json").write_text(json.dumps(labels))
    with caplog.at_level(logging.WARNING):
        dataset = VOCDataset(synth, "train", labels_file="labels.json")  # relative to root
    assert dataset.num_empty_labels == 1
    assert sum("empty image-level label set" in r.message for r in caplog.records) == 1
    assert dataset.image_labels("synth_000000") == ["bus"]
    sample = dataset[1]
    assert sample is not None and float(sample["labels"].sum()) == 0.0


def test_unknown_class_names_file_and_id(synth: Path) -> None:
    (synth / "labels.json").write_text(
        json.dumps({f"synth_{k:06d}": ["cat"] for k in range(3)} | {"synth_000003": ["unicorn"]})
    )
    with pytest.raises(
        UnknownClassError, match=r"labels\.json.*synth_000003.*unicorn.*aeroplane"
    ) as info:
        VOCDataset(synth, "train", labels_file=str(synth / "labels.json"))
    assert isinstance(info.value, DataError)


def test_unknown_class_in_xml(synth: Path) -> None:
    xml = synth / "VOC2012" / "Annotations" / "synth_000002.xml"
    xml.write_text(xml.read_text().replace("<name>", "<name>x", 1))
    with pytest.raises(
        UnknownClassError, match=r"synth_000002\.xml.*'synth_000002'.*unknown class 'x"
    ):
        VOCDataset(synth, "train")


def test_missing_labels_entry(synth: Path) -> None:
    (synth / "labels.json").write_text(json.dumps({"synth_000000": ["cat"]}))
    with pytest.raises(
        DataError, match=r"3 of 4 ids have no entry in labels file .*labels\.json.*synth_000001"
    ):
        VOCDataset(synth, "train", labels_file="labels.json")
    assert VOCDataset(synth, "train", labels_file="labels.json", skip_missing=True).ids == [
        "synth_000000"
    ]


def test_no_labels_source_is_a_clear_error(synth: Path) -> None:
    shutil.rmtree(synth / "VOC2012" / "Annotations")
    (synth / "image_labels.json").write_text("{}")
    with pytest.raises(
        DataError, match=r"labels_file is not set.*labels_file: .*image_labels\.json"
    ):
        VOCDataset(synth, "train")
    with pytest.raises(DataError, match=r"labels file nothere\.json not found"):
        VOCDataset(synth, "train", labels_file="nothere.json")


def test_malformed_labels(synth: Path) -> None:
    (synth / "labels.json").write_text(json.dumps(["cat"]))
    with pytest.raises(DataError, match="must be a JSON object"):
        VOCDataset(synth, "train", labels_file="labels.json")
    (synth / "labels.json").write_text(json.dumps({f"synth_{k:06d}": "cat" for k in range(4)}))
    with pytest.raises(DataError, match="synth_000000.*list of class names"):
        VOCDataset(synth, "train", labels_file="labels.json")
    (synth / "VOC2012" / "Annotations" / "synth_000000.xml").write_text("<annotation><object>")
    with pytest.raises(CorruptFileError, match=r"synth_000000\.xml"):
        VOCDataset(synth, "train")


# --- errors, corrupt files, download -----------------------------------------------------------


def test_missing_root_says_what_to_get(tmp_path: Path) -> None:
    source = VOC(str(tmp_path / "absent"))
    for action in (source.prepare_data, lambda: source.dataset("train")):
        with pytest.raises(
            DataError, match=r"(?s)absent.*VOC 2012 trainval.*SegmentationClassAug.*download: true"
        ):
            action()


def test_prepare_data_reports_missing_split_list(synth: Path) -> None:
    with pytest.raises(DataError, match=r"train_aug.*download: true"):
        VOC(str(synth)).prepare_data()


def test_corrupt_jpeg(synth: Path) -> None:
    bad = synth / "VOC2012" / "JPEGImages" / "synth_000001.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(CorruptFileError, match=r"synth_000001\.jpg"):
        VOCDataset(synth, "train")[1]
    dataset = VOCDataset(synth, "train", skip_corrupt=True)
    assert dataset[1] is None and dataset[0] is not None


def test_download_calls_download_voc_lazily(
    tmp_path: Path, synth_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def fake_download_voc(root: Path) -> None:
        calls.append(root)
        shutil.copytree(synth_template, root)
        _write_list(root / "train_aug.txt", ["synth_000000", "synth_000001"])

    fake = types.ModuleType("wsss_pl.data.download")
    fake.download_voc = fake_download_voc  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wsss_pl.data.download", fake)
    source = VOC(str(tmp_path / "dl"), download=True)
    source.prepare_data()
    source.prepare_data()  # data in place now: no second download
    assert calls == [tmp_path / "dl"]
    assert len(source.dataset("train")) == 2


# --- the real VOC sample -------------------------------------------------------------------------


@pytest.mark.sample_data
def test_real_sample(sample_data: Path) -> None:
    root = sample_data / "voc_sample"
    source = VOC(str(root), train_split="train", labels_file="image_labels.json")
    source.prepare_data()
    train = source.dataset("train")
    assert train.ids == ["2007_000032", "2011_003066"]
    sample = train[0]
    assert sample is not None and sample["id"] == "2007_000032"
    assert sample["image"].shape == (3, 281, 500) and sample["image"].dtype == torch.uint8
    assert VOC_VOCABULARY.names_of(sample["labels"]) == ["aeroplane", "person"]
    assert sample["gt"] is not None
    assert set(sample["gt"].unique().tolist()) <= {0, 1, 15, 255}
    assert {1, 15} <= set(sample["gt"].unique().tolist())
    val = source.dataset("val")[0]
    assert val is not None and val["id"] == "2007_000033" and val["gt"] is not None


@pytest.mark.sample_data
def test_real_sample_train_aug(sample_data: Path) -> None:
    root = sample_data / "voc_sample"
    with pytest.raises(DataError, match=r"of 10582 ids have no JPEG image.*skip_missing"):
        VOCDataset(root, "train_aug", labels_file="image_labels.json")
    dataset = VOCDataset(root, "train_aug", labels_file="image_labels.json", skip_missing=True)
    with_jpeg = {p.stem for p in (root / "VOC2012" / "JPEGImages").glob("*.jpg")}
    listed = set((root / "train_aug.txt").read_text().split())
    assert set(dataset.ids) == with_jpeg & listed and dataset.ids
    sample = dataset[0]
    assert sample is not None and sample["gt"] is not None
    # train_aug ground truth comes from SegmentationClassAug (the first gt dir that exists here).
    expected = read_label(root / "SegmentationClassAug" / f"{sample['id']}.png")
    assert np.array_equal(sample["gt"].numpy(), expected.numpy())
