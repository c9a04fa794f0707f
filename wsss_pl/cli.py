"""Command line: LightningCLI (fit/validate/test/predict) plus wsss_pl's own commands.

wsss_pl fit --config configs/voc.yaml
wsss_pl label --config configs/voc.yaml        # warm the pseudo-label cache
wsss_pl evaluate-labels --pred DIR --gt DIR

``COMMANDS`` at the end of this file lists every command; adding one is one line there.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from lightning.pytorch.loggers import WandbLogger

from wsss_pl.cadence import ValidationCadence
from wsss_pl.callbacks import LineProgressBar, PaletteWriter, RunSummary
from wsss_pl.data.datamodule import WSSSDataModule
from wsss_pl.errors import WsssError
from wsss_pl.module import SegmentationModule
from wsss_pl.progress import format_duration, is_terminal
from wsss_pl.weights import check_training_checkpoint, load_training_checkpoint

log = logging.getLogger(__name__)

PROG = "wsss_pl"


# --------------------------------------------------------------------------- errors in arguments


def _closest(word: str, candidates: list[str]) -> str | None:
    """The candidate closest to ``word`` (difflib), or None when none is close."""
    if "." in word:  # a dotted key: compare leaves under the same parent first
        parent, leaf = word.rsplit(".", 1)
        siblings = {c[len(parent) + 1 :]: c for c in candidates if c.startswith(parent + ".")}
        match = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
        if match:
            return siblings[match[0]]
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.8)
    return match[0] if match else None


def _option_keys(parser: Any) -> list[str]:
    """The dotted keys a parser accepts (``data.batch_size``, ``trainer.max_epochs``, ...)."""
    return [
        s[2:] for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--"
    ]


def _init_parameters(class_path: str) -> list[str]:
    try:
        module, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        parameters = inspect.signature(cls).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in parameters if p.kind not in variadic]


def _config_files_with_key(key: str, argv: list[str]) -> list[str]:
    """Config files given with --config/-c in ``argv`` that set the dotted ``key``."""
    import yaml

    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    found = []
    for file in files:
        try:
            node: Any = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        else:
            found.append(file)
    return found


def _missing_file_hint(path: str) -> str:
    """' (did you mean configs/demo.yaml?)' for a missing file with a close sibling, else ''."""
    missing = Path(path)
    if not missing.parent.is_dir():
        return ""
    siblings = [p.name for p in missing.parent.iterdir() if p.is_file()]
    match = difflib.get_close_matches(missing.name, siblings, n=1, cutoff=0.6)
    if not match:
        return ""
    guess = missing.parent / match[0]
    if guess.is_absolute() and guess.is_relative_to(Path.cwd()):
        guess = guess.relative_to(Path.cwd())
    return f" (did you mean {guess}?)"


def explain_argument_error(message: str, parser: Any, argv: list[str]) -> str:
    """A one-line version of a jsonargparse error that names the key or file first, with a
    "did you mean" where a known key, parameter, choice or file name is close."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    keys = _option_keys(parser)

    def hint(word: str, candidates: list[str], prefix: str = "") -> str:
        guess = _closest(word, candidates)
        return f" (did you mean {prefix}{guess}?)" if guess else ""

    found = re.search(r"unrecognized arguments: (.*)", text)
    if found:
        given = [t.split("=", 1)[0] for t in found.group(1).split() if t.startswith("--")]
        if given:
            parts = [g + hint(g[2:], keys, "--") for g in given]
            return f"unknown option {', '.join(parts)}"
    found = re.search(r"File does not exist: '([^']+)'", text)
    if found and 'key "config"' in text:
        return f"config file {found.group(1)} does not exist{_missing_file_hint(found.group(1))}"
    found = re.search(
        r"Parser key \"([\w.]+)\": Problem with given class_path '([\w.]+)': "
        r"Option '(\w+)' is not accepted",
        text,
    )
    if found:
        key, class_path, option = found.groups()
        full = f"{key}.init_args.{option}"
        guess = _closest(option, _init_parameters(class_path))
        did = f" (did you mean {key}.init_args.{guess}?)" if guess else ""
        return f"unknown key {full}: {class_path} has no parameter {option!r}{did}"
    found = re.search(r"does not accept option '([\w.]+)'", text)
    if found:
        key = found.group(1)
        where = _config_files_with_key(key, argv)
        source = f" in {', '.join(where)}" if where else ""
        return f"unknown key {key}{source}{hint(key, keys)}"
    found = re.search(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (\S+)", text)
    if found:
        choices = re.findall(r"'([^']*)'", found.group(1))
        guess = _closest(found.group(2), choices)
        return text + (f" (did you mean {guess!r}?)" if guess else "")
    return _restriction_message(text) or text


def _restriction_message(text: str) -> str | None:
    """'KEY must be > 0, got 0' for a value that breaks a restricted type (PositiveFloat, ...)
    declared on an option, or None. Nested keys join the outer key, ``init_args`` and the
    parameter (``data.train_labels.init_args.write_workers``)."""
    found = re.search(r"Not of type (\w+): (.*?) does not (conform to restriction|match)", text)
    if not found:
        return None
    keys = re.findall(r'Parser key "([\w.]+)"', text[: found.start()])
    if not keys:
        return None
    key = keys[0] + "".join(f".init_args.{k}" for k in keys[1:])
    wanted = {
        "PositiveInt": "an integer >= 1",
        "PositiveFloat": "a number > 0",
        "NonNegativeInt": "an integer >= 0",
        "NonNegativeFloat": "a number >= 0",
        "NotEmptyStr": "a non-empty string",
    }.get(found.group(1), found.group(1))
    return f"{key} must be {wanted}, got {found.group(2)!r}"


class WsssArgumentParser(LightningArgumentParser):
    """Bad arguments: the message naming the key or file comes first, as one line with a "did
    you mean", then where to find the options; no 65-line usage before it. Exit code 2."""

    argv: list[str] = []  # the command line, to say which config file holds a bad key

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
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
        _wandb_offline_fallback(config["trainer.logger"])
        _check_data_first(config)

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
        defaults = self.trainer_defaults.get("callbacks") or []
        defaults = defaults if isinstance(defaults, list) else [defaults]
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": [*defaults, *callbacks]}
        return super().instantiate_trainer(**kwargs)

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
            lines.append(f"  training labels vs ground truth: mIoU {100 * float(quality):.2f}")
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
    saver = next((c for c in callbacks if isinstance(c, SaveRunConfig)), None)
    if saver is not None and saver.saved_path is not None:
        lines.append(f"  resolved config: {saver.saved_path}")
    return lines


class LabelCLI(WsssCLI):
    """The ``label`` command's CLI: same config, but the segmentation net is never trained, so
    it is built without its pretrained checkpoint (no ResNet download for a labelling pass)."""

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        init_args = self.config.get("model.net.init_args")
        if init_args is not None and "pretrained" in init_args:
            init_args["pretrained"] = None


def build_cli(
    args: list[str] | None = None,
    run: bool = True,
    cli_class: type[WsssCLI] = WsssCLI,
    prog: str = PROG,
) -> WsssCLI:
    WsssArgumentParser.argv = list(sys.argv[1:] if args is None else args)
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


def _destroy_process_group() -> None:
    # Without this, gloo/NCCL DDP runs abort at interpreter exit in about half the runs.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- commands


def run_lightning(command: str, argv: list[str]) -> int:
    build_cli([command, *argv])
    return 0


def run_label(argv: list[str]) -> int:
    from wsss_pl.labeling.label_pass import run_label_pass

    cli = build_cli(argv, run=False, cli_class=LabelCLI, prog=f"{PROG} label")
    return run_label_pass(cli.trainer, cli.datamodule)


Runner = Callable[[list[str]], int] | str

# name -> (what it does, runner). A runner takes the arguments after the command name and
# returns the exit code; a "module:function" string is imported only when the command runs.
COMMANDS: dict[str, tuple[str, Runner]] = {
    "fit": ("train the segmentation net (online pseudo-labels are made in the first epoch)", partial(run_lightning, "fit")),
    "validate": ("mIoU of a checkpoint on the validation split", partial(run_lightning, "validate")),
    "test": ("mIoU on the test split (model.test_scales, model.test_flip)", partial(run_lightning, "test")),
    "predict": ("write palette PNG predictions (wsss_pl.callbacks.PaletteWriter)", partial(run_lightning, "predict")),
    "label": ("make the pseudo-label cache on all devices, score it against ground truth", run_label),
    "evaluate-labels": ("mIoU of a folder of label PNGs against ground-truth PNGs", "wsss_pl.evaluation:main"),
    "compare-labels": ("several labellers on the same images: pseudo-label mIoU, speed, memory in one table", "wsss_pl.compare_labels:main"),
    "export-labels": ("pseudo-label cache -> COCO instance JSON (RLE) for review tools", "wsss_pl.labeling.storage.export:main"),
    "export-model": ("a trained checkpoint as ONNX / TorchScript (uint8 image in, normalisation inside)", "wsss_pl.export_model:main"),
    "reproduce": ("the paper's experiment end to end (label, score, fit, test) and its table", "wsss_pl.reproduce:main"),
}  # fmt: skip


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: {PROG} COMMAND [--config FILE ...] [--KEY VALUE ...]   (or python -m {PROG})",
        "",
        "Pseudo-labels from image-level labels with Grounding DINO + SAM, cached, and DeepLab-v2",
        "trained on them.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, (text, _) in COMMANDS.items()),
        "",
        f"`{PROG} COMMAND --help` lists a command's options. Configs are YAML; any key can be set",
        "on the command line (--data.batch_size 16); --print_config shows the resolved config.",
        f"example: {PROG} fit --config configs/demo.yaml",
    ]
    return "\n".join(lines)


