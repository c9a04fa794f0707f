"""The contract every dataset follows: one sample is a dict, one dataset source builds splits.

Sample (``SegmentationDataset.__getitem__``, CPU, in a DataLoader worker; never CUDA):
    id:      str, the image id (file stem)
    image:   uint8 [3, H, W] RGB
    labels:  float32 [C] multi-hot image-level labels (C foreground classes, no background)
    gt:      uint8 [H, W] ground truth (0 bg, 1..C, 255 ignore) or None when the split has none
    target:  uint8 [H, W] training label from the label source, or None when it must still be
             made on the device (online labelling); filled by ``LabeledDataset``
"""

from __future__ import annotations

import inspect
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Collection
from pathlib import Path
from typing import Literal, TypedDict

import torch
from torch.utils.data import Dataset

from wsss_pl.classes import ClassVocabulary
from wsss_pl.errors import CorruptFileError, DataError
from wsss_pl.io import read_image

log = logging.getLogger(__name__)

Stage = Literal["train", "val", "test", "predict"]


class Sample(TypedDict):
    id: str
    image: torch.Tensor
    labels: torch.Tensor
    gt: torch.Tensor | None
    target: torch.Tensor | None


class SegmentationDataset(Dataset, ABC):
    """Ids of one split plus how to load each id's image, ground truth and image-level labels.

    Subclasses set ``self.ids`` and ``self.vocabulary`` and implement ``image_path``, ``load_gt``
    and ``image_labels``. With ``skip_corrupt`` a sample whose image cannot be decoded becomes
    ``None`` (the collate function drops and counts it) instead of stopping the run.
    """

    ids: list[str]
    vocabulary: ClassVocabulary
    skip_corrupt: bool = False

    @abstractmethod
    def image_path(self, sample_id: str) -> Path:
        """Path of the image file of ``sample_id``."""

    @abstractmethod
    def load_gt(self, sample_id: str) -> torch.Tensor | None:
        """uint8 [H, W] ground truth of ``sample_id``, or None if this split has none."""

    @abstractmethod
    def image_labels(self, sample_id: str) -> list[str]:
        """Names of the classes present in ``sample_id`` (may be empty: background only)."""

    def gt_path(self, sample_id: str) -> Path | None:
        """The file the ground truth of ``sample_id`` comes from (for messages), if known."""
        return None

    def load_image(self, sample_id: str) -> torch.Tensor:
        return read_image(self.image_path(sample_id))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample | None:
        sample_id = self.ids[index]
        try:
            image = self.load_image(sample_id)
            gt = self.load_gt(sample_id)
        except CorruptFileError as error:
            if not self.skip_corrupt:
                raise CorruptFileError(
                    f"{error} (or set data.source.init_args.skip_corrupt: true to skip "
                    "unreadable files)"
                ) from error
            log.warning("skipping %s: corrupt file (skip_corrupt is set): %s", sample_id, error)
            return None
        if gt is not None and gt.shape != image.shape[1:]:
            gt_file = self.gt_path(sample_id)
            raise DataError(
                f"ground truth {gt_file or 'of ' + sample_id} is {tuple(gt.shape)} (H, W) but "
                f"image {self.image_path(sample_id)} is {tuple(image.shape[1:])}; the mask does not "
                f"belong to this image: replace it or remove id {sample_id!r} from the split"
            )
        labels = self.vocabulary.multi_hot(self.image_labels(sample_id))
        return Sample(id=sample_id, image=image, labels=labels, gt=gt, target=None)


class DatasetSource(ABC):
    """Where a dataset lives and how its splits are built; injected into the DataModule.

    ``prepare_data`` runs once per node (rank 0): it downloads when asked to, otherwise it checks
    that the data is there and raises a DataError saying what to get and where to put it.
    """

    vocabulary: ClassVocabulary

    @property
    def name(self) -> str:
        return self.vocabulary.name

    def prepare_data(self, stages: Collection[Stage] | None = None) -> None:  # noqa: B027
        """Download or check the data (rank 0 only; an optional hook).

        Args:
            stages: the stages about to run (``label`` passes ``("train",)``): only their
                splits need to be in place; None checks every configured split.
        """

    @abstractmethod
    def dataset(self, stage: Stage) -> SegmentationDataset:
        """The dataset of a stage; raises DataError if that stage has no split configured."""


def prepare_source(source: DatasetSource, stages: Collection[Stage] | None = None) -> None:
    """``source.prepare_data`` for ``stages``; a source whose ``prepare_data`` takes no
    ``stages`` (a user's own, written before it existed) checks everything as it always did."""
    if stages is not None and "stages" in inspect.signature(source.prepare_data).parameters:
        source.prepare_data(stages=stages)
    else:
        source.prepare_data()


def wanted_splits(
    splits: dict[Stage, str | None], stages: Collection[Stage] | None = None
) -> list[str]:
    """The distinct configured split names of ``stages`` (None: of every stage), in order."""
    chosen = splits if stages is None else {s: splits.get(s) for s in stages}
    return list(dict.fromkeys(s for s in chosen.values() if s is not None))


def configured_split(splits: dict[Stage, str | None], stage: Stage, source: str) -> str:
    """The split name configured for ``stage``, or a DataError naming the setting to fill in."""
    split = splits[stage]
    if split is None:
        raise DataError(
            f"{source} has no {stage} split configured; set {stage}_split (e.g. 'val') in the "
            "data source config"
        )
    return split


def inside_root(root: Path, relative: str | Path, what: str, context: str) -> Path:
    """``root / relative``, refusing a path that leaves ``root`` (``..``, absolute paths).

    Checked on the normalised path, without following symlinks: a dataset folder may link to
    images stored elsewhere, but a labels file or id list cannot point outside its root.
    """
    candidate = Path(relative)
    joined = Path(os.path.normpath(root / candidate))
    base = Path(os.path.normpath(root))
    if candidate.is_absolute() or (joined != base and base not in joined.parents):
        raise DataError(
            f"{context}: {what} {str(relative)!r} points outside {root}; every image and mask "
            "must be inside its data root: give paths relative to it, without '..'"
        )
    return joined


def check_files_exist(
    ids: list[str], paths: list[Path], what: str, skip_missing: bool, context: str
) -> list[str]:
    """Return ``ids`` whose path exists; raise (or, with ``skip_missing``, log and count) the rest."""
    missing = [(i, p) for i, p in zip(ids, paths, strict=True) if not p.is_file()]
    if not missing:
        return ids
    examples = ", ".join(f"{i} ({p})" for i, p in missing[:3])
    if not skip_missing:
        raise DataError(
            f"{context}: {len(missing)} of {len(ids)} ids have no {what}, e.g. {examples}. "
            "Put the files in place, fix the id list, or set skip_missing: true to skip them."
        )
    log.warning(
        "%s: skipping %d of %d ids without %s, e.g. %s",
        context,
        len(missing),
        len(ids),
        what,
        examples,
    )
    missing_ids = {i for i, _ in missing}
    return [i for i in ids if i not in missing_ids]
