"""ValidationCadence: step-based validation that works whatever the dataset size."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from wsss_pl.cadence import ValidationCadence


class _ValidationSteps(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


def _fit(tmp_path: Path, cadence: bool, **trainer_kwargs: object) -> tuple[list[int], Path]:
    # BoringModel: 64 training batches per epoch.
    seen = _ValidationSteps()
    last = ModelCheckpoint(dirpath=tmp_path, filename="last", enable_version_counter=False)
    callbacks: list[Callback] = [seen, last] + ([ValidationCadence()] if cadence else [])
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        callbacks=callbacks,
        **trainer_kwargs,
    )
    trainer.fit(BoringModel())
    return seen.steps, tmp_path / "last.ckpt"


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def test_interval_longer_than_an_epoch_is_rejected_by_lightning_alone(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="val_check_interval"):
        _fit(tmp_path, cadence=False, max_steps=150, val_check_interval=100)


def test_interval_longer_than_an_epoch_counts_global_steps(tmp_path: Path) -> None:
    steps, last = _fit(tmp_path, cadence=True, max_steps=150, val_check_interval=100)
    assert steps == [100, 150]  # 150 is the forced final validation
    assert _checkpoint_step(last) == 150


def test_interval_longer_than_the_run_validates_at_the_end(tmp_path: Path) -> None:
    steps, last = _fit(
        tmp_path, cadence=True, max_steps=30, max_epochs=-1, val_check_interval=2000,
        check_val_every_n_epoch=None,
    )  # fmt: skip
    assert steps == [30]
    assert _checkpoint_step(last) == 30


def test_without_cadence_the_last_steps_are_never_validated(tmp_path: Path) -> None:
    steps, last = _fit(
        tmp_path, cadence=False, max_steps=25, max_epochs=-1, val_check_interval=10,
        check_val_every_n_epoch=None,
    )  # fmt: skip
    assert steps == [10, 20]


def test_last_steps_after_the_final_multiple_are_validated(tmp_path: Path) -> None:
    steps, last = _fit(
        tmp_path, cadence=True, max_steps=25, max_epochs=-1, val_check_interval=10,
        check_val_every_n_epoch=None,
    )  # fmt: skip
    assert steps == [10, 20, 25]
    assert _checkpoint_step(last) == 25


def test_epoch_based_run_validates_after_its_last_batch(tmp_path: Path) -> None:
    steps, last = _fit(tmp_path, cadence=True, max_epochs=2, val_check_interval=50)
    assert steps[-1] == 128 and 50 in steps and 100 in steps
    assert _checkpoint_step(last) == 128


def test_multiple_of_the_interval_validates_once(tmp_path: Path) -> None:
    steps, _ = _fit(
        tmp_path, cadence=True, max_steps=20, max_epochs=-1, val_check_interval=10,
        check_val_every_n_epoch=None,
    )  # fmt: skip
    assert steps == [10, 20]
