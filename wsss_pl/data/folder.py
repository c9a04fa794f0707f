"""A folder of the user's own images with image-level labels for the user's own classes.

Labels file, either format (chosen by extension: ``.json`` is JSON, anything else is text):

- JSON: ``{"<file name or id>": ["cat", "dog"], ...}``
- text: one image per line, ``<file name or id> <class>,<class>`` (class names may contain spaces,
  file names may not; ``#`` starts a comment line; nothing after the name means no classes).

A key with an extension names the file relative to ``root`` (subfolders allowed); a bare id is
looked up as ``root/<id>.{jpg,jpeg,png,bmp,webp}``. The id of an image is its file stem.
Optional ground truth: ``<masks_dir>/<id>.png`` (palette or greyscale, values 0..C or 255).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection
from pathlib import Path

import torch

from wsss_pl.classes import IGNORE_INDEX, ClassVocabulary
from wsss_pl.data.base import (
    DatasetSource,
    SegmentationDataset,
    Stage,
    check_files_exist,
    inside_root,
)
from wsss_pl.errors import CorruptFileError, DataError, UnknownClassError
from wsss_pl.io import read_label

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _resolve(path: str, root: Path) -> Path:
    """``path`` if absolute, else ``root/path`` if that exists, else relative to the cwd."""
    given = Path(path).expanduser()
    if given.is_absolute() or not (root / given).exists():
        return given
    return root / given


def read_labels_file(path: Path) -> dict[str, list[str]]:
    """Key (file name or id) -> class names, from a JSON or text labels file (module docstring)."""
    if not path.is_file():
        raise DataError(
            f"labels file {path} does not exist; write JSON {{file name: [class names]}} or text "
            "lines '<file name> <class>,<class>'"
        )
    text = path.read_text(encoding="utf-8")
    entries: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            content = json.loads(text)
        except json.JSONDecodeError as error:
            raise CorruptFileError(f"labels file {path} is malformed JSON: {error}") from error
        if not isinstance(content, dict):
            raise DataError(
                f"labels file {path} must be a JSON object {{file name: [class names]}}"
            )
        for key, names in content.items():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise DataError(
                    f"labels file {path}: entry {key!r} must be a list of class names, got {names!r}"
                )
            entries[key] = [n.strip() for n in names]
        return entries
    for line_number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, *rest_parts = stripped.split(maxsplit=1)
        rest = rest_parts[0] if rest_parts else ""
        if key in entries:
            raise DataError(f"labels file {path}: {key!r} is listed twice (line {line_number})")
        entries[key] = [n.strip() for n in rest.split(",") if n.strip()]
    return entries


class ImageFolderDataset(SegmentationDataset):
    """The images named in one labels file (see the module docstring for formats).

    Samples: image uint8 [3, H, W], labels float32 [C], gt uint8 [H, W] or None.
    """

    def __init__(
        self,
        root: str | Path,
        labels_file: str | Path,
        vocabulary: ClassVocabulary,
        masks_dir: str | Path | None = None,
        allow_empty: bool = False,
        skip_missing: bool = False,
        skip_corrupt: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(
                f"image folder {self.root} does not exist; set root to your image folder"
            )
        self.vocabulary = vocabulary
        self.skip_corrupt = skip_corrupt
        self.labels_file = _resolve(str(labels_file), self.root)
        context = f"labels file {self.labels_file}"
        self._paths: dict[str, Path] = {}
        self._labels: dict[str, list[str]] = {}
        keys: dict[str, str] = {}
        for key, names in read_labels_file(self.labels_file).items():
            sample_id, path = self._locate(key)
            if sample_id in keys:
                raise DataError(
                    f"{context}: {key!r} and {keys[sample_id]!r} have the same id {sample_id!r} "
                    "(ids are file stems and must be unique); rename one of the images"
                )
            keys[sample_id] = key
            for name in names:
                if name not in vocabulary.class_names:
                    raise UnknownClassError(
                        f"{context}: image {sample_id!r} has unknown class {name!r}; valid names: "
                        f"{', '.join(vocabulary.class_names)}"
                    )
            if not names and not allow_empty:
                raise DataError(
                    f"{context}: image {sample_id!r} has no classes; give it at least one or set "
                    "allow_empty: true to keep background-only images"
                )
            self._paths[sample_id] = path
            self._labels[sample_id] = list(dict.fromkeys(names))
        ids = list(self._paths)
        if not ids:
            raise DataError(f"{context} lists no images")
        self.ids = check_files_exist(
            ids, [self._paths[i] for i in ids], "image file", skip_missing, context
        )
        self._masks_dir = None if masks_dir is None else _resolve(str(masks_dir), self.root)
        self._has_gt = False
        if self._masks_dir is not None:
            masks = [self._masks_dir / f"{i}.png" for i in self.ids]
            if not any(m.is_file() for m in masks):
                log.warning(
                    "%s: no mask in %s for any of its images; gt is None", context, self._masks_dir
                )
            else:
                self.ids = check_files_exist(self.ids, masks, "mask PNG", skip_missing, context)
                self._has_gt = True
        if not self.ids:
            raise DataError(f"{context}: no usable images left")

    def _locate(self, key: str) -> tuple[str, Path]:
        """(id, image path) of a labels-file key: a file name relative to root, or a bare id."""
        key_path = Path(key)
        context = f"labels file {self.labels_file}"
        if key_path.suffix.lower() in IMAGE_EXTENSIONS:
            return key_path.stem, inside_root(self.root, key_path, "image", context)
        inside_root(self.root, f"{key}.jpg", "image", context)
        found = [
            self.root / f"{key}{e}" for e in IMAGE_EXTENSIONS if (self.root / f"{key}{e}").is_file()
        ]
        if len(found) > 1:
            raise DataError(
                f"labels file {self.labels_file}: id {key!r} matches several images "
                f"({', '.join(p.name for p in found)}); use the file name as the key"
            )
        # Missing files are reported together (or skipped) by check_files_exist.
        return key_path.name, found[0] if found else self.root / f"{key}.jpg"

    def image_path(self, sample_id: str) -> Path:
        return self._paths[sample_id]

    def gt_path(self, sample_id: str) -> Path | None:
        if not self._has_gt or self._masks_dir is None:
            return None
        return self._masks_dir / f"{sample_id}.png"

    def load_gt(self, sample_id: str) -> torch.Tensor | None:
        if not self._has_gt or self._masks_dir is None:
            return None
        path = self._masks_dir / f"{sample_id}.png"
        gt = read_label(path)
        invalid = (gt >= self.vocabulary.num_classes) & (gt != IGNORE_INDEX)
        if bool(invalid.any()):
            raise CorruptFileError(
                f"mask {path} has value {int(gt[invalid].max())}; expected 0 (background), "
                f"1..{len(self.vocabulary.class_names)} (classes in the configured order) or 255"
            )
        return gt

    def image_labels(self, sample_id: str) -> list[str]:
        return self._labels[sample_id]


class ImageFolder(DatasetSource):
    """The user's own images and classes as a dataset source (LightningCLI config schema).

    Args:
        root: folder of the images.
        classes: foreground class names; class ``classes[i]`` has label id ``i + 1``.
        train_labels: labels file of the train split (relative to ``root`` or the cwd).
        val_labels: labels file of the val/test/predict splits; None: the train images.
        masks_dir: folder of ``<id>.png`` ground-truth masks (relative to ``root`` or the cwd);
            needed for mIoU. None: no ground truth.
        name: dataset name (pseudo-label cache folder, logs); default: the folder's name plus a
            hash of its absolute path, so two image folders never share cached labels.
        prompt_names: detector phrase per class, e.g. ``{"tvmonitor": "tv monitor"}``.
        assist_words: extra phrases per class whose detections count as that class.
        allow_empty: keep images whose label set is empty (background only).
        skip_missing: skip images or masks that are missing (counted, logged).
        skip_corrupt: skip images that cannot be decoded.
    """

    def __init__(
        self,
        root: str,
        classes: list[str],
        train_labels: str = "labels.json",
        val_labels: str | None = None,
        masks_dir: str | None = None,
        name: str | None = None,
        prompt_names: dict[str, str] | None = None,
        assist_words: dict[str, list[str]] | None = None,
        allow_empty: bool = False,
        skip_missing: bool = False,
        skip_corrupt: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        if name is None:
            digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:8]
            name = f"{self.root.resolve().name or 'images'}-{digest}"
        self.vocabulary = ClassVocabulary(
            name=name,
            class_names=tuple(classes),
            prompt_names=dict(prompt_names or {}),
            assist_words={k: tuple(v) for k, v in (assist_words or {}).items()},
        )
        self.train_labels = train_labels
        self.val_labels = val_labels
        self.masks_dir = masks_dir
        self.allow_empty = allow_empty
        self.skip_missing = skip_missing
        self.skip_corrupt = skip_corrupt

    def prepare_data(self, stages: Collection[Stage] | None = None) -> None:
        if not self.root.is_dir():
            raise DataError(
                f"image folder {self.root} does not exist; set root to your image folder"
            )
        # val_labels serves every stage but train (see ``dataset``)
        other = stages is None or any(stage != "train" for stage in stages)
        needed = (self.train_labels, self.val_labels if other else None)
        for labels in needed:
            if labels is not None and not _resolve(labels, self.root).is_file():
                raise DataError(
                    f"labels file {labels} not found in {self.root} or the working directory; "
                    "write JSON {file name: [class names]} or text lines '<file name> <class>,<class>'"
                )

    def dataset(self, stage: Stage) -> ImageFolderDataset:
        labels = (
            self.train_labels if stage == "train" or self.val_labels is None else self.val_labels
        )
        return ImageFolderDataset(
            self.root,
            labels,
            self.vocabulary,
            masks_dir=self.masks_dir,
            allow_empty=self.allow_empty,
            skip_missing=self.skip_missing,
            skip_corrupt=self.skip_corrupt,
        )
