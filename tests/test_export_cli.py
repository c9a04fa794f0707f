"""``python -m wsss_pl export-labels``: a cache directory -> COCO JSON loadable by pycocotools."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO as CocoApi

from wsss_pl.classes import VOC, voc_palette
from wsss_pl.cli import main
from wsss_pl.errors import CacheError
from wsss_pl.labeling.storage.cache import PseudoLabelCache, encode_rle


def _filled_cache(root: Path) -> PseudoLabelCache:
    cache = PseudoLabelCache(
        root, "voc", {"classes": list(VOC.class_names), "box_threshold": 0.3}, voc_palette()
    )
    cache.open()
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[2:10, 3:12] = True
    label = mask.to(torch.uint8) * VOC.label_id("dog")
    instance = {"label": VOC.label_id("dog"), "class": "dog", "phrase": "dog", "score": 0.9,
                "box": [3.0, 2.0, 12.0, 10.0], "rle": encode_rle(mask)}  # fmt: skip
    metadata = {"id": "2007_000001", "height": 20, "width": 30, "instances": [instance],
                "missing_classes": [], "num_unmatched_boxes": 0}  # fmt: skip
    cache.store("2007_000001", label, metadata)
    return cache


def test_export_labels_command_round_trips_through_pycocotools(tmp_path: Path) -> None:
    cache = _filled_cache(tmp_path / "cache")
    output = tmp_path / "labels.json"
    assert main(["export-labels", "--cache", str(cache.directory), "--output", str(output)]) == 0
    coco = CocoApi(str(output))
    (annotation,) = coco.loadAnns(coco.getAnnIds())
    assert coco.loadCats(annotation["category_id"])[0]["name"] == "dog"
    assert coco.imgs[annotation["image_id"]]["file_name"] == "2007_000001.jpg"
    assert int(coco.annToMask(annotation).sum()) == 8 * 9


def test_export_refuses_a_directory_that_is_not_its_fingerprint(tmp_path: Path) -> None:
    cache = _filled_cache(tmp_path / "cache")
    renamed = cache.directory.parent / "0000000000000000"
    shutil.copytree(cache.directory, renamed)
    with pytest.raises(CacheError, match="not to the directory name"):
        PseudoLabelCache.from_directory(renamed)
    assert (
        main(["export-labels", "--cache", str(tmp_path), "--output", str(tmp_path / "x.json")]) == 2
    )
