"""PASCAL VOC 2012 (with the SBD "SegmentationClassAug" ground truth used by WSSS work).

Directory layout. ``root`` is the directory that contains ``VOC2012/`` (e.g. ``VOCdevkit``) or the
parent of ``VOCdevkit/VOC2012``; call the directory that contains ``VOC2012`` the *base*::

    <base>/VOC2012/JPEGImages/<id>.jpg
    <base>/VOC2012/SegmentationClass/<id>.png         VOC ground truth (train/val, 2,913 ids)
    <base>/VOC2012/Annotations/<id>.xml               object names -> image-level labels
    <base>/VOC2012/ImageSets/Segmentation/<split>.txt
    <base>/SegmentationClassAug/<id>.png              SBD-derived ground truth (12,031 ids)
    <base>/<split>.txt                                e.g. train_aug.txt (10,582 ids)

Split id list: a split ending in ``.txt`` is a file path (relative paths are tried against the
base, then ``root``, then the working directory). Otherwise the first existing of
``VOC2012/ImageSets/Segmentation/<split>.txt``, ``VOC2012/ImageSets/SegmentationAug/<split>.txt``,
``<base>/<split>.txt``, ``<root>/<split>.txt`` is used. A line may be an id or an image path
(``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``): its first token's stem is
the id.

Ground truth: for every id, the first of ``gt_dirs`` (relative to the base, then ``root``) that
holds ``<id>.png``. A split for which no directory holds any of its ids (the VOC test set) has
``gt = None``; a split where only some ids have ground truth is an error (or, with
``skip_missing``, those ids are skipped).

Image-level labels: ``labels_file`` (JSON ``{id: [VOC class names]}``) when given, else every
``<object><name>`` of ``VOC2012/Annotations/<id>.xml``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from xml.etree import ElementTree as ET

import torch

from wsss_pl.classes import VOC as VOC_VOCABULARY
from wsss_pl.classes import ClassVocabulary
from wsss_pl.data.base import (
    DatasetSource,
    SegmentationDataset,
    Stage,
    check_files_exist,
    configured_split,
    inside_root,
    wanted_splits,
)
from wsss_pl.errors import CorruptFileError, DataError, UnknownClassError
from wsss_pl.io import read_json, read_label

log = logging.getLogger(__name__)

DEFAULT_GT_DIRS: tuple[str, ...] = (
    "VOC2012/SegmentationClassAug",
    "SegmentationClassAug",
    "VOC2012/SegmentationClass",
)

_WHAT_TO_GET = (
    "Get PASCAL VOC 2012 trainval (VOCtrainval_11-May-2012.tar) and the SBD-derived "
    "SegmentationClassAug ground truth with its train_aug.txt list, and put them so that "
    "<root>/VOC2012/JPEGImages, <root>/SegmentationClassAug and <root>/train_aug.txt exist; "
    "or set download: true to fetch and build all of it."
)


def find_voc_base(root: Path) -> Path | None:
    """The directory holding ``VOC2012/JPEGImages``: ``root`` or ``root/VOCdevkit``; else None."""
    for base in (root, root / "VOCdevkit"):
        if (base / "VOC2012" / "JPEGImages").is_dir():
            return base
    return None


def _search_dirs(base: Path, root: Path) -> list[Path]:
    return [base] if base == root else [base, root]


def resolve_split(split: str, base: Path, root: Path) -> Path:
    """Path of the id list of ``split`` (see the module docstring for the search order)."""
    if split.endswith(".txt"):
        given = Path(split).expanduser()
        candidates = (
            [given]
            if given.is_absolute()
            else [d / given for d in _search_dirs(base, root)] + [Path.cwd() / given]
        )
    else:
        voc = base / "VOC2012" / "ImageSets"
        candidates = [
            voc / "Segmentation" / f"{split}.txt",
            voc / "SegmentationAug" / f"{split}.txt",
            *(d / f"{split}.txt" for d in _search_dirs(base, root)),
        ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(
        f"VOC split {split!r}: no id list found; looked for "
        + ", ".join(str(c) for c in candidates)
        + ". Check the split name, pass a path ending in .txt, or "
        + ("set download: true to build train_aug.txt." if split == "train_aug" else "fix root.")
    )


def read_id_list(path: Path) -> list[str]:
    """Ids of an id-list file: first token of each non-empty line, reduced to its file stem."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        token = line.split(maxsplit=1)[0] if line.strip() else ""
        if not token or token.startswith("#"):
            continue
        sample_id = Path(token).stem if ("/" in token or "." in token) else token
        if sample_id in seen:
            raise DataError(
                f"{path}: id {sample_id!r} is listed twice (lines {seen[sample_id]} and "
                f"{line_number}); remove the duplicate"
            )
        seen[sample_id] = line_number
        ids.append(sample_id)
    if not ids:
        raise DataError(f"id list {path} is empty; it should list one image id per line")
    return ids


