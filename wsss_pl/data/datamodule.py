"""The LightningDataModule: datasets per stage, padded batches, labelling and augmentation on device."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from wsss_pl.classes import ClassVocabulary
from wsss_pl.data.augment import CAFFE_MEAN_RGB, IMAGENET_MEAN, IMAGENET_STD, BatchAugment
from wsss_pl.data.base import DatasetSource, Stage
from wsss_pl.data.collate import collate_samples
from wsss_pl.data.label_sources import GroundTruthLabels, LabeledDataset, LabelSource
from wsss_pl.data.samplers import GlobalBatchSampler, PaddedEvalSampler, split_global_batch
from wsss_pl.errors import ConfigError

log = logging.getLogger(__name__)


class WSSSDataModule(pl.LightningDataModule):
    """Serves a dataset source's splits; the training targets come from ``train_labels``.

    Data flow of a training batch: workers decode images, ground truth and cached targets (CPU);
    ``collate_samples`` pads them; after the transfer to the rank's device,
    ``on_after_batch_transfer`` asks ``train_labels`` for the targets still missing (one batched
    call) and then augments the whole batch on the device.

    Args:
        source: the dataset (VOC, COCO, ImageFolder, SyntheticVOC), injected by class_path.
        train_labels: where training targets come from (default: ground truth).
        batch_size: training images per device per step (and the most images per call of the
            ``label`` pass). Set it or ``global_batch_size``, not both.
        global_batch_size: training images per optimiser step summed over all ranks, whatever
            the GPU count (the paper's configs: 10). Split unevenly over the ranks (10 on 3:
            [4, 3, 3]; see ``wsss_pl.data.samplers.GlobalBatchSampler``); the module weights
            each rank's loss by its share, so every image weighs the same. The resolved
            per-rank batches are printed at fit start and logged as hyperparameters.
        val_batch_size: batch size of validation, test and predict (images are padded).
        num_workers: DataLoader worker processes per device.
        crop_size, scale_range, flip, mean, std, scales: the training augmentation
            (``BatchAugment``): ``scales`` is a discrete set of rescale factors (the paper's
            [0.5, 0.75, 1.0, 1.25, 1.5]); null draws uniformly from ``scale_range``.
        pad_rgb: crop padding colour (RGB 0..255). ``auto``: the mean pixel of the model's
            input convention, which is 0 at the network's input (Caffe-input DeepLab-v2:
            DeepLab's mean 122.675, 116.669, 104.008; otherwise ``mean`` x 255).
    """

    def __init__(
        self,
        source: DatasetSource,
        train_labels: LabelSource | None = None,
        batch_size: int | None = 10,
        val_batch_size: int = 1,
        num_workers: int = 4,
        crop_size: int = 321,
        scale_range: tuple[float, float] = (0.5, 1.5),
        flip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pin_memory: bool = True,
        global_batch_size: int | None = None,
        scales: list[float] | None = None,
        pad_rgb: Literal["auto"] | list[float] = "auto",
    ) -> None:
        super().__init__()
        if (batch_size is None) == (global_batch_size is None):
            raise ConfigError(
                f"data.batch_size is {batch_size!r} and data.global_batch_size is "
                f"{global_batch_size!r}: set exactly one (per device, or per optimiser step "
                "over all devices), e.g. --data.global_batch_size null --data.batch_size 4"
            )
        for key, value, least in (
            ("batch_size", batch_size if batch_size is not None else 1, 1),
            ("global_batch_size", global_batch_size if global_batch_size is not None else 1, 1),
            ("val_batch_size", val_batch_size, 1),
            ("num_workers", num_workers, 0),
            ("crop_size", crop_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(
                    f"data.{key} is {value!r}; it must be an integer >= {least}"
                    + {
                        "batch_size": " (images per device per step)",
                        "global_batch_size": " (images per optimiser step over all devices)",
                    }.get(key, "")
                )
        self.source = source
        self.train_labels = train_labels if train_labels is not None else GroundTruthLabels()
        self.global_batch_size = global_batch_size
        # Per device; with a global batch, the label pass packs calls of up to that many images.
        self.batch_size: int = batch_size if batch_size is not None else int(global_batch_size)  # type: ignore[arg-type]
        self.pad_rgb = pad_rgb
        self.batch_plan: dict[str, Any] | None = None
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        try:
            self.augment = BatchAugment(
                crop_size, scale_range, flip, mean, std, scales=scales,
                pad_rgb=None if pad_rgb == "auto" else pad_rgb,
            )  # fmt: skip
        except ValueError as error:
            raise ConfigError(f"data: {error}") from None
        self.datasets: dict[Stage, Dataset] = {}

    @property
    def vocabulary(self) -> ClassVocabulary:
        return self.source.vocabulary

    @property
    def class_names(self) -> list[str]:
        return list(self.vocabulary.class_names)

    @property
    def num_classes(self) -> int:
        """Label ids including background."""
        return self.vocabulary.num_classes

    def prepare_data(self) -> None:
        self.source.prepare_data()
        # Only training needs its labels: validate/test/predict never touch the labeler's weights.
        trainer = self.trainer
        if trainer is None or trainer.state.fn == TrainerFn.FITTING:
            self.bind_label_device()
            self.train_labels.prepare_data(self.source)

    def setup(self, stage: str) -> None:
        wanted: dict[str, tuple[Stage, ...]] = {
            "fit": ("train", "val"),
            "label": ("train",),  # the label pass: the training split and its labels only
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
        }
        if stage in ("fit", "label"):
            self.bind_label_device()
            self.train_labels.setup(self.source)
            # Reproducible with seed_everything, and different on every rank.
            rank = self.trainer.global_rank if self.trainer is not None else 0
            self.augment.seed((torch.initial_seed() + 1_000_003 * rank) % 2**63)
            self._resolve_pad_colour()
            self._resolve_batch_plan()
        for split in wanted[stage]:
            if split not in self.datasets:
                dataset = self.source.dataset(split)
                loader = self.train_labels.loader() if split == "train" else None
                self.datasets[split] = LabeledDataset(dataset, loader)
                log.info("%s split: %d images", split, len(dataset))

    def bind_label_device(self, trainer: pl.Trainer | None = None) -> None:
        """Tell the training-label source which device will label (part of its fingerprint)."""
        trainer = trainer or self.trainer
        if trainer is not None:
            self.train_labels.bind_device(trainer.strategy.root_device)

    def _resolve_pad_colour(self) -> None:
        """``pad_rgb: auto``: the mean pixel of the model's input convention (0 at its input)."""
        if self.pad_rgb != "auto" or self.trainer is None:
            return
        net = getattr(self.trainer.lightning_module, "net", None)
        if getattr(net, "input_convention", None) == "caffe_bgr":
            self.augment.set_pad_rgb(CAFFE_MEAN_RGB)
        else:
            self.augment.set_pad_rgb([255.0 * float(m) for m in self.augment.mean.flatten()])

    def _resolve_batch_plan(self) -> None:
        """Per-rank batches of ``global_batch_size``; printed by rank 0 and logged as hparams."""
        if self.global_batch_size is None:
            self.batch_plan = None
            return
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        try:
            sizes = split_global_batch(self.global_batch_size, world)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        seed = torch.initial_seed() % 2**31
        if trainer is not None and world > 1:  # one shuffled stream for all ranks
            seed = int(trainer.strategy.broadcast(seed, src=0))
        self.batch_plan = {
            "global_batch_size": self.global_batch_size,
            "world_size": world,
            "per_rank_batch_sizes": sizes,
            "rank": rank,
            "offset": sum(sizes[:rank]),
            "seed": seed,
        }
        if trainer is not None and trainer.is_global_zero:
            print(
                f"[wsss_pl] global batch {self.global_batch_size} images per optimiser step on "
                f"{world} rank(s): per-rank batches {sizes}",
                flush=True,
            )
            for logger in trainer.loggers:
                logger.log_hyperparams(
                    {"data/global_batch_size": self.global_batch_size,
                     "data/per_rank_batch_sizes": sizes, "data/world_size": world}
                )  # fmt: skip

    def _global_batch_loader(self) -> DataLoader:
        plan = self.batch_plan
        assert plan is not None
        sampler = GlobalBatchSampler(
            self.datasets["train"],
            plan["global_batch_size"],
            num_replicas=plan["world_size"],
            rank=plan["rank"],
            seed=plan["seed"],
        )
        return DataLoader(
            self.datasets["train"],
            batch_size=sampler.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _loader(self, split: Stage, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        sampler = None
        if not shuffle and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Evaluation: equal shards with flagged padding, so ranks stay in step and every
            # image counts once in the confusion matrix summed across ranks. Prediction: plain
            # disjoint shards (no collectives run, and no image is written twice).
            sampler = (
                UnrepeatedDistributedSampler(dataset, shuffle=False)
                if split == "predict"
                else PaddedEvalSampler(dataset)
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            # No drop_last: every training id is seen (and labelled) in the first epoch; with
            # frozen BN a short last batch is harmless.
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self.global_batch_size is not None:
            if self.batch_plan is None:
                self._resolve_batch_plan()
            return self._global_batch_loader()
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.val_batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is not None and trainer.training:
            if bool(batch["needs_label"].any()):
                self.train_labels.label_batch(batch)
            return self.augment.train_batch(batch)
        return self.augment.eval_batch(batch)
