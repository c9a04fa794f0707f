"""download_voc / download_coco end to end against tiny fake archives served on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from http_server import LocalServer, free_port, serve_directory
from wsss_pl.classes import voc_palette
from wsss_pl.data import download as data_download
from wsss_pl.data.download import (
    download_coco,
    download_voc,
    read_sbd_mat,
    resource_urls,
)
from wsss_pl.errors import CorruptFileError, DataError
from wsss_pl.io import read_label, write_label

savemat = pytest.importorskip("scipy.io").savemat  # scipy converts SBD's .mat masks

VOC_TRAIN, VOC_VAL = ["2007_000032"], ["2007_000033"]
SBD_TRAIN, SBD_VAL = ["2008_000002", "2007_000033"], ["2008_000003", "2007_000032"]
# (SBD train ∪ SBD val ∪ VOC train) − VOC val
EXPECTED_TRAIN_AUG = ["2007_000032", "2008_000002", "2008_000003"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    with serve_directory(tmp_path / "www") as running:
        yield running


def _voc_png(path: Path, class_id: int) -> None:
    label = np.full((6, 8), 255, dtype=np.uint8)  # VOC-style ignore border
    label[1:5, 1:7] = 0
    label[2:4, 2:6] = class_id
    write_label(path, label, voc_palette())


def _sbd_label(class_id: int) -> np.ndarray:
    label = np.zeros((6, 8), dtype=np.uint8)
    label[:3, :4] = class_id
    return label


def _make_voc_tar(source: Path, archive: Path) -> None:
    voc = source / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    for sample_id in sorted({*VOC_TRAIN, *VOC_VAL, *SBD_TRAIN, *SBD_VAL}):
        Image.new("RGB", (8, 6), (90, 120, 30)).save(voc / "JPEGImages" / f"{sample_id}.jpg")
        (voc / "Annotations" / f"{sample_id}.xml").write_text("<annotation/>")
    _voc_png(voc / "SegmentationClass" / "2007_000032.png", 15)
    _voc_png(voc / "SegmentationClass" / "2007_000033.png", 7)
    (voc / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i}\n" for i in VOC_TRAIN))
    (voc / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in VOC_VAL))
    with tarfile.open(archive, "w") as tarred:
        tarred.add(source / "VOCdevkit", arcname="VOCdevkit")


SBD_CLASS = {"2008_000002": 12, "2008_000003": 3, "2007_000032": 1, "2007_000033": 9}


def _make_sbd_tgz(source: Path, archive: Path) -> None:
    dataset = source / "benchmark_RELEASE" / "dataset"
    for sub in ("cls", "inst", "img"):
        (dataset / sub).mkdir(parents=True)
    for sample_id, class_id in SBD_CLASS.items():
        gt = {
            "Segmentation": _sbd_label(class_id),
            "Boundaries": np.zeros((1,), dtype=np.uint8),
            "CategoriesPresent": np.array([class_id], dtype=np.uint8),
        }
        savemat(dataset / "cls" / f"{sample_id}.mat", {"GTcls": gt})
        savemat(dataset / "inst" / f"{sample_id}.mat", {"GTinst": {"Segmentation": _sbd_label(1)}})
        (dataset / "img" / f"{sample_id}.jpg").write_bytes(b"jpeg")
    (dataset / "train.txt").write_text("".join(f"{i}\n" for i in SBD_TRAIN))
    (dataset / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))
    with tarfile.open(archive, "w:gz") as tarred:
        tarred.add(source / "benchmark_RELEASE", arcname="benchmark_RELEASE")


def _serve(server: LocalServer, resource: data_download.Resource, build, tmp_path: Path):
    """Build an archive at the resource's URL path on the server; return it with its md5."""
    path = server.root / urlsplit(resource.urls[0]).path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    build(tmp_path / f"src-{resource.filename}", path)
    return dataclasses.replace(resource, md5=hashlib.md5(path.read_bytes()).hexdigest())


