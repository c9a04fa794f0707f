"""The Lightning side of the command line: LightningCLI with wsss_pl's argument errors, W&B
fallback, run folders and closing summaries. ``wsss_pl.cli`` (light) imports it only when a
Lightning command runs."""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from lightning.pytorch.loggers import WandbLogger

from wsss_pl.cadence import ValidationCadence
from wsss_pl.callbacks import (
    LineProgressBar,
    PaletteWriter,
    PlainModelSummary,
    RunSummary,
    review_dir,
)
from wsss_pl.cli_errors import PROG, _config_paths, explain_argument_error
from wsss_pl.data.datamodule import WSSSDataModule
from wsss_pl.module import SegmentationModule
from wsss_pl.progress import format_duration, is_terminal
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


# --------------------------------------------------------------------------- W&B without a login


def _netrc_has_key(url: str) -> bool:
    try:  # wandb's own reader knows where `wandb login` writes the key
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth

        return bool(read_netrc_auth(host=url))
    except Exception:  # noqa: BLE001 - an internal API that may move: fall back to netrc
        import netrc

        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        try:
            return netrc.netrc(path).authenticators(urlsplit(url).hostname or "") is not None
        except (OSError, netrc.NetrcParseError):
            return False


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the URL's host opens within ``timeout`` (DNS included)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)  # getaddrinfo ignores timeouts
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def wandb_unavailable() -> str | None:
    """Why an online W&B run cannot start here (no API key, server unreachable), or None."""
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not (
        os.environ.get("WANDB_API_KEY")
        or os.environ.get("WANDB_IDENTITY_TOKEN_FILE")
        or _netrc_has_key(url)
    ):
        return "W&B has no API key (set WANDB_API_KEY or run `wandb login`)"
    if not _reachable(url):
        return f"the W&B server {url} cannot be reached"
    return None


def _is_rank_zero_process() -> bool:
    # DDP children re-run the CLI with these set; only the launching process speaks.
    return all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _wandb_offline_fallback(loggers: Any) -> None:
    """Switch online WandbLogger configs to offline when W&B cannot work here, saying so."""
    entries = loggers if isinstance(loggers, list) else [loggers]
    wandb_args = [
        e.init_args
        for e in entries
        if isinstance(e, Namespace)
        and str(e.get("class_path", "")).endswith(".WandbLogger")
        and isinstance(e.get("init_args"), Namespace)
        and not e.init_args.get("offline")
    ]
    if not wandb_args or os.environ.get("WANDB_MODE", "").lower() in (
        "offline",
        "dryrun",
        "disabled",
    ):
        return
    reason = wandb_unavailable()
    if reason is None:
        return
    for init_args in wandb_args:
        init_args["offline"] = True
        if _is_rank_zero_process():
            where = Path(init_args.get("save_dir") or init_args.get("dir") or ".") / "wandb"
            print(
                f"{PROG}: {reason}: logging offline to {where}; upload later with "
                f"`wandb sync {where}/offline-run-*`",
                file=sys.stderr,
                flush=True,
            )


def _all_wandb_offline(loggers: Any) -> bool:
    """Whether the configured loggers include W&B and every W&B logger runs offline."""
    entries = loggers if isinstance(loggers, list) else [loggers]
    wandb_args = [
        e.get("init_args") or Namespace()
        for e in entries
        if isinstance(e, Namespace) and str(e.get("class_path", "")).endswith(".WandbLogger")
    ]
    offline_mode = os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")
    return bool(wandb_args) and all(offline_mode or a.get("offline") for a in wandb_args)


def _remove_empty_wandb_run(logger: WandbLogger) -> Path | None:
    """Finish and delete a W&B run that logged nothing (a run that failed at start-up)."""
    run = logger._experiment
    if run is None:
        return None
    try:
        if run.step != 0:
            return None
        run_dir = Path(run.dir).parent
        run.finish(exit_code=1)
    except Exception:  # noqa: BLE001 - a broken run is left as it is
        return None
    shutil.rmtree(run_dir, ignore_errors=True)
    latest = run_dir.parent / "latest-run"
    if latest.is_symlink() and not latest.exists():
        latest.unlink()
    return run_dir


# --------------------------------------------------------------------------- the Lightning CLI


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


