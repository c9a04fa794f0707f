"""The Lightning side of the command line: LightningCLI with wsss_pl's argument errors, W&B
fallback, run folders and closing summaries. ``wsss_pl.cli`` (light) imports it only when a
Lightning command runs."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
)
from lightning.pytorch.loggers import WandbLogger

from wsss_pl.cadence import ValidationCadence
from wsss_pl.callbacks import (
    LineProgressBar,
    PlainModelSummary,
    RunSummary,
)
from wsss_pl.cli_errors import PROG, _config_paths, explain_argument_error
from wsss_pl.data.base import Stage
from wsss_pl.data.datamodule import WSSSDataModule

# Parts of the Lightning commands with their own module; their names stay importable here.
from wsss_pl.lightning_setup import (  # noqa: F401
    SaveRunConfig,
    _check_data_first,
    _command_line_batch_size_wins,
    _given,
    _net_weights_from_checkpoint,
    _version_checkpoint_folders,
    _version_prediction_folders,
    next_run_folder,
)
from wsss_pl.lightning_summary import _iou_table, summary_lines  # noqa: F401
from wsss_pl.lightning_wandb import (  # noqa: F401
    _all_wandb_offline,
    _evaluation_loggers,
    _is_rank_zero_process,
    _is_wandb,
    _netrc_has_key,
    _reachable,
    _remove_empty_wandb_run,
    _wandb_offline_fallback,
    wandb_unavailable,
)
from wsss_pl.module import SegmentationModule
from wsss_pl.progress import is_terminal
from wsss_pl.weights import check_training_checkpoint, load_training_checkpoint

log = logging.getLogger(__name__)


class WsssArgumentParser(LightningArgumentParser):
    """Bad arguments: the message naming the key or file comes first, as one line with a "did
    you mean", then where to find the options; no 65-line usage before it. Exit code 2."""

    argv: list[str] = []  # the command line, to say which config file holds a bad key
    default_prog = PROG  # "wsss_pl fit": for parsers made on the fly (--data.source.help X)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No prefix matching: --trainer.max_epoch must be an error, not max_epochs.
        kwargs["allow_abbrev"] = False
        kwargs.setdefault("prog", self.default_prog)  # not "__main__.py"
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        required = re.match(r"the following arguments are required: (\w+)\.", message)
        if required and prog == PROG:  # the root parser names the command's missing keys
            prog = f"{PROG} {required.group(1)}"
        try:
            explained = explain_argument_error(message, parser, self.argv)
        except Exception:  # noqa: BLE001 - a hint must never hide the message itself
            explained = " ".join(message.split())
        sys.stderr.write(f"{prog}: error: {explained}\n")
        sys.stderr.write(f"`{prog} --help` lists every option\n")
        self.exit(2)


# --------------------------------------------------------------------------- the Lightning CLI


def _check_weights_first(config: Any, command: str) -> None:
    """Every weight the run will load, checked (and downloaded unless offline) before anything
    is built, so that all missing ones are named at once, each with its config key; see
    ``wsss_pl.fetching.ensure_weights``. ``fit`` loads the net's init weights and the
    labeller's; ``label`` only the labeller's; validate / test / predict only the net's."""
    from wsss_pl.fetching import ensure_weights
    from wsss_pl.requirements import config_needs

    labels = command in ("fit", "label")
    plain = config.as_dict() if isinstance(config, Namespace) else dict(config)
    configs = " ".join(f"--config {path}" for path in _config_paths(WsssArgumentParser.argv))
    ensure_weights(config_needs(plain, labels=labels, data=False), command, configs)


