"""A small synthetic dataset in the real VOC 2012 layout, for demos and the fast test suite.

Every class gets its own shape and its own saturated hue on a grey, textured background, so a tiny
network learns it in a few epochs. Label maps use the ids of the 20-class VOC vocabulary (so configs
written for real VOC work unchanged) with a thin 255 boundary around objects, like real VOC.
"""

from __future__ import annotations

import colorsys
import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw

from wsss_pl.classes import VOC, voc_palette
from wsss_pl.data.base import DatasetSource, SegmentationDataset, Stage
from wsss_pl.data.voc import VOCDataset
from wsss_pl.errors import DataError
from wsss_pl.io import (
    DIR_MODE,
    TEMP_SUFFIX,
    orphan_temp_file,
    temp_prefix,
    write_bytes,
    write_label,
)

log = logging.getLogger(__name__)

# Bump when the generated content changes: an old dataset on disk is then regenerated.
GENERATOR_VERSION = 1
MARKER_NAME = ".synthetic_voc.json"
DEFAULT_CLASSES: tuple[str, ...] = ("aeroplane", "bus", "cat", "dog", "person")
_SHAPES: tuple[str, ...] = ("cross", "box", "triangle", "ellipse", "figure", "diamond", "ring")
_MIN_VISIBLE = 0.5  # fraction of an object's pixels that must stay visible after later objects


def _shape_mask(shape: str, size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """bool [H, W] mask of ``shape`` drawn inside ``box`` = (x0, y0, x1, y1), ``size`` = (H, W)."""
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape == "cross":  # aeroplane-like: fuselage plus wings
        draw.rectangle((x0, cy - h * 0.15, x1, cy + h * 0.15), fill=1)
        draw.rectangle((cx - w * 0.12, y0, cx + w * 0.12, y1), fill=1)
    elif shape == "box":
        draw.rectangle((x0, y0 + h * 0.15, x1, y1 - h * 0.15), fill=1)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=1)
    elif shape == "ellipse":
        draw.ellipse((x0, y0 + h * 0.1, x1, y1 - h * 0.1), fill=1)
    elif shape == "figure":  # person-like: head over a narrow body
        draw.ellipse((cx - w * 0.2, y0, cx + w * 0.2, y0 + h * 0.3), fill=1)
        draw.rectangle((cx - w * 0.25, y0 + h * 0.3, cx + w * 0.25, y1), fill=1)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=1)
    else:  # ring
        draw.ellipse((x0, y0, x1, y1), fill=1)
        draw.ellipse((x0 + w * 0.3, y0 + h * 0.3, x1 - w * 0.3, y1 - h * 0.3), fill=0)
    return np.asarray(canvas, dtype=bool)