def _xml_labels(path: Path, sample_id: str) -> list[str]:
    """Class names of all ``<object><name>`` of a VOC annotation XML, deduplicated, in order."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as error:
        raise CorruptFileError(
            f"annotation {path} of {sample_id} is not valid XML ({error}); replace it"
        ) from error
    names = [(obj.findtext("name") or "").strip() for obj in tree.getroot().iter("object")]
    return list(dict.fromkeys(n for n in names if n))


def _stems(directory: Path, suffix: str) -> set[str]:
    """Stems of the ``suffix`` files in ``directory`` (one listdir instead of a stat per id)."""
    if not directory.is_dir():
        return set()
    return {n[: -len(suffix)] for n in os.listdir(directory) if n.endswith(suffix)}


class VOCDataset(SegmentationDataset):
    """One split of a VOC-layout dataset (see the module docstring for layout and search order).

    Args:
        root: data root (contains ``VOC2012/`` or ``VOCdevkit/VOC2012/``).
        split: split name or id-list path (``.txt``).
        labels_file: JSON ``{id: [class names]}``; relative paths are tried against the base,
            ``root`` and the working directory. None: read ``VOC2012/Annotations/<id>.xml``.
        gt_dirs: ground-truth directories searched in order for ``<id>.png``.
        skip_missing: skip (and count) ids whose image, ground truth or labels are missing
            instead of raising.
        skip_corrupt: return None for a sample whose image cannot be decoded.
        vocabulary: class names (default: the 20 VOC classes).

    Samples: image uint8 [3, H, W], labels float32 [20], gt uint8 [H, W] or None.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        labels_file: str | Path | None = None,
        gt_dirs: Sequence[str] = DEFAULT_GT_DIRS,
        skip_missing: bool = False,
        skip_corrupt: bool = False,
        vocabulary: ClassVocabulary = VOC_VOCABULARY,
    ) -> None:
        self.root = Path(root).expanduser()
        base = find_voc_base(self.root)
        if base is None:
            raise DataError(
                f"VOC data root {self.root} has no VOC2012/JPEGImages (nor VOCdevkit/VOC2012/"
                f"JPEGImages). {_WHAT_TO_GET}"
            )
        self.base = base
        self.split = split
        self.vocabulary = vocabulary
        self.skip_corrupt = skip_corrupt
        self.image_dir = base / "VOC2012" / "JPEGImages"
        list_path = resolve_split(split, base, self.root)
        context = f"VOC split {split!r} ({list_path})"
        ids = read_id_list(list_path)
        for sample_id in ids:  # an id is a file stem: "../" would read outside the dataset
            inside_root(self.image_dir, f"{sample_id}.jpg", "id", context)
        ids = check_files_exist(
            ids, [self.image_path(i) for i in ids], "JPEG image", skip_missing, context
        )
        self._gt_paths = self._find_gt(ids, gt_dirs, skip_missing, context)
        if self._gt_paths is not None:
            ids = [i for i in ids if i in self._gt_paths]
        self._labels = self._read_labels(ids, labels_file, skip_missing, context)
        self.ids = [i for i in ids if i in self._labels]
        if not self.ids:
            raise DataError(f"{context}: no usable ids left; check the data root and the id list")
        empty = [i for i in self.ids if not self._labels[i]]
        if empty:
            log.warning(
                "%s: %d of %d ids have an empty image-level label set (background only), e.g. %s",
                context,
                len(empty),
                len(self.ids),
                ", ".join(empty[:3]),
            )
        self.num_empty_labels = len(empty)

    def _find_gt(
        self, ids: list[str], gt_dirs: Sequence[str], skip_missing: bool, context: str
    ) -> dict[str, Path] | None:
        """id -> first ground-truth PNG in ``gt_dirs``; None when the split has no ground truth."""
        dirs: list[Path] = []
        for gt_dir in gt_dirs:
            given = Path(gt_dir).expanduser()
            for d in (
                [given]
                if given.is_absolute()
                else (s / given for s in _search_dirs(self.base, self.root))
            ):
                if d not in dirs:
                    dirs.append(d)
        listed = [(d, _stems(d, ".png")) for d in dirs]
        found: dict[str, Path] = {}
        for sample_id in ids:
            for d, stems in listed:
                if sample_id in stems:
                    found[sample_id] = d / f"{sample_id}.png"
                    break
        if not found:
            log.warning(
                "%s: none of its ids has ground truth in %s; gt is None for this split "
                "(expected only for the VOC test set)",
                context,
                ", ".join(str(d) for d in dirs),
            )
            return None
        paths = [found.get(i, dirs[0] / f"{i}.png") for i in ids]
        kept = check_files_exist(
            ids, paths, "ground-truth PNG in any of gt_dirs", skip_missing, context
        )
        return {i: found[i] for i in kept}

    def _read_labels(
        self, ids: list[str], labels_file: str | Path | None, skip_missing: bool, context: str
    ) -> dict[str, list[str]]:
        """id -> image-level class names, checked against the vocabulary, for ``ids``."""
        labels: dict[str, list[str]] = {}
        missing: list[str] = []
        if labels_file is not None:
            source = self._resolve_labels_file(labels_file)
            table = read_json(source)
            if not isinstance(table, dict):
                raise DataError(
                    f"labels file {source} must be a JSON object {{id: [class names]}}, "
                    f"got {type(table).__name__}"
                )
            for sample_id in ids:
                if sample_id not in table:
                    missing.append(sample_id)
                    continue
                names = table[sample_id]
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise DataError(
                        f"labels file {source}: entry of {sample_id!r} must be a list of class "
                        f"names, got {names!r}"
                    )
                labels[sample_id] = self._checked(names, sample_id, source)
            what = f"entry in labels file {source}"
        else:
            annotations = self.base / "VOC2012" / "Annotations"
            if not annotations.is_dir():
                hint = next(
                    (
                        p
                        for p in (self.base / "image_labels.json", self.root / "image_labels.json")
                        if p.is_file()
                    ),
                    None,
                )
                raise DataError(
                    f"{context}: no image-level labels: labels_file is not set and {annotations} "
                    "does not exist. Set labels_file to a JSON file {id: [VOC class names]}"
                    + (f" (e.g. labels_file: {hint})" if hint else "")
                    + " or put the VOC2012 Annotations XML files in place."
                )
            for sample_id in ids:
                path = annotations / f"{sample_id}.xml"
                if not path.is_file():
                    missing.append(sample_id)
                    continue
                labels[sample_id] = self._checked(_xml_labels(path, sample_id), sample_id, path)
            what = f"annotation XML in {annotations}"
        if missing:
            examples = ", ".join(missing[:3])
            if not skip_missing:
                raise DataError(
                    f"{context}: {len(missing)} of {len(ids)} ids have no {what}, e.g. {examples}. "
                    "Add their labels, fix the id list, or set skip_missing: true to skip them."
                )
            log.warning(
                "%s: skipping %d ids without %s, e.g. %s", context, len(missing), what, examples
            )
        return labels

    def _checked(self, names: list[str], sample_id: str, source: Path) -> list[str]:
        for name in names:
            if name not in self.vocabulary.class_names:
                raise UnknownClassError(
                    f"{source}: image {sample_id!r} has unknown class {name!r}; valid names: "
                    f"{', '.join(self.vocabulary.class_names)}"
                )
        return list(dict.fromkeys(names))

    def _resolve_labels_file(self, labels_file: str | Path) -> Path:
        given = Path(labels_file).expanduser()
        candidates = (
            [given]
            if given.is_absolute()
            else [d / given for d in _search_dirs(self.base, self.root)] + [Path.cwd() / given]
        )
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise DataError(
            f"labels file {labels_file} not found (looked at "
            + ", ".join(str(c) for c in candidates)
            + "); it should be JSON {id: [VOC class names]}"
        )

    def image_path(self, sample_id: str) -> Path:
        return self.image_dir / f"{sample_id}.jpg"

    def gt_path(self, sample_id: str) -> Path | None:
        return None if self._gt_paths is None else self._gt_paths.get(sample_id)

    def load_gt(self, sample_id: str) -> torch.Tensor | None:
        if self._gt_paths is None:
            return None
        return read_label(self._gt_paths[sample_id])

    def image_labels(self, sample_id: str) -> list[str]:
        return self._labels[sample_id]