def _check_data_first(config: Any) -> None:
    """Check that the dataset is there before anything is built: the model's constructor loads
    (and may download) its pretrained weights, so without this a missing dataset is reported as
    missing ResNet weights. Builds the configured source alone and runs its ``prepare_data``
    check; ``download: true`` sources are fetched later by ``prepare_data`` as before. Only the
    launching process checks (DDP children start after it).
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
    source.prepare_data()


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


def _is_wandb(entry: Any) -> bool:
    return isinstance(entry, Namespace) and str(entry.get("class_path", "")).endswith(
        ".WandbLogger"
    )


def _evaluation_loggers(config: Any, command: str) -> None:
    """W&B runs of validate / test / predict, unless ``--trainer.logger`` is given: predict logs
    nothing, so it starts no W&B run (its resolved config goes beside the predictions);
    validate and test runs go to ``SAVE_DIR/<command>/wandb`` so that the training runs in
    ``SAVE_DIR/wandb`` are not mixed with a run per evaluation."""
    logger = config.get("trainer.logger")
    entries = logger if isinstance(logger, list) else [logger]
    if command == "predict":
        kept = [e for e in entries if not _is_wandb(e)]
        if len(kept) != len(entries):
            config["trainer.logger"] = kept if len(kept) > 1 else (kept[0] if kept else False)
        return
    for entry in entries:
        if _is_wandb(entry) and isinstance(entry.get("init_args"), Namespace):
            init_args = entry.init_args
            base = init_args.get("save_dir") or init_args.get("dir") or "."
            init_args["save_dir"] = str(Path(base) / command)


class WsssCLI(LightningCLI):
    """LightningCLI with the class names linked from the data module into the model, W&B that
    falls back to offline, plain progress lines off a terminal and a closing summary."""

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
        _check_data_first(config)
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


def _iou_table(names: list[str], iou: list[float], miou: float, split: str) -> list[str]:
    width = max(12, *(len(n) for n in names))
    lines = [f"  {'class':<{width}}  {'IoU':>6}"]
    for name, value in zip(names, iou, strict=True):
        shown = "-" if value != value else f"{100 * value:6.2f}"
        lines.append(f"  {name:<{width}}  {shown:>6}")
    lines.append(f"  {split + ' mIoU':<{width}}  {100 * miou:6.2f}")
    return lines


def summary_lines(command: str, trainer: Any, model: Any) -> list[str]:
    """The closing summary of a fit/validate/test/predict run (plain text lines)."""
    callbacks = trainer.callbacks
    summary = next((c for c in callbacks if isinstance(c, RunSummary)), None)
    lines = []
    if command == "fit":
        took = format_duration(time.perf_counter() - summary.start) if summary else "?"
        state = "interrupted" if trainer.interrupted else "finished"
        lines.append(
            f"{PROG} fit {state}: {trainer.current_epoch} epochs, {trainer.global_step} steps "
            f"in {took}"
        )
        history = summary.val_history if summary else []
        if history:
            last_epoch, last = history[-1]
            best_epoch, best = max(history, key=lambda item: item[1])
            lines.append(
                f"  val mIoU: last {100 * last:.2f} (epoch {last_epoch}), "
                f"best {100 * best:.2f} (epoch {best_epoch})"
            )
        else:
            lines.append("  no validation ran")
        quality = trainer.callback_metrics.get("train_labels/mIoU")
        labels = getattr(trainer.datamodule, "train_labels", None)
        if quality is not None and type(labels).__name__ != "GroundTruthLabels":
            lines.append(
                f"  training labels vs ground truth: mIoU {float(quality):.2f} (last epoch's "
                "augmented crops as fed to the net; `wsss_pl label` scores the full-size labels)"
            )
        folders = {
            str(c.dirpath)
            for c in trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint) and c.dirpath
        }
        for folder in sorted(folders):
            lines.append(f"  checkpoints folder: {folder}")
        for checkpoint in trainer.checkpoint_callbacks:
            if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_path:
                what = f"best by {checkpoint.monitor}" if checkpoint.monitor else "latest"
                lines.append(f"  checkpoint ({what}): {checkpoint.best_model_path}")
    elif command in ("validate", "test"):
        split = "val" if command == "validate" else "test"
        scores = getattr(model, "last_scores", {}).get(split)
        if scores is None:
            lines.append(f"{PROG} {command}: no {split} scores (empty split?)")
        else:
            lines.append(f"{PROG} {command}: {split} mIoU {100 * float(scores['miou']):.2f}")
            lines += _iou_table(
                model.label_names, scores["iou"].tolist(), float(scores["miou"]), split
            )
    elif command == "predict":
        writers = [c for c in callbacks if isinstance(c, PaletteWriter)]
        if not writers:
            lines.append(
                f"{PROG} predict: nothing written (add wsss_pl.callbacks.PaletteWriter to "
                "trainer.callbacks to write palette PNGs)"
            )
        for writer in writers:
            ranks = f" (rank 0 of {trainer.world_size})" if trainer.world_size > 1 else ""
            lines.append(
                f"{PROG} predict: wrote {writer.num_written} palette PNGs{ranks} to "
                f"{writer.output_dir}"
            )
        if not trainer.loggers:
            lines.append("  no W&B run for predict (it logs nothing; --trainer.logger sets one)")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            run = logger.experiment
            run_dir = Path(run.dir).parent
            if getattr(run.settings, "_offline", False):
                lines.append(f"  W&B run (offline): {run_dir}; upload: wandb sync {run_dir}")
            else:
                lines.append(f"  W&B run: {run.url} (local files: {run_dir})")
        elif getattr(logger, "log_dir", None):
            lines.append(f"  logs ({type(logger).__name__}): {logger.log_dir}")
        if isinstance(logger, WandbLogger) and logger._experiment is None:
            continue
        review = review_dir(logger)
        if review is not None and review.is_dir():
            count = sum(1 for _ in review.glob("*.png"))
            lines.append(f"  review images ({count} PNGs, titled, with a colour legend): {review}")
    saver = next((c for c in callbacks if isinstance(c, SaveRunConfig)), None)
    if saver is not None and saver.saved_path is not None:
        lines.append(f"  resolved config: {saver.saved_path}")
    return lines


class LabelCLI(WsssCLI):
    """The ``label`` command's CLI: same config, but the segmentation net is never trained, so
    it is built without its pretrained checkpoint (no ResNet download for a labelling pass)."""

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
