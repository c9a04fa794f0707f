"""What the Lightning commands check and settle in the parsed config before anything is built:
the dataset first, a checkpoint's own net weights, versioned run and prediction
folders, the batch size given on the command line, and the saved run config
(``SaveRunConfig``). Used by ``wsss_pl.lightning_cli``."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import (
    SaveConfigCallback,
)
from lightning.pytorch.loggers import WandbLogger

from wsss_pl.callbacks import (
    PaletteWriter,
)
from wsss_pl.cli_errors import PROG
from wsss_pl.data.base import Stage, prepare_source
from wsss_pl.lightning_wandb import _is_rank_zero_process, _remove_empty_wandb_run
from wsss_pl.weights import load_training_checkpoint


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config (all defaults filled in) beside the run's logs, on rank 0.

    W&B: into the run's files (uploaded with it) and as the run's config; CSV / TensorBoard: the
    logger's versioned log_dir. So no run overwrites another run's config. A W&B run that fails
    before logging anything is removed again, so failed starts leave no empty run folders.
    """

    saved_path: Path | None = None

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        logger = trainer.logger
        name = self.config_filename
        writers = [c for c in trainer.callbacks if isinstance(c, PaletteWriter)]
        if logger is None and stage == "predict" and writers:  # beside the predictions
            directory = writers[0].output_dir
        elif logger is None:  # no logger: still keep the config, under the run's root directory
            directory = Path(trainer.default_root_dir)
            name = time.strftime(f"{Path(name).stem}-%Y%m%d-%H%M%S{Path(name).suffix}")
        elif isinstance(logger, WandbLogger):
            directory = Path(logger.experiment.dir)
            logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)
        else:
            directory = Path(logger.log_dir or logger.save_dir or ".")
        directory.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, directory / name, skip_none=False, overwrite=True)
        self.saved_path = directory / name

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and _remove_empty_wandb_run(logger) is not None:
                self.saved_path = None


def _check_data_first(config: Any, stages: tuple[Stage, ...] | None = None) -> None:
    """Check that the dataset is there before anything is built: the model's constructor loads
    (and may download) its pretrained weights, so without this a missing dataset is reported as
    missing ResNet weights. Builds the configured source alone and runs its ``prepare_data``
    check; ``download: true`` sources are fetched later by ``prepare_data`` as before. Only the
    launching process checks (DDP children start after it). ``stages``: only their splits are
    checked (``label``: the training split); None checks every configured split.
    """
    source_config = config.get("data.source")
    if not _is_rank_zero_process() or not isinstance(source_config, Namespace):
        return
    init_args = source_config.get("init_args") or Namespace()
    values = init_args.as_dict() if isinstance(init_args, Namespace) else dict(init_args)
    if values.get("download") or any(isinstance(v, dict) for v in values.values()):
        return  # downloads come later; nested objects are left to the full instantiation
    module, name = str(source_config.class_path).rsplit(".", 1)
    try:
        source = getattr(importlib.import_module(module), name)(**values)
    except (ImportError, AttributeError, TypeError, ValueError):
        return  # the full instantiation reports a bad source config as before
    prepare_source(source, stages)


def _net_weights_from_checkpoint(config: Any) -> None:
    """validate / test / predict with --ckpt_path: the checkpoint holds every weight of the net,
    so its init weights (``pretrained``) are never resolved or downloaded. A DeepLabV2 whose
    ``backbone_style`` is ``auto`` (decided by the init weights) takes the checkpoint's style."""
    init_args = config.get("model.net.init_args")
    if not isinstance(init_args, Namespace) or init_args.get("pretrained") is None:
        return
    init_args["pretrained"] = None
    if init_args.get("backbone_style") != "auto":
        return
    try:
        checkpoint = load_training_checkpoint(config["ckpt_path"])
    except Exception:  # noqa: BLE001 - _check_ckpt_path reports an unreadable checkpoint
        return
    state = checkpoint.get("state_dict") if checkpoint is not None else None
    flag = state.get("net.caffe_backbone") if isinstance(state, dict) else None
    if flag is not None:
        init_args["backbone_style"] = "caffe" if int(flag) else "torchvision"


