"""MS-COCO instance annotations turned into semantic ground truth and image-level labels.

Layout (the official one)::

    <root>/<split><year>/<file_name>                     e.g. root/train2014/COCO_train2014_...jpg
    <root>/annotations/instances_<split><year>.json

Semantic ground truth (uint8 [H, W]): 0 background, 1..80 the COCO classes in category-id order
(``wsss_pl.classes.COCO``). Crowd regions are 255 (ignore) unless a non-crowd instance covers them.
Instances of different classes that overlap are resolved by ``overlap``: ``"smaller_on_top"``
paints instances from the largest to the smallest so a small object in front of a large one stays
visible; ``"ignore"`` sets pixels claimed by more than one class to 255.

Image-level labels: the classes of all the image's annotations, crowd included. Ids are the image
file stems. The annotation JSON is parsed once; each image keeps its annotations as a compact JSON
blob so that DataLoader workers do not duplicate hundreds of MB of Python objects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils

from wsss_pl.classes import COCO as COCO_VOCABULARY
from wsss_pl.classes import IGNORE_INDEX
from wsss_pl.data.base import (
    DatasetSource,
    SegmentationDataset,
    Stage,
    check_files_exist,
    configured_split,
    inside_root,
    wanted_splits,
)
from wsss_pl.errors import DataError, UnknownClassError
from wsss_pl.io import read_json

log = logging.getLogger(__name__)

Overlap = Literal["smaller_on_top", "ignore"]


def _what_to_get(root: Path, year: int) -> str:
    return (
        f"Get MS-COCO {year} from https://cocodataset.org: train{year}.zip, val{year}.zip and "
        f"annotations_trainval{year}.zip, and unpack them into {root} so that "
        f"{root}/train{year}/, {root}/val{year}/ and {root}/annotations/instances_train{year}.json "
        "exist; or set download: true to fetch them."
    )


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """bool [H, W] mask of one COCO ``segmentation`` (polygons, uncompressed or compressed RLE)."""
    if isinstance(segmentation, list):  # polygons: one instance may have several parts
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE (crowd regions)
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:  # compressed RLE
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def rasterize(
    annotations: list[dict[str, Any]],
    height: int,
    width: int,
    category_to_label: dict[int, int],
    overlap: Overlap = "smaller_on_top",
) -> np.ndarray:
    """uint8 [H, W] semantic map of an image's annotations (see the module docstring for rules).

    ``annotations`` are COCO annotation dicts (``segmentation``, ``category_id``, ``iscrowd``);
    ``category_to_label`` maps a COCO category id to its label id 1..C.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    crowd = np.zeros((height, width), dtype=bool)
    instances: list[tuple[int, np.ndarray]] = []
    for annotation in annotations:
        if not annotation.get("segmentation"):
            continue  # a few COCO annotations have an empty segmentation; nothing to paint
        mask = annotation_mask(annotation["segmentation"], height, width)
        if annotation.get("iscrowd", 0):
            crowd |= mask
        else:
            instances.append((category_to_label[annotation["category_id"]], mask))
    covered = np.zeros((height, width), dtype=bool)
    if overlap == "smaller_on_top":
        # Stable sort: equal areas keep annotation order (later on top).
        for value, mask in sorted(instances, key=lambda item: -int(item[1].sum())):
            label[mask] = value
            covered |= mask
    elif overlap == "ignore":
        conflict = np.zeros((height, width), dtype=bool)
        for value, mask in instances:
            conflict |= mask & covered & (label != value)
            label[mask] = value
            covered |= mask
        label[conflict] = IGNORE_INDEX
    else:
        raise ValueError(f"overlap must be 'smaller_on_top' or 'ignore', got {overlap!r}")
    label[crowd & ~covered] = IGNORE_INDEX
    return label


