"""Command line: LightningCLI (fit/validate/test/predict) plus wsss_pl's own commands.

wsss_pl fit --config configs/voc.yaml
wsss_pl label --config configs/voc.yaml        # warm the pseudo-label cache
wsss_pl evaluate-labels --pred DIR --gt DIR

``COMMANDS`` at the end of this file lists every command; adding one is one line there.

This module imports only the standard library, yaml and wsss_pl's light modules: ``--help``,
an unknown command and a config file that is missing, unreadable or has an unknown top-level
section are answered before torch and Lightning load (seconds under load). The Lightning side
lives in ``wsss_pl.lightning_cli``; its public names are reachable from here too. The one-line
argument errors and the early config checks live in ``wsss_pl.cli_errors``.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

# The argument-error helpers and the early config checks live in cli_errors (shared with
# lightning_cli); their names stay importable from here.
from wsss_pl.cli_errors import (  # noqa: F401
    CONFIG_SECTIONS,
    LIGHTNING_COMMANDS,
    PROG,
    _config_paths,
    _missing_file_hint,
    _one_line,
    config_file_error,
    explain_argument_error,
)
from wsss_pl.cli_help import full_help_arguments, short_help, wants_short_help
from wsss_pl.errors import WsssError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- commands


Runner = Callable[[list[str]], int] | str

# name -> (what it does, runner). A runner takes the arguments after the command name and
# returns the exit code; a "module:function" string is imported only when the command runs.
COMMANDS: dict[str, tuple[str, Runner]] = {
    "fit": ("train the segmentation net (online pseudo-labels are made in the first epoch)", "wsss_pl.lightning_cli:fit"),
    "validate": ("mIoU of a checkpoint on the validation split", "wsss_pl.lightning_cli:validate"),
    "test": ("mIoU on the test split (model.test_scales, model.test_flip)", "wsss_pl.lightning_cli:test"),
    "predict": ("write palette PNG predictions (wsss_pl.callbacks.PaletteWriter)", "wsss_pl.lightning_cli:predict"),
    "label": ("make the pseudo-label cache on all devices, score it against ground truth", "wsss_pl.lightning_cli:run_label"),
    "evaluate-labels": ("mIoU of a folder of label PNGs against ground-truth PNGs", "wsss_pl.evaluation:main"),
    "compare-labels": ("several labellers on the same images: pseudo-label mIoU, speed, memory in one table", "wsss_pl.compare_labels:main"),
    "export-labels": ("pseudo-label cache -> COCO instance JSON (RLE) for review tools", "wsss_pl.labeling.storage.export:main"),
    "review-queue": ("rank cached pseudo-labels by warning signs (no ground truth): CSV, composites", "wsss_pl.review_queue:main"),
    "review": ("--fiftyone: pseudo-labels, boxes, queue score (and ground truth, predictions) as a FiftyOne dataset", "wsss_pl.review_fiftyone:main"),
    "export-review": ("queue top N / ids as Label Studio tasks (pre-annotations) or COCO for CVAT", "wsss_pl.corrections.commands:export_review"),
    "import-labels": ("a reviewed Label Studio export or COCO file -> corrections used before the cache", "wsss_pl.corrections.commands:import_labels"),
    "export-model": ("a trained checkpoint as ONNX / TorchScript (uint8 image in, normalisation inside)", "wsss_pl.export_model:main"),
    "fetch": ("every weight and dataset a config needs in one table; downloads them, or says how offline", "wsss_pl.fetching:main"),
    "reproduce": ("the paper's experiment end to end (label, score, fit, test) and its table", "wsss_pl.reproduce:main"),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    """The Lightning side's public names (``build_cli``, ``wandb_unavailable``, ...), loaded
    only when first used."""
    if name.startswith("__"):
        raise AttributeError(name)
    module = importlib.import_module("wsss_pl.lightning_cli")
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


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
        f"`{PROG} COMMAND --help` lists a command's options (`--help full`: all). Configs are YAML; any key can be set",
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
        message = record.getMessage()
        # Lightning's tip to install litlogger, and its note that our PlainModelSummary replaces
        # its default summary.
        return "litlogger" not in message and "Skipping setting a default `ModelSummary`" not in (
            message
        )


def _quiet_known_noise() -> None:
    # Epoch metrics are torchmetrics objects already reduced across ranks when logged; Lightning's
    # advice to add sync_dist=True would only re-average identical values.
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.* when logging on epoch level")
    # Lightning's own use of a deprecated torch API, printed on every run.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # fit never writes into a folder holding an earlier run's checkpoints unless resuming it or
    # told to (--overwrite_checkpoints), and says so itself.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
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
    if command in LIGHTNING_COMMANDS and wants_short_help(rest):
        print(short_help(command))
        return 0
    if command in LIGHTNING_COMMANDS:
        rest = full_help_arguments(rest)
    if command in LIGHTNING_COMMANDS or not command:
        problem = config_file_error(rest, sections=bool(command))
        if problem is not None:
            prog = f"{PROG} {command}" if command else PROG
            print(f"{prog}: error: {problem}", file=sys.stderr)
            print(f"`{prog} --help` lists every option", file=sys.stderr)
            return 2
    try:
        if not command:
            from wsss_pl.lightning_cli import build_cli

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
        lightning_cli = sys.modules.get("wsss_pl.lightning_cli")
        if lightning_cli is not None:  # only a Lightning command can have started DDP
            lightning_cli.destroy_process_group()