@pytest.fixture
def voc_server(server: LocalServer, tmp_path: Path, monkeypatch) -> LocalServer:
    voc = _serve(server, data_download.VOC2012_TRAINVAL, _make_voc_tar, tmp_path)
    sbd = _serve(server, data_download.SBD_BENCHMARK, _make_sbd_tgz, tmp_path)
    monkeypatch.setattr(data_download, "VOC2012_TRAINVAL", voc)
    monkeypatch.setattr(data_download, "SBD_BENCHMARK", sbd)
    return server


def _ids(path: Path) -> list[str]:
    return path.read_text().split()


def test_resource_urls_mirror(monkeypatch) -> None:
    voc = data_download.VOC2012_TRAINVAL
    assert resource_urls(voc)[0].startswith("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/")
    assert resource_urls(voc, "http://m:1/") == ("http://m:1/pascal/VOC/voc2012/" + voc.filename,)
    monkeypatch.setenv("WSSS_PL_MIRROR", "http://mirror")
    coco = data_download.COCO_RESOURCES[(2014, "train")]
    assert resource_urls(coco) == ("http://mirror/zips/train2014.zip",)


def test_download_voc_end_to_end(voc_server: LocalServer, tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    download_voc(root, progress=False, base_url=voc_server.base_url)

    assert (root / "VOC2012" / "JPEGImages" / "2008_000003.jpg").is_file()
    assert not (root / "VOCdevkit").exists()
    assert _ids(root / "train_aug.txt") == EXPECTED_TRAIN_AUG
    assert _ids(root / "val.txt") == VOC_VAL
    assert _ids(root / "train.txt") == VOC_TRAIN

    aug = root / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == sorted(SBD_CLASS)
    voc_png = root / "VOC2012" / "SegmentationClass" / "2007_000032.png"
    # VOC ids keep VOC's own label (person, 255 border), not SBD's (aeroplane)
    assert (aug / "2007_000032.png").read_bytes() == voc_png.read_bytes()
    assert set(np.unique(read_label(aug / "2007_000032.png").numpy())) == {0, 15, 255}
    converted = aug / "2008_000002.png"
    assert np.array_equal(read_label(converted).numpy(), _sbd_label(12))
    with Image.open(converted) as image:
        assert image.mode == "P"
        assert image.getpalette()[: 3 * 13] == voc_palette()[: 3 * 13]
    assert not (root / "SBD" / "img").exists() and not (root / "SBD" / "inst").exists()

    # idempotent: a rerun (here through the environment mirror) sends no request, rewrites nothing
    served = len(voc_server.requests)
    stamp = (root / "train_aug.txt").stat().st_mtime_ns
    monkeypatch.setenv("WSSS_PL_MIRROR", voc_server.base_url)
    download_voc(root, progress=False)
    assert len(voc_server.requests) == served
    assert (root / "train_aug.txt").stat().st_mtime_ns == stamp


def test_download_voc_finishes_an_interrupted_conversion(
    voc_server: LocalServer, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    download_voc(root, progress=False, base_url=voc_server.base_url, keep_archives=False)
    assert not (root / "downloads" / "VOCtrainval_11-May-2012.tar").exists()
    # as if killed mid-conversion: no marker, no list, a label missing
    (root / "SegmentationClassAug" / ".wsss_pl_complete").unlink()
    (root / "SegmentationClassAug" / "2008_000003.png").unlink()
    (root / "train_aug.txt").unlink()
    served = len(voc_server.requests)
    download_voc(root, progress=False, base_url=voc_server.base_url)
    assert len(voc_server.requests) == served  # extracted SBD reused: nothing downloaded
    assert np.array_equal(
        read_label(root / "SegmentationClassAug/2008_000003.png").numpy(), _sbd_label(3)
    )
    assert _ids(root / "train_aug.txt") == EXPECTED_TRAIN_AUG


def test_download_voc_uses_an_existing_vocdevkit(voc_server: LocalServer, tmp_path: Path) -> None:
    root = tmp_path / "data"
    with tarfile.open(voc_server.root / "pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar") as tarred:
        tarred.extractall(root, filter="data")  # the user's own extraction: no marker
    download_voc(root, progress=False, base_url=voc_server.base_url)
    assert [r.path for r in voc_server.requests] == [
        "Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz"
    ]
    base = root / "VOCdevkit"
    assert _ids(base / "train_aug.txt") == EXPECTED_TRAIN_AUG
    assert (base / "SegmentationClassAug" / "2008_000002.png").is_file()


def test_download_voc_checksum_mismatch(
    voc_server: LocalServer, tmp_path: Path, monkeypatch
) -> None:
    wrong = dataclasses.replace(data_download.VOC2012_TRAINVAL, md5="0" * 32)
    monkeypatch.setattr(data_download, "VOC2012_TRAINVAL", wrong)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="checksum mismatch"):
        download_voc(root, progress=False, base_url=voc_server.base_url)
    assert not (root / "VOC2012").exists()
    assert list((root / "downloads").iterdir()) == []


def test_download_voc_offline_says_what_to_fetch(tmp_path: Path) -> None:
    root = tmp_path / "data"
    mirror = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DataError) as caught:
        download_voc(root, progress=False, base_url=mirror)
    message = str(caught.value)
    assert f"{mirror}/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar" in message
    assert str(root / "downloads" / "VOCtrainval_11-May-2012.tar") in message


