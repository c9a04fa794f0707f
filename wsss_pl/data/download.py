"""Fetching PASCAL VOC 2012 (+ SBD, built into SegmentationClassAug and train_aug.txt) and MS-COCO.

Layouts produced (what ``wsss_pl.data.voc`` and ``wsss_pl.data.coco`` read)::

    <root>/VOC2012/{JPEGImages,SegmentationClass,Annotations,ImageSets,...}  (no VOCdevkit level)
    <root>/SegmentationClassAug/<id>.png      SBD masks as palette PNGs; VOC's own PNGs for its ids
    <root>/train_aug.txt                      (SBD train + SBD val + VOC train) - VOC val, sorted
    <root>/train.txt, <root>/val.txt          VOC 2012 segmentation train / val
    <root>/SBD/{cls/*.mat,train.txt,val.txt}  the part of SBD's benchmark.tgz that is needed
    <root>/{train,val}<year>/...              COCO images
    <root>/annotations/instances_{train,val}<year>.json

Archives land in ``<root>/downloads`` (resumable, checksummed; ``keep_archives=False`` deletes them
once extracted). Every step is skipped when its output is complete, so a rerun after a crash or
on a prepared root costs only a few ``stat`` calls. Set ``WSSS_PL_MIRROR`` (or pass ``base_url``)
to fetch every file from another host under the same URL paths.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from tqdm.auto import tqdm

from wsss_pl.archive import extract_archive, is_extracted
from wsss_pl.classes import VOC_CLASSES, voc_palette
from wsss_pl.download import download_file
from wsss_pl.errors import CorruptFileError, DataError
from wsss_pl.io import write_bytes, write_json, write_label

log = logging.getLogger(__name__)

MIRROR_ENV = "WSSS_PL_MIRROR"
AUG_MARKER = ".wsss_pl_complete"
TRAIN_AUG_SIZE = 10_582  # ids in train_aug.txt built from the real VOC 2012 + SBD
VOC_VAL_SIZE = 1_449


@dataclass(frozen=True)
class Resource:
    """A downloadable archive: file name, URLs (mirrors in order) and its official checksum."""

    filename: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None


# md5s: torchvision.datasets.VOCSegmentation / SBDataset (torchvision 0.29); PaddleDetection
# ppdet/utils/download.py pins the same VOC md5. torchvision now fetches VOC from
# thor.robots.ox.ac.uk, kept here as the fallback.
VOC2012_TRAINVAL = Resource(
    filename="VOCtrainval_11-May-2012.tar",
    urls=(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    ),
    md5="6cd6e144f989b92b3379bac3b3de84fd",
)
SBD_BENCHMARK = Resource(
    filename="benchmark.tgz",
    urls=(
        "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    ),
    md5="82b4d87ceb2ed10f6038a1cba92111cb",
)


def _coco(path: str, md5: str) -> Resource:
    # images.cocodataset.org is the S3 bucket of the same name; the bucket URL is the fallback.
    return Resource(
        filename=path.rsplit("/", 1)[1],
        urls=(
            f"http://images.cocodataset.org/{path}",
            f"https://s3.amazonaws.com/images.cocodataset.org/{path}",
        ),
        md5=md5,
    )


# COCO publishes no checksums; these md5s are the ones public download scripts verify against:
# 2017 from PaddlePaddle/PaddleDetection ppdet/utils/download.py; 2014 images from
# salesforce/LAVIS lavis/datasets/download_scripts/download_coco.py; annotations_trainval2014 from
# PaddleNLP's COCOCaptions (MD5_ANNO), equal to the S3 ETag of that single-part object
# (252,872,794 bytes).
COCO_RESOURCES: dict[tuple[int, str], Resource] = {
    (2014, "train"): _coco("zips/train2014.zip", "0da8c0bd3d6becc4dcb32757491aca88"),
    (2014, "val"): _coco("zips/val2014.zip", "a3d79f5ed8d289b7a7554ce06a5782b3"),
    (2014, "annotations"): _coco(
        "annotations/annotations_trainval2014.zip", "0a379cfc70b0e71301e0f377548639bd"
    ),
    (2017, "train"): _coco("zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"),
    (2017, "val"): _coco("zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
    (2017, "annotations"): _coco(
        "annotations/annotations_trainval2017.zip", "f4bbac642086de4f52a3fdda2de5fa2c"
    ),
}


def resource_urls(resource: Resource, base_url: str | None = None) -> tuple[str, ...]:
    """URLs to try: the official ones, or the same paths on ``base_url`` / ``$WSSS_PL_MIRROR``."""
    mirror = base_url or os.environ.get(MIRROR_ENV)
    if not mirror:
        return resource.urls
    return (mirror.rstrip("/") + urlsplit(resource.urls[0]).path,)


def fetch(
    resource: Resource, directory: Path, *, base_url: str | None = None, progress: bool = True
) -> Path:
    """Download ``resource`` into ``directory`` (verified; skipped when already there)."""
    return download_file(
        resource_urls(resource, base_url),
        directory / resource.filename,
        md5=resource.md5,
        sha256=resource.sha256,
        progress=progress,
        error_type=DataError,
    )


# --------------------------------------------------------------------------------------- VOC


def download_voc(
    root: str | Path,
    *,
    progress: bool = True,
    base_url: str | None = None,
    keep_archives: bool = True,
) -> None:
    """Fetch VOC 2012 trainval and SBD, build ``SegmentationClassAug`` and the id lists in ``root``.

    An existing ``root/VOC2012`` (or ``root/VOCdevkit/VOC2012``) with images, segmentation labels
    and split lists is used as is; outputs go beside the ``VOC2012`` directory found.
    """
    root = Path(root).expanduser()
    downloads = root / "downloads"
    base = _find_voc_base(root)
    if base is None:
        _ensure_free(root / "VOC2012", "JPEGImages, SegmentationClass or the segmentation lists")
        archive = fetch(VOC2012_TRAINVAL, downloads, base_url=base_url, progress=progress)
        log.info("extracting %s into %s", archive, root / "VOC2012")
        extract_archive(
            archive, root / "VOC2012", member_root="VOCdevkit/VOC2012", progress=progress
        )
        base = root
    voc = base / "VOC2012"
    voc_train = _read_ids(voc / "ImageSets" / "Segmentation" / "train.txt")
    voc_val = _read_ids(voc / "ImageSets" / "Segmentation" / "val.txt")
    aug = base / "SegmentationClassAug"
    if not ((aug / AUG_MARKER).is_file() and (base / "train_aug.txt").is_file()):
        sbd = base / "SBD"
        if not _sbd_complete(sbd):
            _ensure_free(sbd, "cls/, train.txt or val.txt")
            archive = fetch(SBD_BENCHMARK, downloads, base_url=base_url, progress=progress)
            log.info("extracting the SBD class masks of %s into %s", archive, sbd)
            extract_archive(
                archive,
                sbd,
                member_root="benchmark_RELEASE/dataset",
                include=lambda rel: rel.startswith("cls/") or rel in ("train.txt", "val.txt"),
                progress=progress,
            )
        sbd_ids = set(_read_ids(sbd / "train.txt")) | set(_read_ids(sbd / "val.txt"))
        build_segmentation_class_aug(voc, sbd, aug, sorted(sbd_ids), progress=progress)
        train_aug = sorted((sbd_ids | set(voc_train)) - set(voc_val))
        if len(voc_val) == VOC_VAL_SIZE and len(train_aug) != TRAIN_AUG_SIZE:
            log.warning(
                "train_aug has %d ids, not the usual %d: check the VOC and SBD lists",
                len(train_aug),
                TRAIN_AUG_SIZE,
            )
        _write_ids(base / "train_aug.txt", train_aug)
    for name, ids in (("train.txt", voc_train), ("val.txt", voc_val)):
        if not (base / name).is_file():
            _write_ids(base / name, ids)
    if not keep_archives:
        for resource in (VOC2012_TRAINVAL, SBD_BENCHMARK):
            (downloads / resource.filename).unlink(missing_ok=True)


def build_segmentation_class_aug(
    voc: Path, sbd: Path, out: Path, sbd_ids: Sequence[str], *, progress: bool = True
) -> None:
    """Write ``out/<id>.png`` for every VOC-labelled id (VOC's PNG, byte for byte, 255 borders
    kept) and every other SBD id (its ``cls/<id>.mat`` as a VOC-palette PNG); then a marker.

    Resumable: labels are written atomically and existing ones are skipped.
    """
    voc_ids = sorted(path.stem for path in (voc / "SegmentationClass").glob("*.png"))
    voc_set = set(voc_ids)
    palette = voc_palette()
    todo = voc_ids + [i for i in sbd_ids if i not in voc_set]
    for sample_id in tqdm(todo, desc="SegmentationClassAug", unit="label", disable=not progress):
        target = out / f"{sample_id}.png"
        if target.is_file():
            continue
        if sample_id in voc_set:
            write_bytes(target, (voc / "SegmentationClass" / f"{sample_id}.png").read_bytes())
        else:
            write_label(target, read_sbd_mat(sbd / "cls" / f"{sample_id}.mat"), palette)
    write_json(
        out / AUG_MARKER, {"voc_labels": len(voc_ids), "sbd_labels": len(todo) - len(voc_ids)}
    )


def read_sbd_mat(path: Path) -> np.ndarray:
    """uint8 [H, W] class map of an SBD ``cls/<id>.mat`` (``GTcls.Segmentation``, 0..20)."""
    try:
        from scipy.io import loadmat
    except ImportError as error:
        raise DataError("converting SBD masks needs scipy: pip install scipy") from error
    if not path.is_file():
        raise DataError(f"SBD mask {path} does not exist although its id is in SBD's lists")
    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        segmentation = np.asarray(mat["GTcls"].Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
        raise CorruptFileError(
            f"SBD mask {path} cannot be read as GTcls.Segmentation: {error}"
        ) from error
    if segmentation.ndim != 2 or segmentation.dtype.kind not in "ui":
        raise CorruptFileError(
            f"SBD mask {path}: GTcls.Segmentation is {segmentation.dtype} {segmentation.shape}, "
            "expected a 2-D integer class map"
        )
    values = np.unique(segmentation)
    if ((values > len(VOC_CLASSES)) & (values != 255)).any() or (values < 0).any():
        raise CorruptFileError(f"SBD mask {path} has class ids {values.tolist()} outside 0..20")
    return segmentation.astype(np.uint8)


def _find_voc_base(root: Path) -> Path | None:
    """The directory holding a complete ``VOC2012``: ``root`` or ``root/VOCdevkit``."""
    for base in (root, root / "VOCdevkit"):
        voc = base / "VOC2012"
        lists = voc / "ImageSets" / "Segmentation"
        if is_extracted(voc) or (
            (voc / "JPEGImages").is_dir()
            and (voc / "SegmentationClass").is_dir()
            and (lists / "train.txt").is_file()
            and (lists / "val.txt").is_file()
        ):
            return base
    return None


def _ensure_free(directory: Path, lacks: str) -> None:
    """Fail before a long download if an incomplete tree occupies the extraction target."""
    if directory.exists() and not (directory.is_dir() and not any(directory.iterdir())):
        raise DataError(
            f"{directory} exists but lacks {lacks}; complete it, or move it away so that it can "
            "be downloaded and extracted there"
        )


def _sbd_complete(sbd: Path) -> bool:
    return is_extracted(sbd) or (
        (sbd / "cls").is_dir() and (sbd / "train.txt").is_file() and (sbd / "val.txt").is_file()
    )


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"id list {path} does not exist; the VOC/SBD extraction is incomplete")
    return [
        line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _write_ids(path: Path, ids: Sequence[str]) -> None:
    write_bytes(path, "".join(f"{i}\n" for i in ids).encode("utf-8"))


# -------------------------------------------------------------------------------------- COCO


def download_coco(
    root: str | Path,
    year: int,
    *,
    progress: bool = True,
    base_url: str | None = None,
    keep_archives: bool = True,
    splits: Sequence[str] = ("train", "val"),
) -> None:
    """Fetch COCO ``year`` (2014 or 2017) images and instance annotations into ``root``.

    Produces ``root/<split><year>/`` and ``root/annotations/instances_<split><year>.json``; a
    non-empty image directory or an existing annotation file is left as it is.
    """
    root = Path(root).expanduser()
    year = int(year)
    if (year, "annotations") not in COCO_RESOURCES:
        raise DataError(f"COCO year {year} is not downloadable here; use 2014 or 2017")
    unknown = [split for split in splits if (year, split) not in COCO_RESOURCES]
    if unknown:
        raise DataError(f"unknown COCO split(s) {unknown}; use 'train' and/or 'val'")
    downloads = root / "downloads"
    used: list[Resource] = []
    for split in splits:
        images = root / f"{split}{year}"
        if images.is_dir() and (is_extracted(images) or any(images.iterdir())):
            continue
        resource = COCO_RESOURCES[(year, split)]
        archive = fetch(resource, downloads, base_url=base_url, progress=progress)
        log.info("extracting %s into %s", archive, images)
        extract_archive(archive, images, member_root=images.name, progress=progress)
        used.append(resource)
    annotations = root / "annotations"
    wanted = [annotations / f"instances_{split}{year}.json" for split in splits]
    if not all(path.is_file() for path in wanted):
        resource = COCO_RESOURCES[(year, "annotations")]
        archive = fetch(resource, downloads, base_url=base_url, progress=progress)
        staging = root / f".annotations_trainval{year}"
        extract_archive(
            archive,
            staging,
            member_root="annotations",
            include=lambda rel: rel.startswith("instances_"),
            progress=progress,
        )
        annotations.mkdir(parents=True, exist_ok=True)
        for path in staging.glob("instances_*.json"):  # one atomic rename per file
            os.replace(path, annotations / path.name)
        shutil.rmtree(staging)
        used.append(resource)
        missing = [str(path) for path in wanted if not path.is_file()]
        if missing:
            raise DataError(f"{archive} did not contain {', '.join(missing)}")
    if not keep_archives:
        for resource in used:
            (downloads / resource.filename).unlink(missing_ok=True)