class COCODataset(SegmentationDataset):
    """One split of MS-COCO (``<root>/<split><year>``) with semantic GT from the instance JSON.

    Args:
        root: COCO root holding ``<split><year>/`` and ``annotations/``.
        split: ``"train"``, ``"val"``, ...
        year: 2014 (the WSSS benchmark) or 2017.
        drop_images_without_annotations: leave out images without any annotation (WSSS standard).
        overlap: ``"smaller_on_top"`` or ``"ignore"`` (see the module docstring).
        skip_missing: skip (and count) ids whose image file is missing instead of raising.
        skip_corrupt: return None for a sample whose image cannot be decoded.

    Samples: image uint8 [3, H, W], labels float32 [80], gt uint8 [H, W].
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        year: int = 2014,
        drop_images_without_annotations: bool = True,
        overlap: Overlap = "smaller_on_top",
        skip_missing: bool = False,
        skip_corrupt: bool = False,
    ) -> None:
        if overlap not in ("smaller_on_top", "ignore"):
            raise ValueError(f"overlap must be 'smaller_on_top' or 'ignore', got {overlap!r}")
        self.root = Path(root).expanduser()
        self.split = split
        self.year = year
        self.overlap: Overlap = overlap
        self.skip_corrupt = skip_corrupt
        self.vocabulary = COCO_VOCABULARY
        self.image_dir = self.root / f"{split}{year}"
        self.annotation_file = self.root / "annotations" / f"instances_{split}{year}.json"
        if not self.annotation_file.is_file() or not self.image_dir.is_dir():
            raise DataError(
                f"COCO split {split!r} (year {year}): missing "
                + " and ".join(
                    str(p) for p in (self.annotation_file, self.image_dir) if not p.exists()
                )
                + ". "
                + _what_to_get(self.root, year)
            )
        assert self.vocabulary.category_ids is not None
        self._category_to_label = {c: i + 1 for i, c in enumerate(self.vocabulary.category_ids)}
        self._load(drop_images_without_annotations, skip_missing)

    def _load(self, drop_empty: bool, skip_missing: bool) -> None:
        """Parse the annotation JSON once into per-image records."""
        content = read_json(self.annotation_file)
        source = self.annotation_file
        if not isinstance(content, dict) or "images" not in content or "annotations" not in content:
            raise DataError(
                f"{source} is not a COCO instances file (needs 'images' and 'annotations')"
            )
        names = {c["id"]: c["name"] for c in content.get("categories", [])}
        for category_id, name in names.items():
            known = self._category_to_label.get(category_id)
            if known is None or self.vocabulary.class_names[known - 1] != name:
                raise UnknownClassError(
                    f"{source}: category {category_id} ({name!r}) is not one of the 80 COCO "
                    f"classes with these ids; valid names: {', '.join(self.vocabulary.class_names)}"
                )
        per_image: dict[int, list[dict[str, Any]]] = {}
        for annotation in content["annotations"]:
            per_image.setdefault(annotation["image_id"], []).append(annotation)
        self._records: dict[str, tuple[str, int, int, bytes]] = {}
        self._labels: dict[str, list[str]] = {}
        ids: list[str] = []
        dropped = 0
        for image in content["images"]:
            sample_id = Path(image["file_name"]).stem
            inside_root(self.image_dir, image["file_name"], "file_name", str(source))
            annotations = per_image.get(image["id"], [])
            if not annotations and drop_empty:
                dropped += 1
                continue
            if sample_id in self._records:
                raise DataError(f"{source}: file name {image['file_name']!r} appears twice")
            labels: list[int] = []
            for annotation in annotations:
                value = self._category_to_label.get(annotation["category_id"])
                if value is None:
                    raise UnknownClassError(
                        f"{source}: image {sample_id!r} has an annotation with unknown category "
                        f"id {annotation['category_id']}; valid ids: "
                        f"{', '.join(map(str, self._category_to_label))}"
                    )
                labels.append(value)
            kept = [
                {k: a[k] for k in ("segmentation", "category_id", "iscrowd") if k in a}
                for a in annotations
            ]
            blob = json.dumps(kept, separators=(",", ":")).encode()
            self._records[sample_id] = (image["file_name"], image["height"], image["width"], blob)
            self._labels[sample_id] = [
                self.vocabulary.class_names[v - 1] for v in sorted(set(labels))
            ]
            ids.append(sample_id)
        if dropped:
            log.info("%s: left out %d images without annotations", source, dropped)
        context = f"COCO split {self.split}{self.year} ({source})"
        self.ids = check_files_exist(
            ids, [self.image_path(i) for i in ids], "image file", skip_missing, context
        )
        if not self.ids:
            raise DataError(
                f"{context}: no images left; check the annotation file and image folder"
            )

    def image_path(self, sample_id: str) -> Path:
        return self.image_dir / self._records[sample_id][0]

    def annotations(self, sample_id: str) -> list[dict[str, Any]]:
        """The COCO annotations (segmentation, category_id, iscrowd) of ``sample_id``."""
        return json.loads(self._records[sample_id][3])

    def gt_path(self, sample_id: str) -> Path | None:
        return self.annotation_file  # the masks are drawn from its polygons at its image size

    def load_gt(self, sample_id: str) -> torch.Tensor:
        _, height, width, _ = self._records[sample_id]
        label = rasterize(
            self.annotations(sample_id), height, width, self._category_to_label, self.overlap
        )
        return torch.from_numpy(label)

    def image_labels(self, sample_id: str) -> list[str]:
        return self._labels[sample_id]


class COCO(DatasetSource):
    """MS-COCO as a dataset source (LightningCLI config schema: plain types only).

    Args:
        root: COCO root holding ``<split><year>/`` image folders and ``annotations/``.
        year: 2014 (WSSS benchmark: train 82,081 annotated images, val 40,137) or 2017.
        train_split / val_split / test_split / predict_split: split names (None: no such stage).
        drop_images_without_annotations: leave out images without annotations (WSSS standard).
        overlap: how overlapping instances of different classes are resolved:
            ``"smaller_on_top"`` or ``"ignore"`` (overlap set to 255).
        download: fetch images and annotations in ``prepare_data`` when missing.
        skip_missing: skip ids whose image file is missing (counted, logged).
        skip_corrupt: skip samples whose image cannot be decoded.
    """

    def __init__(
        self,
        root: str,
        year: int = 2014,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = "val",
        predict_split: str | None = None,
        drop_images_without_annotations: bool = True,
        overlap: Overlap = "smaller_on_top",
        download: bool = False,
        skip_missing: bool = False,
        skip_corrupt: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        self.year = year
        self.splits: dict[Stage, str | None] = {
            "train": train_split,
            "val": val_split,
            "test": test_split,
            "predict": predict_split,
        }
        self.drop_images_without_annotations = drop_images_without_annotations
        self.overlap: Overlap = overlap
        self.download = download
        self.skip_missing = skip_missing
        self.skip_corrupt = skip_corrupt
        self.vocabulary = COCO_VOCABULARY

    def _missing(self, stages: Collection[Stage] | None = None) -> list[Path]:
        """Annotation files and image folders of the splits of ``stages`` (None: all configured
        splits) that are not there."""
        missing: list[Path] = []
        for split in wanted_splits(self.splits, stages):
            for path in (
                self.root / f"{split}{self.year}",
                self.root / "annotations" / f"instances_{split}{self.year}.json",
            ):
                if not path.exists():
                    missing.append(path)
        return missing

    def prepare_data(self, stages: Collection[Stage] | None = None) -> None:
        missing = self._missing(stages)
        if missing and self.download:
            from wsss_pl.data.download import download_coco  # lazy: network code only when asked

            download_coco(self.root, self.year)
            missing = self._missing(stages)
        if missing:
            raise DataError(
                f"COCO data is not in place: missing {', '.join(map(str, missing))}. "
                + _what_to_get(self.root, self.year)
            )

    def dataset(self, stage: Stage) -> COCODataset:
        split = configured_split(self.splits, stage, "COCO")
        return COCODataset(
            self.root,
            split,
            year=self.year,
            drop_images_without_annotations=self.drop_images_without_annotations,
            overlap=self.overlap,
            skip_missing=self.skip_missing,
            skip_corrupt=self.skip_corrupt,
        )
