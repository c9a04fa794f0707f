"""COCO JSON export of cached pseudo-labels, read back with pycocotools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from wsss_pl.classes import COCO as COCO_VOCAB
from wsss_pl.classes import VOC, ClassVocabulary
from wsss_pl.errors import DataError
from wsss_pl.labeling.merge import merge_instances
from wsss_pl.labeling.storage.cache import PseudoLabelCache, decode_rle, encode_rle
from wsss_pl.labeling.storage.export import export_coco_json


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _fill(
    cache: PseudoLabelCache,
    vocab: ClassVocabulary,
    sample_id: str,
    spec: list[tuple[int, float, torch.Tensor]],
) -> None:
    """Store one entry whose instances are (label, score, mask) and whose map is their merge."""
    masks = torch.stack([m for _, _, m in spec])
    labels = torch.tensor([lab for lab, _, _ in spec])
    scores = torch.tensor([s for _, s, _ in spec])
    merged = merge_instances(masks, labels, scores, policy="paper")
    h, w = merged.shape
    instances = [
        {
            "label": lab,
            "class": vocab.class_names[lab - 1],
            "phrase": vocab.class_names[lab - 1],
            "score": s,
            "box": [0.0, 0.0, float(w), float(h)],
            "rle": encode_rle(m),
        }
        for lab, s, m in spec
    ]
    meta = {
        "id": sample_id,
        "height": h,
        "width": w,
        "instances": instances,
        "missing_classes": [],
        "num_unmatched_boxes": 0,
    }
    cache.store(sample_id, merged, meta)


@pytest.fixture
def voc_cache(tmp_path: Path) -> PseudoLabelCache:
    cache = PseudoLabelCache(tmp_path / "cache", "voc", {"merge": "paper"}, VOC.palette())
    cache.open()
    _fill(
        cache,
        VOC,
        "2007_000032",
        [
            (1, 0.9, _box(20, 30, 0, 12, 0, 30)),  # aeroplane, partly covered by the person
            (15, 0.8, _box(20, 30, 8, 20, 5, 15)),  # person
            (1, 0.4, _box(20, 30, 10, 12, 20, 25)),  # aeroplane inside the first one
            (12, 0.3, _box(20, 30, 9, 11, 6, 9)),  # dog, painted over the person
        ],
    )
    _fill(cache, VOC, "a/b", [(20, 0.7, _box(9, 11, 2, 7, 3, 10))])
    return cache


def _bbox_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() - xs.min() + 1),
        float(ys.max() - ys.min() + 1),
    ]


@pytest.mark.parametrize("visible_only", [True, False])
def test_export_round_trip_through_pycocotools(
    voc_cache: PseudoLabelCache, tmp_path: Path, visible_only: bool
) -> None:
    out = tmp_path / "pseudo.json"
    coco_dict = export_coco_json(
        voc_cache,
        VOC,
        out,
        image_file_names={"2007_000032": "JPEGImages/2007_000032.jpg"},
        visible_only=visible_only,
    )
    coco = COCO(str(out))
    assert [c["id"] for c in coco.loadCats(coco.getCatIds())] == list(range(1, 21))
    by_name = {img["wsss_pl_id"]: img for img in coco.loadImgs(coco.getImgIds())}
    assert by_name["2007_000032"]["file_name"] == "JPEGImages/2007_000032.jpg"
    assert by_name["a/b"]["file_name"] == "a/b.jpg"
    assert (by_name["a/b"]["height"], by_name["a/b"]["width"]) == (9, 11)

    num_instances = 0
    for sample_id, image in by_name.items():
        label = voc_cache.load(sample_id).numpy()
        meta = voc_cache.load_metadata(sample_id)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert len(anns) == len(meta["instances"])  # no instance of this fixture is fully hidden
        for ann, instance in zip(anns, meta["instances"], strict=True):
            raw = decode_rle(instance["rle"]).numpy()
            expected = raw & (label == instance["label"]) if visible_only else raw
            mask = coco.annToMask(ann).astype(bool)
            assert np.array_equal(mask, expected)
            assert ann["area"] == int(expected.sum())
            assert ann["bbox"] == _bbox_of(expected)
            assert ann["category_id"] == instance["label"] and ann["iscrowd"] == 0
            assert ann["score"] == pytest.approx(instance["score"])
            num_instances += 1
    assert num_instances == len(coco_dict["annotations"]) == 5
    if visible_only:
        # Visible masks of different classes never overlap and agree with the label map.
        person = coco.annToMask(coco.loadAnns(coco.getAnnIds(catIds=[15]))[0])
        plane = coco.annToMask(coco.loadAnns(coco.getAnnIds(catIds=[1]))[0])
        assert not (person & plane).any()


def test_fully_hidden_instance_is_skipped(tmp_path: Path) -> None:
    cache = PseudoLabelCache(tmp_path, "voc", {"x": 1}, VOC.palette())
    _fill(cache, VOC, "img", [(8, 0.5, _box(6, 6, 1, 3, 1, 3)), (9, 0.6, _box(6, 6, 0, 6, 0, 6))])
    coco_dict = export_coco_json(cache, VOC, tmp_path / "out.json")
    assert [a["category_id"] for a in coco_dict["annotations"]] == [9]
    assert coco_dict["info"]["skipped_empty_instances"] == 1
    assert (
        len(export_coco_json(cache, VOC, tmp_path / "raw.json", visible_only=False)["annotations"])
        == 2
    )


def test_coco_category_ids_and_numeric_image_ids(tmp_path: Path) -> None:
    cache = PseudoLabelCache(tmp_path, "coco", {"x": 1}, COCO_VOCAB.palette())
    # label 12 = "stop sign", COCO category id 13; label 80 = "toothbrush", id 90
    _fill(cache, COCO_VOCAB, "000000139077", [(12, 0.9, _box(8, 8, 0, 4, 0, 4))])
    _fill(cache, COCO_VOCAB, "000000000042", [(80, 0.9, _box(8, 8, 4, 8, 4, 8))])
    out = tmp_path / "coco.json"
    export_coco_json(cache, COCO_VOCAB, out)
    coco = COCO(str(out))
    assert sorted(coco.getImgIds()) == [42, 139077]
    assert coco.loadAnns(coco.getAnnIds(imgIds=[139077]))[0]["category_id"] == 13
    assert coco.loadAnns(coco.getAnnIds(imgIds=[42]))[0]["category_id"] == 90
    assert coco.loadCats([90])[0]["name"] == "toothbrush"


def test_wrong_vocabulary_is_an_error(voc_cache: PseudoLabelCache, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="vocabulary 'coco'"):
        export_coco_json(voc_cache, COCO_VOCAB, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