def _class_colour(index: int, count: int) -> np.ndarray:
    """float32 [3] RGB in 0..255: hues spread evenly over the classes, fully saturated."""
    r, g, b = colorsys.hsv_to_rgb(index / max(count, 1), 0.85, 0.95)
    return np.array([r, g, b], dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """float32 [H, W, 3] low-saturation texture: smooth blobs plus pixel noise."""
    height, width = size
    coarse = rng.uniform(60, 190, size=(height // 16 + 2, width // 16 + 2)).astype(np.float32)
    smooth = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32
    )
    tint = rng.uniform(-12, 12, size=3).astype(np.float32)  # slight colour cast, stays greyish
    noise = rng.normal(0, 10, size=(height, width, 3)).astype(np.float32)
    return smooth[..., None] + tint + noise


def _boundary(label: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels within 1 px of a change of label value (a ~2-3 px band, as in VOC)."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    edge[:-1, :] |= label[1:, :] != label[:-1, :]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    grown = edge.copy()
    grown[1:, :] |= edge[:-1, :]
    grown[:-1, :] |= edge[1:, :]
    grown[:, 1:] |= edge[:, :-1]
    grown[:, :-1] |= edge[:, 1:]
    return grown


def _render(
    rng: np.random.Generator, index: int, size: tuple[int, int], classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """One image: uint8 [H, W, 3] RGB, uint8 [H, W] VOC label map, [(class, 1-based VOC bbox)]."""
    height, width = size
    count = min(int(rng.integers(1, 4)), len(classes))
    # The first class cycles with the index so every class appears even in a tiny train split.
    first = index % len(classes)
    others = [i for i in range(len(classes)) if i != first]
    chosen = [first, *rng.choice(others, size=count - 1, replace=False).tolist()]
    for _attempt in range(50):
        instance = np.zeros(size, dtype=np.int16)  # 0 = none, k = k-th object (later on top)
        full_areas: list[int] = []
        for k, class_index in enumerate(chosen, start=1):
            h = int(min(height, width) * rng.uniform(0.35, 0.6))
            w = min(int(h * rng.uniform(0.8, 1.25)), width - 1)
            x0 = int(rng.integers(0, width - w))
            y0 = int(rng.integers(0, height - h))
            shape = _SHAPES[class_index % len(_SHAPES)]
            mask = _shape_mask(shape, size, (x0, y0, x0 + w, y0 + h))
            full_areas.append(int(mask.sum()))
            instance[mask] = k
        # Retry until every object keeps most of its area: its class must be visible in the mask.
        visible = [int((instance == k).sum()) for k in range(1, len(chosen) + 1)]
        if all(v >= _MIN_VISIBLE * a for v, a in zip(visible, full_areas, strict=True)):
            break
    else:  # rare: keep only the topmost object, which is always fully visible
        chosen = chosen[-1:]
        instance = (instance == len(full_areas)).astype(np.int16)
    image = _background(rng, size)
    label = np.zeros(size, dtype=np.uint8)
    objects: list[tuple[str, tuple[int, int, int, int]]] = []
    for k, class_index in enumerate(chosen, start=1):
        mask = instance == k
        name = classes[class_index]
        colour = _class_colour(class_index, len(classes)) * rng.uniform(0.85, 1.0)
        image[mask] = colour + rng.normal(0, 12, size=(int(mask.sum()), 3)).astype(np.float32)
        label[mask] = VOC.label_id(name)
        ys, xs = np.nonzero(mask)
        objects.append(
            (name, (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1))
        )
    label[_boundary(label)] = 255
    return np.clip(image, 0, 255).astype(np.uint8), label, objects


def _annotation_xml(
    sample_id: str, size: tuple[int, int], objects: list[tuple[str, tuple[int, int, int, int]]]
) -> bytes:
    """VOC-style annotation XML (filename, size, one <object> with <name> and <bndbox> each)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{sample_id}.jpg"
    size_element = ET.SubElement(root, "size")
    ET.SubElement(size_element, "width").text = str(size[1])
    ET.SubElement(size_element, "height").text = str(size[0])
    ET.SubElement(size_element, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1"
    for name, (x0, y0, x1, y1) in objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = name
        ET.SubElement(element, "pose").text = "Unspecified"
        ET.SubElement(element, "truncated").text = "0"
        ET.SubElement(element, "difficult").text = "0"
        box = ET.SubElement(element, "bndbox")
        for tag, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def make_synthetic_voc(
    root: str | Path,
    num_train: int = 24,
    num_val: int = 8,
    image_size: tuple[int, int] = (120, 160),
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
) -> Path:
    """Write a synthetic VOC 2012-format dataset under ``root`` and return ``root``.

    Layout: ``root/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, Annotations/<id>.xml,
    ImageSets/Segmentation/{train,val}.txt}``, ids ``synth_000000`` ... (train first, then val).
    Images are uint8 RGB of ``image_size`` = (H, W), JPEG quality 95; label maps are palette PNGs
    with VOC label ids (0 background, 1..20, 255 boundary). Image ``k`` depends only on
    (``seed``, ``k``, ``image_size``, ``classes``).

    Idempotent: ``root/VOC2012`` holds a marker with the parameters; an existing dataset with the
    same parameters is kept, one with other parameters is replaced. The dataset is built in a
    temporary directory and renamed into place, so a killed run never looks complete.
    """
    root = Path(root)
    height, width = (int(v) for v in image_size)
    classes = [str(c) for c in classes]
    for name in classes:
        VOC.label_id(name)  # raises UnknownClassError naming the valid VOC names
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct VOC class names, got {classes}")
    if num_train < 1 or num_val < 0 or min(height, width) < 32:
        raise ValueError(
            f"need num_train >= 1, num_val >= 0 and an image_size of at least 32x32; got "
            f"num_train={num_train}, num_val={num_val}, image_size={image_size}"
        )
    params = {
        "generator_version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [height, width],
        "seed": int(seed),
        "classes": classes,
    }
    target = root / "VOC2012"
    if _read_marker(target / MARKER_NAME) == params:
        return root
    if target.exists() and not (target / MARKER_NAME).is_file():
        raise DataError(
            f"{target} exists but is not a synthetic dataset made by wsss_pl (no {MARKER_NAME}); "
            "refusing to overwrite it. Choose another root for the synthetic data."
        )
    root.mkdir(parents=True, exist_ok=True)
    _remove_orphan_staging(root)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=temp_prefix("VOC2012"), suffix=TEMP_SUFFIX))
    try:
        staging.chmod(DIR_MODE)  # mkdtemp makes it private; the dataset is meant to be shared
        _generate(staging, params)
        _publish(staging, target, params)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote synthetic VOC dataset (%d train, %d val) to %s", num_train, num_val, target)
    return root


def _publish(staging: Path, target: Path, params: dict[str, Any]) -> None:
    """Rename the complete ``staging`` set to ``target`` unless another process already put an
    identical set there (kept as it is: it may be in use); a set with other parameters is renamed
    aside first, then deleted, so no reader ever sees a half-deleted dataset."""
    for _attempt in range(10):
        if _read_marker(target / MARKER_NAME) == params:
            return  # another process (a second label run, a DDP rank) finished first
        if target.exists():
            if not (target / MARKER_NAME).is_file():
                raise DataError(
                    f"{target} exists but is not a synthetic dataset made by wsss_pl (no "
                    f"{MARKER_NAME}); refusing to overwrite it. Choose another root."
                )
            log.info("replacing synthetic dataset %s (parameters changed)", target)
            trash = Path(
                tempfile.mkdtemp(
                    dir=target.parent, prefix=temp_prefix("VOC2012"), suffix=TEMP_SUFFIX
                )
            )
            with contextlib.suppress(FileNotFoundError):  # someone else moved it
                os.replace(target, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(staging, target)
            return
        except OSError:  # a set appeared meanwhile (ENOTEMPTY / EEXIST): look at it again
            continue
    raise DataError(f"could not place the synthetic dataset at {target}: it keeps changing")


def _remove_orphan_staging(root: Path) -> None:
    """Delete staging folders of generators that were killed (dead pid on this host)."""
    for path in root.glob(f".VOC2012.*{TEMP_SUFFIX}"):
        try:
            if path.is_dir() and orphan_temp_file(path.name, 3600, path.stat().st_mtime):
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _generate(voc_dir: Path, params: dict[str, Any]) -> None:
    """Write all files of the dataset described by ``params`` into ``voc_dir``; marker last."""
    size = (params["image_size"][0], params["image_size"][1])
    total = params["num_train"] + params["num_val"]
    ids = [f"synth_{k:06d}" for k in range(total)]
    palette = voc_palette()
    for k, sample_id in enumerate(ids):
        rng = np.random.default_rng([params["seed"], k])
        image, label, objects = _render(rng, k, size, params["classes"])
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        write_bytes(voc_dir / "JPEGImages" / f"{sample_id}.jpg", buffer.getvalue())
        write_label(voc_dir / "SegmentationClass" / f"{sample_id}.png", label, palette)
        write_bytes(
            voc_dir / "Annotations" / f"{sample_id}.xml", _annotation_xml(sample_id, size, objects)
        )
    lists = voc_dir / "ImageSets" / "Segmentation"
    train_ids, val_ids = ids[: params["num_train"]], ids[params["num_train"] :]
    write_bytes(lists / "train.txt", "".join(f"{i}\n" for i in train_ids).encode())
    write_bytes(lists / "val.txt", "".join(f"{i}\n" for i in val_ids).encode())
    write_bytes(lists / "trainval.txt", "".join(f"{i}\n" for i in ids).encode())
    write_bytes(voc_dir / MARKER_NAME, json.dumps(params, indent=1).encode())


class SyntheticVOC(DatasetSource):
    """The synthetic VOC-format dataset as a dataset source (vocabulary: all 20 VOC classes).

    Args:
        root: directory to generate into (``root/VOC2012``).
        num_train: number of train images (split ``train``).
        num_val: number of val images (split ``val``, also used for test and predict).
        image_size: (H, W) of every image.
        seed: generation seed; same seed and sizes give byte-identical files.
    """

    def __init__(
        self,
        root: str = "data/synthetic_voc",
        num_train: int = 24,
        num_val: int = 8,
        image_size: tuple[int, int] = (120, 160),
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.num_train = num_train
        self.num_val = num_val
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.seed = seed
        self.vocabulary = VOC

    @property
    def name(self) -> str:
        # Content depends on these, so pseudo-label caches of different sets must not mix.
        height, width = self.image_size
        return f"synthetic_voc_v{GENERATOR_VERSION}_seed{self.seed}_{height}x{width}"

    def prepare_data(self, stages: Collection[Stage] | None = None) -> None:
        make_synthetic_voc(self.root, self.num_train, self.num_val, self.image_size, self.seed)

    def dataset(self, stage: Stage) -> SegmentationDataset:
        # Idempotent and cheap when already generated; lets a dataset be built without prepare_data.
        self.prepare_data()
        split = "train" if stage == "train" else "val"
        return VOCDataset(self.root, split, gt_dirs=["VOC2012/SegmentationClass"])
