"""Where the training targets come from: ground truth, a folder of pseudo-labels, or online.

A label source has two halves. ``loader()`` returns a small picklable callable that runs in the
DataLoader workers (CPU only) and gives a sample's target, or None when the target must still be
made. ``label_batch`` runs on the rank's device in ``on_after_batch_transfer`` and fills the
targets the loader could not (the online Grounding DINO + SAM labeler does this).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from wsss_pl.classes import IGNORE_INDEX
from wsss_pl.data.base import DatasetSource, Sample
from wsss_pl.errors import DataError
from wsss_pl.io import read_label

log = logging.getLogger(__name__)

TargetLoader = Callable[[Sample], "torch.Tensor | None"]


class LabelSource(ABC):
    """Base class of the training-label sources (``data.train_labels`` in the config)."""

    def prepare_data(self, source: DatasetSource) -> None:  # noqa: B027 - optional hook
        """Rank-0 preparation (e.g. create a cache directory)."""

    def setup(self, source: DatasetSource) -> None:  # noqa: B027 - optional hook
        """Per-rank setup once the dataset source is known."""

    def bind_device(self, device: torch.device) -> None:  # noqa: B027 - optional hook
        """The device that will make labels (a source that makes them fingerprints it); called
        before ``prepare_data`` / ``setup``."""

    @abstractmethod
    def loader(self) -> TargetLoader:
        """A picklable callable: sample -> uint8 [H, W] target or None (label on the device)."""

    def label_batch(self, batch: dict[str, Any]) -> None:
        """Fill ``batch["target"]`` where ``batch["needs_label"]``, on the batch's device."""
        missing = [
            i for i, flag in zip(batch["id"], batch["needs_label"].tolist(), strict=True) if flag
        ]
        raise DataError(
            f"{type(self).__name__} has no training label for ids {missing[:5]}; "
            "use a label source that can make them (e.g. wsss_pl.labeling.online.OnlinePseudoLabels)"
        )


class _GroundTruthTarget:
    def __call__(self, sample: Sample) -> torch.Tensor:
        if sample["gt"] is None:
            raise DataError(
                f"{sample['id']}: train_labels is GroundTruthLabels but this split has no ground "
                "truth; use wsss_pl.data.label_sources.PseudoLabelDir or "
                "wsss_pl.labeling.online.OnlinePseudoLabels as data.train_labels"
            )
        return sample["gt"]


class GroundTruthLabels(LabelSource):
    """Train on the real masks: the fully supervised row of the paper's table."""

    def loader(self) -> TargetLoader:
        return _GroundTruthTarget()


class _DirectoryTarget:
    def __init__(self, root: Path, missing: str) -> None:
        self.root = root
        self.missing = missing

    def __call__(self, sample: Sample) -> torch.Tensor:
        path = self.root / f"{sample['id']}.png"
        height, width = sample["image"].shape[1:]
        if not path.is_file():
            if self.missing == "error":
                raise DataError(
                    f"pseudo-label {path} for id {sample['id']} does not exist; make it, remove the "
                    "id from the split, or set train_labels.init_args.missing: ignore"
                )
            log.warning("no pseudo-label for %s: trained as all-ignore", sample["id"])
            return torch.full((height, width), IGNORE_INDEX, dtype=torch.uint8)
        label = read_label(path)
        if label.shape != (height, width):
            raise DataError(
                f"pseudo-label {path} is {tuple(label.shape)} but image {sample['id']} is "
                f"{(height, width)}; the label was made for another image size"
            )
        return label


class PseudoLabelDir(LabelSource):
    """Pseudo-label PNGs made by another tool: ``<root>/<id>.png``, pixel values = class ids.

    Args:
        root: directory of label PNGs named by image id.
        missing: ``error`` stops at an id without a label; ``ignore`` trains it as all-255.
    """

    def __init__(self, root: str, missing: Literal["error", "ignore"] = "error") -> None:
        self.root = Path(root)
        self.missing = missing

    def prepare_data(self, source: DatasetSource) -> None:
        if not self.root.is_dir():
            raise DataError(
                f"pseudo-label directory {self.root} does not exist (data.train_labels.init_args.root)"
            )

    def loader(self) -> TargetLoader:
        return _DirectoryTarget(self.root, self.missing)


class LabeledDataset(torch.utils.data.Dataset):
    """A split's dataset with each sample's ``target`` filled in by a label-source loader."""

    def __init__(self, dataset: torch.utils.data.Dataset, loader: TargetLoader | None) -> None:
        self.dataset = dataset
        self.load_target = loader

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(
        self, index: int | tuple[int, bool] | tuple[int, bool, int, int]
    ) -> Sample | None:
        # PaddedEvalSampler yields (index, is_padding); padding repeats are not to be counted.
        # GlobalBatchSampler adds (augmentation seed, position in the global batch).
        extra: tuple[int, ...] = ()
        if isinstance(index, tuple):
            index, padding, *extra = index  # type: ignore[assignment]
        else:
            padding = False
        sample = self.dataset[index]
        if sample is not None:
            if self.load_target is not None:
                sample["target"] = self.load_target(sample)
            if padding:
                sample["padding"] = True  # type: ignore[typeddict-unknown-key]
            if extra:
                sample["aug_seed"], sample["batch_position"] = extra  # type: ignore[typeddict-unknown-key]
        return sample