class WsssCLI(LightningCLI):
    """LightningCLI with the class names linked from the data module into the model, W&B that
    falls back to offline, plain progress lines off a terminal and a closing summary."""

    # The stages whose splits must be in place before anything is built (None: every split).
    data_stages: tuple[Stage, ...] | None = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data",
            "model.class_names",
            compute_fn=lambda data: data.class_names,
            apply_on="instantiate",
        )

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        for name, subcommand_parser in self._subcommand_parsers.items():
            # "usage: wsss_pl fit ...", as every other command's, not "wsss_pl [options] fit"
            subcommand_parser.prog = f"{PROG} {name}"

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            # The closing summary prints the per-class table; Lightning's would repeat it.
            parser.set_defaults(verbose=False)
        if subcommand == "predict":
            parser.add_argument(
                "--overwrite",
                type=bool,
                default=False,
                help="Write predictions into the configured PaletteWriter output_dir even when "
                "it holds an earlier run's PNGs (same ids are replaced). Default: such a run "
                "writes to a new OUTPUT_DIR/version_N folder and the earlier PNGs stay.",
            )
        if subcommand == "fit":
            parser.add_argument(
                "--overwrite_checkpoints",
                type=bool,
                default=False,
                help="Write checkpoints into the configured ModelCheckpoint dirpath even when it "
                "holds an earlier run's (which they may replace). Default: such a run writes to "
                "a new DIRPATH/version_N folder and the earlier run's checkpoints stay.",
            )
        return parser

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
        if self.subcommand in ("validate", "test", "predict") and not _given(
            WsssArgumentParser.argv, "trainer.logger"
        ):
            _evaluation_loggers(config, self.subcommand)
        _wandb_offline_fallback(config["trainer.logger"])
        # wandb's start and end banners (colour codes even in a log file) repeat what the
        # closing summary says (run folder, URL, `wandb sync`): online, only its warnings
        # show; offline (nothing to reach, our own line said why) nothing.
        os.environ.setdefault("WANDB_QUIET", "true")
        if _all_wandb_offline(config["trainer.logger"]):
            os.environ.setdefault("WANDB_SILENT", "true")
        _command_line_batch_size_wins(config, WsssArgumentParser.argv)
        if self.subcommand == "fit":
            _version_checkpoint_folders(config)
        if self.subcommand == "predict":
            _version_prediction_folders(config)
        if self.subcommand in ("validate", "test", "predict") and config.get("ckpt_path"):
            _net_weights_from_checkpoint(config)
        _check_data_first(config, self.data_stages)
        _check_weights_first(config, self.subcommand or "label")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        callbacks: list[Any] = [RunSummary()]
        trainer_config = self._get(self.config_init, "trainer", default={})
        configured = trainer_config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        if (
            not is_terminal(sys.stdout)
            and trainer_config.get("enable_progress_bar") is not False
            and not any(isinstance(c, ProgressBar) for c in configured)
        ):
            # Lightning's bars redraw one line; in a log file that shows nothing until the end.
            callbacks.append(LineProgressBar())
        if trainer_config.get("enable_model_summary") is not False and not any(
            isinstance(c, ModelSummary) for c in configured
        ):
            callbacks.append(PlainModelSummary())  # no all-zero FLOPs column, no colour codes
        defaults = self.trainer_defaults.get("callbacks") or []
        defaults = defaults if isinstance(defaults, list) else [defaults]
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": [*defaults, *callbacks]}
        trainer = super().instantiate_trainer(**kwargs)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is None:
                # Lightning passes anonymous=None, which wandb warns about on every run; and
                # wandb looks for a git repository in save_dir, warning when it does not exist.
                if logger._wandb_init.get("anonymous") is None:
                    logger._wandb_init.pop("anonymous", None)
                if _is_rank_zero_process() and logger.save_dir:
                    Path(logger.save_dir).mkdir(parents=True, exist_ok=True)
        return trainer

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

    # Closing summaries (global rank 0): what came out and where it went.
    def after_fit(self) -> None:
        self._summary("fit")

    def after_validate(self) -> None:
        self._summary("validate")

    def after_test(self) -> None:
        self._summary("test")

    def after_predict(self) -> None:
        self._summary("predict")

    def _summary(self, command: str) -> None:
        trainer = self.trainer
        if trainer.is_global_zero:
            print("\n".join(summary_lines(command, trainer, self.model)), flush=True)


class LabelCLI(WsssCLI):
    """The ``label`` command's CLI: same config, but the segmentation net is never trained, so
    it is built without its pretrained checkpoint (no ResNet download for a labelling pass)."""

    data_stages = ("train",)  # it labels the training split: val / test need not be there

    def before_instantiate_classes(self) -> None:
        init_args = self.config.get("model.net.init_args")
        if init_args is not None and "pretrained" in init_args:
            init_args["pretrained"] = None
        super().before_instantiate_classes()


def build_cli(
    args: list[str] | None = None,
    run: bool = True,
    cli_class: type[WsssCLI] = WsssCLI,
    prog: str = PROG,
) -> WsssCLI:
    WsssArgumentParser.argv = list(sys.argv[1:] if args is None else args)
    first = WsssArgumentParser.argv[0] if WsssArgumentParser.argv else ""
    if prog == PROG and first and not first.startswith("-"):
        WsssArgumentParser.default_prog = f"{PROG} {first}"  # fit, validate, test, predict
    else:
        WsssArgumentParser.default_prog = prog

    # The arguments are passed explicitly, which is what this warning is about.
    warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended")
    return cli_class(
        SegmentationModule,
        WSSSDataModule,
        save_config_callback=SaveRunConfig,
        trainer_defaults={"callbacks": [ValidationCadence()]},  # appended to any config's list
        save_config_kwargs={"save_to_log_dir": False, "config_filename": "run_config.yaml"},
        parser_kwargs={"parser_mode": "omegaconf+", "prog": prog},
        parser_class=WsssArgumentParser,
        args=args,
        run=run,
    )


def destroy_process_group() -> None:
    # Without this, gloo/NCCL DDP runs abort at interpreter exit in about half the runs.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run_lightning(command: str, argv: list[str]) -> int:
    build_cli([command, *argv])
    return 0


def fit(argv: list[str]) -> int:
    return run_lightning("fit", argv)


def validate(argv: list[str]) -> int:
    return run_lightning("validate", argv)


def test(argv: list[str]) -> int:
    return run_lightning("test", argv)


def predict(argv: list[str]) -> int:
    return run_lightning("predict", argv)


def run_label(argv: list[str]) -> int:
    from wsss_pl.labeling.label_pass import run_label_pass

    cli = build_cli(argv, run=False, cli_class=LabelCLI, prog=f"{PROG} label")
    return run_label_pass(cli.trainer, cli.datamodule)


# name -> (what it does, runner). A runner takes the arguments after the command name and
