"""The command line's own errors, before torch loads: one-line versions of jsonargparse's
argument errors (with a "did you mean") and the early checks of --config files.

Imported by ``wsss_pl.cli`` (the light start) and ``wsss_pl.lightning_cli`` (the LightningCLI
side), so neither imports the other's module for them. Standard library and yaml only.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

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
    # A restricted type inside a Union (``list[PositiveFloat] | None``) fails against every
    # member; the restriction is what the user broke, not the "null" alternative.
    return _restriction_message(text) or _type_message(text) or text


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


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