def test_download_voc_refuses_an_incomplete_tree_before_downloading(
    voc_server: LocalServer, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    (root / "VOC2012" / "JPEGImages").mkdir(parents=True)
    (root / "VOC2012" / "JPEGImages" / "x.jpg").write_bytes(b"mine")
    with pytest.raises(DataError, match="move it away"):
        download_voc(root, progress=False, base_url=voc_server.base_url)
    assert voc_server.requests == []


def test_read_sbd_mat_rejects_bad_masks(tmp_path: Path) -> None:
    savemat(tmp_path / "bad.mat", {"GTcls": {"Segmentation": np.full((2, 2), 40, np.uint8)}})
    with pytest.raises(CorruptFileError, match="outside 0..20"):
        read_sbd_mat(tmp_path / "bad.mat")
    savemat(tmp_path / "other.mat", {"something": np.zeros(2)})
    with pytest.raises(CorruptFileError, match="GTcls"):
        read_sbd_mat(tmp_path / "other.mat")


def _zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)


def test_download_coco(server: LocalServer, tmp_path: Path, monkeypatch) -> None:
    resources = dict(data_download.COCO_RESOURCES)
    contents = {
        "train": {"train2014/COCO_train2014_000000000009.jpg": b"a"},
        "val": {"val2014/": b"", "val2014/COCO_val2014_000000000042.jpg": b"b"},
        "annotations": {
            f"annotations/instances_{s}2014.json": json.dumps({"split": s}).encode()
            for s in ("train", "val")
        }
        | {"annotations/captions_train2014.json": b"{}"},
    }
    for part, members in contents.items():
        resource = resources[(2014, part)]
        path = server.root / urlsplit(resource.urls[0]).path.lstrip("/")
        _zip(path, members)
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        resources[(2014, part)] = dataclasses.replace(resource, md5=md5)
    monkeypatch.setattr(data_download, "COCO_RESOURCES", resources)
    root = tmp_path / "coco"
    download_coco(root, 2014, progress=False, base_url=server.base_url)
    assert (root / "train2014" / "COCO_train2014_000000000009.jpg").read_bytes() == b"a"
    assert (root / "val2014" / "COCO_val2014_000000000042.jpg").read_bytes() == b"b"
    assert json.loads((root / "annotations" / "instances_val2014.json").read_text()) == {
        "split": "val"
    }
    assert sorted(p.name for p in (root / "annotations").iterdir()) == [
        "instances_train2014.json",
        "instances_val2014.json",
    ]
    assert not (root / ".annotations_trainval2014").exists()
    served = len(server.requests)
    download_coco(root, 2014, progress=False, base_url=server.base_url)
    assert len(server.requests) == served
    with pytest.raises(DataError, match="2014 or 2017"):
        download_coco(root, 2015)
