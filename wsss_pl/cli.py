"""Command line: LightningCLI (fit/validate/test/predict) plus wsss_pl's own commands.

wsss_pl fit --config configs/voc.yaml
wsss_pl label --config configs/voc.yaml        # warm the pseudo-label cache
wsss_pl evaluate-labels --pred DIR --gt DIR

``COMMANDS`` at the end of this file lists every command; adding one is one line there.

This module imports only the standard library, yaml and wsss_pl's light modules: ``--help``,
an unknown command and a config file that is missing, unreadable or has an unknown top-level
section are answered before torch and Lightning load (seconds under load). The Lightning side
lives in ``wsss_pl.lightning_cli``; its public names are reachable from here too.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsss_pl.cli_help import full_help_arguments, short_help, wants_short_help
from wsss_pl.errors import WsssError

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


def _key_in(node: Any, parts: list[str]) -> str | None:
    """The dotted key ``parts`` as found in a loaded YAML ``node``, list items as ``[i]``
    (``trainer.callbacks[2].init_args.dirpat``), or None when the node does not set it."""
    if not parts:
        return ""
    if isinstance(node, list):
        for index, item in enumerate(node):
            rest = _key_in(item, parts)
            if rest is not None:
                return f"[{index}]{rest}"
        return None
    if isinstance(node, dict) and parts[0] in node:
        rest = _key_in(node[parts[0]], parts[1:])
        return None if rest is None else f".{parts[0]}{rest}"
    return None


def _config_files_with_key(key: str, argv: list[str]) -> list[tuple[str, str]]:
    """(file, key as written there) for the config files given with --config/-c in ``argv``
    that set the dotted ``key``; a key inside a list gets its index (``callbacks[1]``)."""
    import yaml

    found = []
    for file in _config_paths(argv):
        try:
            node: Any = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        written = _key_in(node, key.split("."))
        if written is not None:
            found.append((file, written.lstrip(".")))
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
    found = re.search(r"Option '(\w+)' is not accepted", text)
    if found:
        # A key inside init_args, at any depth: the outer keys come first in jsonargparse's
        # message ("Parser key "data.train_labels": ... class_path 'A': Parser key "detector":
        # ... class_path 'B': Option 'x' is not accepted"); the class is the last one named
        # before the option (or, for callables, in the "Got value" after it).
        before, option = text[: found.start()], found.group(1)
        keys = re.findall(r'Parser key "([\w.]+)"', before)
        classes = re.findall(r"class_path '([\w.]+)'", before) or re.findall(
            r"class_path='([\w.]+)'", text[found.end() :]
        )
        if keys and classes:
            full = f"{'.init_args.'.join(keys)}.init_args.{option}"
            where = _config_files_with_key(full, argv)
            if where:  # as written in the (last) file that sets it, list index included
                full = where[-1][1]
            source = f" in {', '.join(file for file, _ in where)}" if where else ""
            guess = _closest(option, _init_parameters(classes[-1]))
            parent = full[: -len(option) - 1]
            did = f" (did you mean {parent}.{guess}?)" if guess else ""
            return f"unknown key {full}{source}: {classes[-1]} has no parameter {option!r}{did}"
    found = re.search(r"does not accept option '([\w.]+)'", text)
    if found:
        key = found.group(1)
        where = _config_files_with_key(key, argv)
        source = f" in {', '.join(file for file, _ in where)}" if where else ""
        return f"unknown key {key}{source}{hint(key, keys)}"
    found = re.search(r"the following arguments are required: (.*)", text)
    if found:
        missing = [k.split(".", 1)[-1] for k in found.group(1).split(", ")]
        command = found.group(1).split(".", 1)[0] if "." in found.group(1) else "fit"
        if any(k in ("model.net", "data.source") for k in missing):
            return (
                f"no {' and no '.join(missing)} given: start from a config, e.g. "
                f"`{PROG} {command} --config configs/demo.yaml` (configs/ holds one per dataset)"
            )
    type_error = _type_message(text)
    if type_error is not None:
        return type_error
    return _restriction_message(text) or text


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "NoneType": "null",
    "pathlib.Path": "a path",
}


def _type_message(text: str) -> str | None:
    """'KEY must be an integer or null, got 'abc'' for a value of the wrong type (one type or
    a Union of them, ``typing.Literal`` choices with a "did you mean"), or None."""
    found = re.search(r"Given value type: <class '\w+'> Given value: (.*)$", text) or re.search(
        r"Expected a (?:<class '[\w.]+'>|typing\.Literal\[[^\]]*\])\. Got value: (.*)$", text
    )
    if not found:
        return None
    value = found.group(1).strip()
    keys = re.findall(r'Parser key "([\w.]+)"', text)
    if not keys:
        return None
    key = keys[0] + "".join(f".init_args.{k}" for k in keys[1:])
    expected = re.findall(r"Expected a (<class '([\w.]+)'>|typing\.Literal\[([^\]]*)\])", text)
    if not expected:
        return None
    words: list[str] = []
    choices: list[str] = []
    for _, type_name, literal in expected:
        if literal:
            choices += [c.strip().strip("'") for c in literal.split(",")]
        else:
            words.append(_TYPE_WORDS.get(type_name, type_name))
    choices = list(dict.fromkeys(choices))
    if choices:
        words.insert(0, "one of " + ", ".join(choices))
    words = list(dict.fromkeys(words))
    wanted = ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + words[-1]
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    guess = close[0] if close else None
    did = f" (did you mean {guess!r}?)" if guess else ""
    return f"{key} must be {wanted}, got {value!r}{did}"


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


# --------------------------------------------------------------------------- config files, early

# Commands whose options are LightningCLI's, and the top-level sections their configs may hold
# (tests/test_cli_ux.py checks this set against the real parsers', so it cannot drift).
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict", "label")
CONFIG_SECTIONS = (
    "seed_everything", "trainer", "model", "data", "ckpt_path", "optimizer", "lr_scheduler",
    "weights_only", "verbose", "return_predictions", "overwrite_checkpoints", "overwrite",
)  # fmt: skip


def _config_paths(argv: list[str]) -> list[str]:
    """The values of --config / -c / --config=FILE in ``argv``, in order."""
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    return paths + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]


def config_file_error(argv: list[str], sections: bool = True) -> str | None:
    """Why a --config file in ``argv`` cannot be used (missing, not YAML, not a mapping, an
    unknown top-level section unless ``sections`` is False), as one line with a "did you mean",
    or None. Reads only the files, so it answers before torch and Lightning load; deeper keys
    are the parser's. (A config given before the command holds per-command sections, ``fit:``
    ...: call with ``sections=False``.)"""
    import yaml

    for path in _config_paths(argv):
        if "\n" in path or path.lstrip().startswith("{"):
            continue  # jsonargparse also takes the config's text itself
        file = Path(path)
        if not file.is_file():
            return f"config file {path} does not exist{_missing_file_hint(path)}"
        try:
            content = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            return f"config file {path} cannot be read: {error}"
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or _one_line(str(error))
            return f"config file {path} is not valid YAML{where}: {problem}"
        if content is None or not sections:
            continue
        if not isinstance(content, dict):
            return (
                f"config file {path} must be a YAML mapping of sections (trainer, model, data, "
                f"...), got a {type(content).__name__}"
            )
        for key in content:
            if key not in CONFIG_SECTIONS:
                guess = _closest(str(key), list(CONFIG_SECTIONS))
                did = f" (did you mean {guess}?)" if guess else ""
                known = ", ".join(CONFIG_SECTIONS[:4])
                return f"unknown key {key} in {path}{did}; top-level sections: {known}, ..."
    return None


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