class VOC(DatasetSource):
    """PASCAL VOC 2012 as a dataset source (LightningCLI config schema: plain types only).

    Args:
        root: data root containing ``VOC2012/`` (or ``VOCdevkit/VOC2012/``).
        train_split: split used for training (WSSS standard: ``train_aug``, 10,582 ids).
        val_split: validation split.
        test_split: test split, or None for none.
        predict_split: predict split, or None for none.
        labels_file: JSON ``{id: [class names]}`` image-level labels; None reads the XML
            annotations.
        gt_dirs: ground-truth directories searched in order for each id's ``<id>.png``,
            relative to the directory that contains ``VOC2012`` (then to ``root``): the SBD
            ``SegmentationClassAug`` first, then the official ``SegmentationClass``.
        download: fetch VOC 2012 + SBD and build ``SegmentationClassAug`` in ``prepare_data``.
        skip_missing: skip ids whose image, ground truth or labels are missing (counted, logged).
        skip_corrupt: skip samples whose image cannot be decoded.
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train_aug",
        val_split: str = "val",
        test_split: str | None = "val",
        predict_split: str | None = "val",
        labels_file: str | None = None,
        gt_dirs: list[str] = [  # noqa: B006 - copied below; a literal shows in --print_config
            "VOC2012/SegmentationClassAug",
            "SegmentationClassAug",
            "VOC2012/SegmentationClass",
        ],
        download: bool = False,
        skip_missing: bool = False,
        skip_corrupt: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        self.splits: dict[Stage, str | None] = {
            "train": train_split,
            "val": val_split,
            "test": test_split,
            "predict": predict_split,
        }
        self.labels_file = labels_file
        self.gt_dirs = list(gt_dirs)
        self.download = download
        self.skip_missing = skip_missing
        self.skip_corrupt = skip_corrupt
        self.vocabulary = VOC_VOCABULARY

    def _problems(self, stages: Collection[Stage] | None = None) -> list[str]:
        """What is missing for the splits of ``stages`` (None: every configured split; empty
        when the data is in place)."""
        base = find_voc_base(self.root)
        if base is None:
            return [f"{self.root} has no VOC2012/JPEGImages (nor VOCdevkit/VOC2012/JPEGImages)"]
        problems = []
        for split in wanted_splits(self.splits, stages):
            try:
                resolve_split(split, base, self.root)
            except DataError as error:
                problems.append(str(error))
        return problems

    def prepare_data(self, stages: Collection[Stage] | None = None) -> None:
        problems = self._problems(stages)
        if problems and self.download:
            from wsss_pl.data.download import download_voc  # lazy: network code only when asked

            download_voc(self.root)
            problems = self._problems(stages)
        if problems:
            raise DataError(f"VOC data is not in place: {'; '.join(problems)}. {_WHAT_TO_GET}")

    def dataset(self, stage: Stage) -> VOCDataset:
        split = configured_split(self.splits, stage, "VOC")
        return VOCDataset(
            self.root,
            split,
            labels_file=self.labels_file,
            gt_dirs=self.gt_dirs,
            skip_missing=self.skip_missing,
            skip_corrupt=self.skip_corrupt,
        )
