"""The label pass's data: ids grouped by detector input shape into whole batches, packed,
spread over the ranks, and served by ``LabelingData`` (a LightningDataModule over the training
split)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image

from wsss_pl.data.base import prepare_source
from wsss_pl.data.collate import collate_samples
from wsss_pl.data.datamodule import WSSSDataModule
from wsss_pl.data.label_sources import LabeledDataset
from wsss_pl.labeling.online import OnlinePseudoLabels

log = logging.getLogger(__name__)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image file's header, without decoding it; (0, 0) if unreadable
    (the sample then fails or is skipped where it is loaded, with the dataset's own error)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, SyntaxError):
        return 0, 0
    return height, width


class _ShapeBatches(torch.utils.data.Dataset):
    """Item k is the k-th shape-batch of ``dataset``: a list of samples of one detector input
    shape. A distributed sampler over these items hands whole batches to ranks, so the rank
    count never changes which images share a detector forward."""

    def __init__(self, dataset: LabeledDataset, batches: list[list[int]]) -> None:
        self.dataset = dataset
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[Any]:
        return [self.dataset[i] for i in self.batches[index]]


def _collate_shape_batch(items: list[list[Any]]) -> dict[str, Any]:
    return collate_samples(items[0])


def pack(batches: list[list[int]], limit: int) -> list[list[int]]:
    """Consecutive shape-batches joined into labelling calls of at most ``limit`` images (a
    batch larger than ``limit`` stays whole): the detector still runs each shape-batch at its
    fixed size, and the SAM encoder pads only the last of its fixed batches per call."""
    calls: list[list[int]] = []
    for batch in batches:
        if calls and len(calls[-1]) + len(batch) <= limit:
            calls[-1].extend(batch)
        else:
            calls.append(list(batch))
    return calls


def shape_batches(
    dataset: LabeledDataset, labels: OnlinePseudoLabels, batch_size: int
) -> list[list[int]]:
    """Indices of ``dataset`` sorted by detector input shape (then size and index), cut into
    batches of at most ``batch_size`` images of one shape: only each shape's last batch is short.
    Image sizes come from the file headers (no decoding); an unreadable file gets a batch of its
    own and fails where it is loaded, with the dataset's error."""
    base = dataset.dataset
    paths = [base.image_path(i) for i in base.ids]  # type: ignore[attr-defined]
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = list(pool.map(image_size, paths))
    keys = sorted(
        (labels.detector_input_size(h, w) if h and w else (1 << 30, index), h, w, index)
        for index, (h, w) in enumerate(sizes)
    )
    batches: list[list[int]] = []
    previous: tuple[int, int] | None = None
    for shape, _, _, index in keys:
        if shape != previous or len(batches[-1]) == batch_size:
            batches.append([])
        batches[-1].append(index)
        previous = shape
    return batches


def spread(calls: list[list[int]], ranks: int) -> list[list[int]]:
    """At least one call per rank where there are enough images (every rank must run the
    predict loop, whose epoch end gathers across ranks): the largest calls are halved."""
    calls = [list(c) for c in calls]
    while len(calls) < ranks and any(len(c) > 1 for c in calls):
        k = max(range(len(calls)), key=lambda j: len(calls[j]))
        call = calls.pop(k)
        calls[k:k] = [call[: len(call) // 2], call[len(call) // 2 :]]
    return calls


class LabelingData(pl.LightningDataModule):
    """The training split of a WSSSDataModule with raw uint8 images (no augmentation).

    When the labeller batches images (``batch_mode`` ``fixed`` or ``free``), the ids are sorted
    by detector input shape (image sizes from the file headers) and cut into whole shape-batches
    of ``detector_batch_size`` (``fixed``) or ``data.batch_size`` (``free``) images; ranks get
    whole batches, packed into calls of up to ``data.batch_size`` images. With ``fixed`` the
    labels are the same whatever the order, batch or rank.
    """

    def __init__(self, data: WSSSDataModule) -> None:
        super().__init__()
        self.data = data

    def prepare_data(self) -> None:
        prepare_source(self.data.source, ("train",))  # the val split need not be there
        self.data.bind_label_device(self.trainer)
        self.data.train_labels.prepare_data(self.data.source)

    def setup(self, stage: str) -> None:
        self.data.bind_label_device(self.trainer)
        self.data.setup("label")

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        labels = self.data.train_labels
        train = self.data.datasets["train"]
        if (
            not isinstance(labels, OnlinePseudoLabels)
            or labels.batch_mode == "per_image"
            or not hasattr(train.dataset, "image_path")
        ):
            return self.data._loader("train", self.data.batch_size, shuffle=False)
        size = labels.detector_batch_size if labels.batch_mode == "fixed" else self.data.batch_size
        start = time.perf_counter()
        world = self.trainer.world_size if self.trainer is not None else 1
        batches = spread(
            pack(shape_batches(train, labels, size), max(size, self.data.batch_size)), world
        )
        log.info(
            "sorted %d ids into %d shape-batches in %.1f s",
            len(train), len(batches), time.perf_counter() - start,
        )  # fmt: skip
        dataset = _ShapeBatches(train, batches)
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)  # whole batches
        workers = self.data.num_workers
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=1,
            sampler=sampler,
            num_workers=workers,
            collate_fn=_collate_shape_batch,
            pin_memory=self.data.pin_memory,
            persistent_workers=workers > 0,
        )