def next_run_folder(base: Path, ckpt_path: str | None, pattern: str = "*.ckpt") -> Path:
    """Where a fit writes the checkpoints configured for ``base``, so that no run replaces an
    earlier run's: ``base`` while it holds no file matching ``pattern`` (``*.ckpt``), else the
    first ``base/version_N`` (N = 1, 2, ...) that holds none. A run resumed with ``ckpt_path`` from ``base`` or one of
    its version folders continues in that folder, and so does ``ckpt_path: last`` (Lightning
    looks for the last checkpoint in the configured folder)."""
    if ckpt_path in ("last", "best", "hpc", "registry"):
        return base
    if ckpt_path:
        parent = Path(ckpt_path).resolve().parent
        if parent == base.resolve() or (
            parent.parent == base.resolve() and parent.name.startswith("version_")
        ):
            return base if parent == base.resolve() else base / parent.name
    folder, number = base, 0
    while folder.is_dir() and any(folder.glob(pattern)):
        number += 1
        folder = base / f"version_{number}"
    return folder


def _version_checkpoint_folders(config: Any) -> None:
    """Point every configured ModelCheckpoint ``dirpath`` that holds an earlier run's checkpoints
    at a new ``version_N`` folder inside it (``next_run_folder``), saying so once per folder.
    ``overwrite_checkpoints: true`` keeps the configured folders. Every DDP process computes the
    same folder; Lightning broadcasts rank 0's ``dirpath`` anyway."""
    if config.get("overwrite_checkpoints"):
        return
    callbacks = config.get("trainer.callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    chosen: dict[str, Path] = {}
    for callback in callbacks:
        init_args = callback.get("init_args") if isinstance(callback, Namespace) else None
        if not isinstance(init_args, Namespace) or not init_args.get("dirpath"):
            continue
        if not str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
            continue
        base = str(init_args.dirpath)
        if base not in chosen:
            chosen[base] = next_run_folder(Path(base), config.get("ckpt_path"))
            if (
                chosen[base] != Path(base)
                and _is_rank_zero_process()
                and not (config.get("ckpt_path"))
            ):
                print(
                    f"{PROG} fit: {base} holds an earlier run's checkpoints, kept; this run "
                    f"writes to {chosen[base]} (continue the earlier run with --ckpt_path "
                    f"{Path(base) / 'last.ckpt'}; replace its checkpoints with "
                    "--overwrite_checkpoints true)",
                    file=sys.stderr,
                    flush=True,
                )
        init_args["dirpath"] = str(chosen[base])


def _given(argv: list[str], key: str) -> bool:
    """Whether ``--KEY`` is set on the command line (``--KEY VALUE`` or ``--KEY=VALUE``)."""
    return any(a == f"--{key}" or a.startswith(f"--{key}=") for a in argv)


def _command_line_batch_size_wins(config: Any, argv: list[str]) -> None:
    """``data.batch_size`` and ``data.global_batch_size`` are alternatives: the one given on the
    command line wins over the other one set in a config file (``label --config
    configs/voc.yaml --data.batch_size 4`` uses 4 per device). Both on the command line stay
    an error."""
    per_device, global_ = _given(argv, "data.batch_size"), _given(argv, "data.global_batch_size")
    if per_device and not global_ and config.get("data.global_batch_size") is not None:
        config["data.global_batch_size"] = None
    elif global_ and not per_device and config.get("data.batch_size") is not None:
        config["data.batch_size"] = None


def _version_prediction_folders(config: Any) -> None:
    """Point every configured PaletteWriter ``output_dir`` that holds an earlier run's PNGs at
    a new ``version_N`` folder inside it, saying so; ``--overwrite true`` writes into the
    configured folder (replacing PNGs of the same ids). The same rule as fit's checkpoints."""
    if config.get("overwrite"):
        return
    callbacks = config.get("trainer.callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    for callback in callbacks:
        init_args = callback.get("init_args") if isinstance(callback, Namespace) else None
        if not str(callback.get("class_path", "")).endswith("PaletteWriter"):
            continue
        if not isinstance(init_args, Namespace):
            continue
        base = Path(str(init_args.get("output_dir") or "predictions"))
        folder = next_run_folder(base, None, pattern="*.png")
        if folder != base and _is_rank_zero_process():
            print(
                f"{PROG} predict: {base} holds an earlier run's predictions, kept; this run "
                f"writes to {folder} (replace them with --overwrite true)",
                file=sys.stderr,
                flush=True,
            )
        init_args["output_dir"] = str(folder)
