"""A small synthetic dataset in the official MS-COCO layout, for ``reproduce coco --dry_run``.

``make_synthetic_coco(root)`` writes ``root/{train,val}<year>/*.jpg`` and
``root/annotations/instances_{train,val}<year>.json`` (all 80 categories with their official
ids; every image has one to two rectangular instances of a few classes, drawn in the class's
colour over noise, as polygons with ``bbox`` and ``area``), which ``wsss_pl.data.coco.COCO``
reads like the real thing. Same arguments give byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from wsss_pl.classes import COCO
from wsss_pl.io import write_bytes

# A few frequent COCO classes and the colour each is drawn in (RGB).
CLASSES = {
    "person": (220, 40, 40),
    "car": (40, 200, 40),
    "dog": (40, 40, 220),
    "cat": (220, 220, 40),
    "bus": (200, 40, 220),
}


def _image(
    rng: np.random.Generator, size: tuple[int, int], image_id: int
) -> tuple[np.ndarray, list[dict]]:
    """uint8 [H, W, 3] and its annotations (1-2 rectangles, later drawn on top)."""
    height, width = size
    pixels = rng.integers(70, 130, (height, width, 3), dtype=np.uint8)
    annotations = []
    names = list(CLASSES)
    for k in range(int(rng.integers(1, 3))):
        name = names[int(rng.integers(len(names)))]
        box_h = int(rng.integers(height // 4, height // 2 + 1))
        box_w = int(rng.integers(width // 4, width // 2 + 1))
        y0 = int(rng.integers(0, height - box_h + 1))
        x0 = int(rng.integers(0, width - box_w + 1))
        pixels[y0 : y0 + box_h, x0 : x0 + box_w] = CLASSES[name]
        x1, y1 = x0 + box_w, y0 + box_h
        annotations.append(
            {
                "id": image_id * 10 + k,
                "image_id": image_id,
                "category_id": COCO.category_ids[COCO.class_names.index(name)],  # type: ignore[index]
                "iscrowd": 0,
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                "bbox": [x0, y0, box_w, box_h],
                "area": box_w * box_h,
            }
        )
    return pixels, annotations


def make_synthetic_coco(
    root: str | Path,
    num_train: int = 12,
    num_val: int = 4,
    image_size: tuple[int, int] = (96, 128),
    year: int = 2014,
    seed: int = 0,
) -> Path:
    """Write the dataset under ``root`` (skipped when its annotation files exist); returns root."""
    if num_train < 1 or num_val < 1 or min(image_size) < 16:
        raise ValueError(
            f"need num_train >= 1, num_val >= 1 and an image_size of at least 16x16; got "
            f"num_train={num_train}, num_val={num_val}, image_size={image_size}"
        )
    root = Path(root)
    categories = [
        {"id": c, "name": n, "supercategory": "thing"}
        for c, n in zip(COCO.category_ids or (), COCO.class_names, strict=True)
    ]
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        annotation_file = root / "annotations" / f"instances_{split}{year}.json"
        if annotation_file.is_file():
            continue
        image_dir = root / f"{split}{year}"
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id = index + 1
            file_name = f"COCO_{split}{year}_{image_id:012d}.jpg"
            pixels, instances = _image(rng, image_size, image_id)
            Image.fromarray(pixels).save(image_dir / file_name, quality=95)
            images.append(
                {"id": image_id, "file_name": file_name,
                 "height": image_size[0], "width": image_size[1]}
            )  # fmt: skip
            annotations.extend(instances)
        content = {"images": images, "annotations": annotations, "categories": categories}
        annotation_file.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(annotation_file, json.dumps(content).encode())
    return root
