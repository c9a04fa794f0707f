"""Command line: LightningCLI (fit/validate/test/predict) plus wsss_pl's own subcommands.

python -m wsss_pl fit --config configs/voc.yaml
python -m wsss_pl label --config configs/voc.yaml        # warm the pseudo-label cache
python -m wsss_pl evaluate-labels --pred DIR --gt DIR
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from lightning.pytorch.loggers import WandbLogger

from wsss_pl.cadence import ValidationCadence
from wsss_pl.data.datamodule import WSSSDataModule
from wsss_pl.errors import WsssError
from wsss_pl.module import SegmentationModule
from wsss_pl.weights import check_training_checkpoint, load_training_checkpoint

log = logging.getLogger(__name__)


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config (all defaults filled in) beside the run's logs, on rank 0.

    W&B: into the run's files (uploaded with it) and as the run's config; CSV / TensorBoard: the
    logger's versioned log_dir. So no run overwrites another run's config.
    """

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        logger = trainer.logger
        name = self.config_filename
        if logger is None:  # no logger: still keep the config, under the run's root directory
            directory = Path(trainer.default_root_dir)
            name = time.strftime(f"{Path(name).stem}-%Y%m%d-%H%M%S{Path(name).suffix}")
        elif isinstance(logger, WandbLogger):
            directory = Path(logger.experiment.dir)
            logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)
        else:
            directory = Path(logger.log_dir or logger.save_dir or ".")
        directory.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, directory / name, skip_none=False, overwrite=True)


class WsssCLI(LightningCLI):
    """LightningCLI with the class names linked from the data module into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data",
            "model.class_names",
            compute_fn=lambda data: data.class_names,
            apply_on="instantiate",
        )

    def before_instantiate_classes(self) -> None:
        # W&B is the default logger (offline with WANDB_MODE=offline); `--trainer.logger false`
        # turns logging off and a config may choose CSV or TensorBoard instead.
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "predict" and config.get("return_predictions") is None:
            # PaletteWriter writes each batch; keeping every map in RAM too (COCO val: ~12 GB)
            # is only wanted when asked for.
            config["return_predictions"] = False
        if config["trainer.logger"] is None:
            config["trainer.logger"] = Namespace(
                class_path="lightning.pytorch.loggers.WandbLogger",
                init_args=Namespace(project="wsss_pl"),
            )

    def _parse_ckpt_path(self) -> None:
        # Lightning unpickles --ckpt_path here: an unreadable file or one with code is one line.
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path"):
            load_training_checkpoint(self.config[subcommand]["ckpt_path"])
        super()._parse_ckpt_path()

    def _check_ckpt_path(self) -> None:
        # Before Lightning loads it: a wrong architecture or a pickle with code is one line.
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt_path:
            check_training_checkpoint(ckpt_path, self.model)

    before_fit = before_validate = before_test = before_predict = _check_ckpt_path


class LabelCLI(WsssCLI):
    """The ``label`` command's CLI: same config, but the segmentation net is never trained, so
    it is built without its pretrained checkpoint (no ResNet download for a labelling pass)."""

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        init_args = self.config.get("model.net.init_args")
        if init_args is not None and "pretrained" in init_args:
            init_args["pretrained"] = None


def build_cli(
    args: list[str] | None = None, run: bool = True, cli_class: type[WsssCLI] = WsssCLI
) -> WsssCLI:
    return cli_class(
        SegmentationModule,
        WSSSDataModule,
        save_config_callback=SaveRunConfig,
        trainer_defaults={"callbacks": [ValidationCadence()]},  # appended to any config's list
        save_config_kwargs={"save_to_log_dir": False, "config_filename": "run_config.yaml"},
        parser_kwargs={"parser_mode": "omegaconf+"},
        args=args,
        run=run,
    )


def _destroy_process_group() -> None:
    # Without this, gloo/NCCL DDP runs abort at interpreter exit in about half the runs.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    # Epoch metrics are torchmetrics objects already reduced across ranks when logged; Lightning's
    # advice to add sync_dist=True would only re-average identical values.
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.* when logging on epoch level")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    try:
        if command == "evaluate-labels":
            from wsss_pl.evaluation import main as evaluate_labels_main

            return evaluate_labels_main(argv[1:])
        if command == "export-model":  # beyond (issue 9): deployable ONNX / TorchScript
            from wsss_pl.export_model import main as export_model_main

            return export_model_main(argv[1:])
        if command == "export-labels":
            from wsss_pl.labeling.export import main as export_labels_main

            return export_labels_main(argv[1:])
        if command == "reproduce":
            from wsss_pl.reproduce import main as reproduce_main

            return reproduce_main(argv[1:])
        if command == "label":
            from wsss_pl.labeling.label_pass import run_label_pass

            cli = build_cli(argv[1:], run=False, cli_class=LabelCLI)
            return run_label_pass(cli.trainer, cli.datamodule)
        build_cli(None if argv == sys.argv[1:] else argv)
        return 0
    except WsssError as error:
        # Bad input: a clear message naming the file, id or key, without a traceback.
        print(f"wsss_pl: error: {error}", file=sys.stderr)
        return 2
    finally:
        _destroy_process_group()