def _resolve(runner: Runner) -> Callable[[list[str]], int]:
    if callable(runner):
        return runner
    module, name = runner.split(":")
    return getattr(importlib.import_module(module), name)


def _wsss_error(error: BaseException) -> WsssError | None:
    """The WsssError that caused ``error`` (jsonargparse wraps errors raised while building)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, WsssError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


# Errors that, raised from a command, almost always come from what the user gave (a value, a
# key, a path): printed as one line too. WSSS_PL_DEBUG=1 shows their traceback instead.
USER_INPUT_ERRORS = (ValueError, KeyError, OSError)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def user_error_message(error: BaseException) -> str | None:
    """The one-line message for an error caused by bad input, or None (a bug: traceback).

    A WsssError anywhere in the cause chain is printed as it is; a ValueError / KeyError /
    OSError (jsonargparse wraps those raised while building the objects) gets its type and the
    way to see its traceback appended.
    """
    cause = _wsss_error(error)
    if cause is not None:
        return _one_line(str(cause))
    if os.environ.get("WSSS_PL_DEBUG"):
        return None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, USER_INPUT_ERRORS):
            if isinstance(current, OSError) and current.filename is not None:
                text = f"{current.filename}: {current.strerror or current}"
            elif isinstance(current, KeyError) and current.args:
                text = f"unknown key {current.args[0]!r}"
            else:
                text = _one_line(str(current)) or type(current).__name__
            return f"{text} ({type(current).__name__}; WSSS_PL_DEBUG=1 shows the traceback)"
        seen.add(id(current))
        current = current.__cause__
    return None


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_known_noise() -> None:
    # Epoch metrics are torchmetrics objects already reduced across ranks when logged; Lightning's
    # advice to add sync_dist=True would only re-average identical values.
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.* when logging on epoch level")
    # Lightning's own use of a deprecated torch API, printed on every run.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTip())


def main(argv: list[str] | None = None) -> int:
    _quiet_known_noise()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        if command.startswith("-"):  # root options of LightningCLI, e.g. --config before fit
            command, rest = "", argv
        else:
            guess = difflib.get_close_matches(command, list(COMMANDS), n=1)
            did = f" (did you mean {guess[0]}?)" if guess else ""
            print(
                f"{PROG}: error: unknown command {command!r}{did}; commands: {', '.join(COMMANDS)}",
                file=sys.stderr,
            )
            return 2
    try:
        if not command:
            build_cli(rest)
            return 0
        return int(_resolve(COMMANDS[command][1])(rest) or 0)
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        # Bad input: a clear message naming the file, id or key, without a traceback.
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    finally:
        _destroy_process_group()
