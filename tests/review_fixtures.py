"""A synthetic VOC set, its training config and a pseudo-label cache for the review tests."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from wsss_pl.classes import VOC, voc_palette
from wsss_pl.data.synthetic import SyntheticVOC
from wsss_pl.labeling.online import OnlinePseudoLabels
from wsss_pl.labeling.storage.cache import PseudoLabelCache, encode_rle

SIZE = (40, 56)


def instance(mask: torch.Tensor, class_id: int, score: float = 0.9) -> dict:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    box = [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]
    name = VOC.class_names[class_id - 1]
    return {"label": class_id, "class": name, "phrase": name, "score": score, "box": box,
            "rle": encode_rle(mask)}  # fmt: skip


def entry(gt: torch.Tensor, sample_id: str) -> tuple[torch.Tensor, dict]:
    """A perfect label of ``gt``: one instance per class, tight boxes, score 0.9."""
    label = gt.clone()
    label[label == 255] = 0
    instances = [instance(label == c, int(c)) for c in torch.unique(label).tolist() if c != 0]
    metadata = {"id": sample_id, "height": gt.shape[0], "width": gt.shape[1],
                "instances": instances, "missing_classes": [], "num_unmatched_boxes": 0,
                "classes": [VOC.class_names[int(c) - 1] for c in torch.unique(label) if c != 0]}  # fmt: skip
    return label, metadata


def review_setup(tmp_path: Path) -> tuple[Path, PseudoLabelCache, list[str]]:
    """A synthetic VOC set, its config, and a cache where ids 1..3 each have one defect."""
    source = SyntheticVOC(str(tmp_path / "data"), num_train=4, num_val=1, image_size=SIZE)
    source.prepare_data()
    dataset = source.dataset("train")
    cache = PseudoLabelCache(
        tmp_path / "labels", source.name, {"classes": list(VOC.class_names)}, voc_palette()
    )
    cache.open()
    ids = dataset.ids
    for index, sample_id in enumerate(ids):
        label, metadata = entry(dataset.load_gt(sample_id), sample_id)
        if index == 1:  # its first class got no box
            dropped = metadata["instances"].pop(0)
            label[label == dropped["label"]] = 0
            metadata["missing_classes"] = [dropped["class"]]
            if not metadata["instances"]:  # keep one detected class
                other = 1 if dropped["label"] != 1 else 2
                metadata["instances"].append(instance(label == 0, other))
                label[:] = other
        elif index == 2:  # a second class claims the whole image
            everything = torch.ones(SIZE, dtype=torch.bool)
            metadata["instances"].append(instance(everything, 20, score=0.35))
        elif index == 3:  # the detector fired on six phrases that are no class
            metadata["num_unmatched_boxes"] = 6
        cache.store(sample_id, label, metadata)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "source": {
                        "class_path": "wsss_pl.data.synthetic.SyntheticVOC",
                        "init_args": {"root": str(tmp_path / "data"), "num_train": 4,
                                      "num_val": 1, "image_size": list(SIZE)},
                    },
                    "train_labels": {
                        "class_path": "wsss_pl.labeling.online.OnlinePseudoLabels",
                        "init_args": {"cache_root": str(tmp_path / "labels")},
                    },
                }
            }
        )
    )  # fmt: skip
    return config, cache, ids


def reviewer_edit(task: dict, cached: torch.Tensor) -> tuple[list[dict], torch.Tensor]:
    """A reviewer's annotation of a task made by ``export-review``: the first region's class
    becomes "cow", the second region is deleted, and a 6x6 "dog" square is added at the top left
    (cut out of the other regions). Returns (annotation result, expected uint8 [H, W] label)."""
    import numpy as np

    from wsss_pl.corrections import brush

    regions = [dict(r, value=dict(r["value"])) for r in task["predictions"][0]["result"]]
    assert len(regions) >= 2, "the edit needs two regions"
    height, width = cached.shape
    masks = [brush.decode(r["value"]["rle"], height, width) for r in regions]
    expected = cached.numpy().copy()
    expected[masks[0]] = VOC.label_id("cow")
    expected[masks[1]] = 0
    square = np.zeros((height, width), dtype=bool)
    square[:6, :6] = True
    expected[square] = VOC.label_id("dog")
    regions[0]["value"]["brushlabels"] = ["cow"]
    kept = [regions[0], *regions[2:]]
    kept_masks = [masks[0], *masks[2:]]
    result = []
    for region, mask in zip(kept, kept_masks, strict=True):
        rest = mask & ~square
        if rest.any():
            region["value"]["rle"] = brush.encode(rest)
            region.pop("score", None)
            result.append(region)
    added = dict(kept[0], id="added1", value={"format": "rle", "rle": brush.encode(square),
                                                "brushlabels": ["dog"]})  # fmt: skip
    result.append(added)
    return result, torch.from_numpy(expected)


def training_target(config: Path, cache: PseudoLabelCache, sample_id: str) -> torch.Tensor:
    """What ``fit`` trains ``sample_id`` on: OnlinePseudoLabels' worker-side loader."""
    import yaml

    init = yaml.safe_load(config.read_text())["data"]["source"]["init_args"]
    source = SyntheticVOC(**init)
    dataset = source.dataset("train")
    labels = OnlinePseudoLabels(cache_root=str(cache.root), detector="tiny", sam_checkpoint="tiny")
    labels.cache, labels.vocabulary = cache, VOC  # the cache the test made (its own settings)
    sample = dataset[dataset.ids.index(sample_id)]
    target = labels.loader()(sample)
    assert target is not None
    return target
