"""``python -m wsss_pl fetch --config CONFIG``: every weight and dataset a config needs, in one
table, downloaded where allowed; and the same check before ``label`` / ``fit`` start.

Weights go where the commands look for them: registry checkpoints to
``$WSSS_PL_CACHE/checkpoints/<file>`` (``wsss_pl.weights.resolve_checkpoint``), hub models to
``$WSSS_PL_CACHE/hub/<name>`` (``wsss_pl.weights.hub_local_dir``). So fetching on a machine with
internet and copying ``$WSSS_PL_CACHE`` makes an offline node complete. Offline
(``HF_HUB_OFFLINE=1`` or ``--offline``) nothing is downloaded: each missing item is one line with
its config key, the exact path it belongs at and the command that fetches it elsewhere; exit 2.
Library exception text appears only with ``WSSS_PL_DEBUG=1``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wsss_pl.errors import ConfigError, WeightsError, WsssError
from wsss_pl.requirements import SPEC_FOR_TYPE, Need, config_needs, load_config

State = Literal["present", "downloaded", "missing", "unusable"]
DATASET_LICENCES = {
    "VOC": "images: Flickr terms of use",
    "COCO": "annotations CC BY 4.0; images: Flickr terms of use",
}


@dataclass
class Found:
    """Where a need stands: its local path, size, sha256 (or the pinned prefix), licence, state;
    for a missing or unusable one, why (``problem``) and how to get it elsewhere (``get``)."""

    need: Need
    path: str
    state: State
    size: int | None = None
    sha256: str = ""
    licence: str = ""
    problem: str = ""
    get: str = ""


def _debug() -> bool:
    return bool(os.environ.get("WSSS_PL_DEBUG"))


def _short(error: BaseException) -> str:
    """The first sentence of our own error (library text only with WSSS_PL_DEBUG=1)."""
    text = " ".join(str(error).split())
    if _debug():
        cause = error.__cause__
        return text + (f" [{type(cause).__name__}: {cause}]" if cause is not None else "")
    first = re.sub(r" \S*https?://\S+", "", text.split(". ")[0])  # the URL is in the table
    return first[:200]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts)


def check_writable(directory: Path) -> None:
    """A one-line WeightsError when ``directory`` cannot be created or written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test"):
            pass
    except OSError as error:
        raise WeightsError(
            f"the weights cache {directory} cannot be written ({error.strerror or error}): set "
            "WSSS_PL_CACHE to a writable folder (or fetch elsewhere and copy the cache here)"
        ) from None


# ------------------------------------------------------------------------- single files


def _find_checkpoint(need: Need, download: bool, digests: bool = True) -> Found:
    from wsss_pl.weights import (
        CHECKPOINTS,
        checkpoint_fingerprint,
        default_cache_dir,
        resolve_checkpoint,
    )

    given = Path(need.value).expanduser()
    entry = CHECKPOINTS.get(need.value)
    if entry is None:
        if given.is_file():
            digest = checkpoint_fingerprint(given) if digests else ""
            return Found(need, str(given), "present", _size(given), digest, "-")
        looks_like_path = "/" in need.value or given.suffix in (".pth", ".pt", ".caffemodel")
        problem = (
            "no such file"
            if looks_like_path
            else f"not a file and not a known name (known: {', '.join(CHECKPOINTS)})"
        )
        return Found(need, str(given), "unusable" if not looks_like_path else "missing",
                     problem=problem, get=f"copy the file to {given}")  # fmt: skip
    target = default_cache_dir() / entry.filename
    pinned = entry.sha256 or (f"{entry.sha256_prefix}..." if entry.sha256_prefix else "")
    found = Found(need, str(target), "missing", entry.size_bytes, pinned, entry.licence)
    if entry.archive_member is not None:
        found.get = (
            f"curl -L -o {target}.zip {entry.url} && unzip -p {target}.zip "
            f"{entry.archive_member} > {target}"
        )
    else:
        found.get = f"curl -L -o {target} {entry.url}"
    state: State = "present"
    if not target.is_file():
        if not (download and need.download):
            found.problem = "not downloaded" if need.download else "download: false"
            return found
        check_writable(target.parent)
        state = "downloaded"
    try:
        path = resolve_checkpoint(need.value, download=download and need.download)
    except WeightsError as error:
        found.problem = _short(error)
        return found
    found.state, found.size = state, _size(path)
    found.sha256 = checkpoint_fingerprint(path)  # verified above: read from its sidecar
    return found


# ------------------------------------------------------------------------- hub model folders


def _model_type(directory: Path) -> str | None:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(config.get("model_type")) if isinstance(config, dict) else None


def _check_family(found: Found, directory: Path) -> Found:
    """``unusable`` when the folder holds another model family than the spec loads."""
    kind = _model_type(directory)
    if found.need.families and kind is not None and kind not in found.need.families:
        fits = SPEC_FOR_TYPE.get(kind, "no wsss_pl spec")
        found.state = "unusable"
        found.problem = (
            f"holds a {kind} model (config.json model_type) but {found.need.user} loads "
            f"{' / '.join(found.need.families)}; for this folder use {fits}"
        )
        found.get = ""
    return found


def _weights_digest(directory: Path) -> str:
    from wsss_pl.weights import checkpoint_fingerprint

    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return checkpoint_fingerprint(directory / name)
    return ""


def _find_hub(need: Need, download: bool, digests: bool = True) -> Found:
    from wsss_pl.weights import HUB_MODELS, _hub_model, hub_local_dir, resolve_hub_model

    given = Path(need.value).expanduser()
    as_path = need.value.startswith(("/", ".", "~")) or need.value.count("/") > 1
    if given.is_dir() or as_path:
        if not given.is_dir():
            return Found(need, str(given), "missing", problem="no such folder",
                         get=f"copy the model folder to {given}")  # fmt: skip
        if not (given / "config.json").is_file():
            return Found(need, str(given), "unusable",
                         problem="not a model folder (no config.json)")  # fmt: skip
        digest = _weights_digest(given) if digests else ""
        found = Found(need, str(given), "present", _size(given), digest, "-")
        return _check_family(found, given)
    try:
        model = _hub_model(need.value)
    except WeightsError:
        known = ", ".join(HUB_MODELS)
        return Found(need, need.value, "unusable",
                     problem=f"not a folder, an owner/repo hub id or a known name ({known})")  # fmt: skip
    target = hub_local_dir(model)
    licence = model.licence or "see the model card"
    found = Found(need, str(target), "missing", licence=licence)
    login = "hf auth login && " if model.gated else ""
    found.get = f"{login}hf download {model.repo_id} --local-dir {target}"
    try:  # already here: our folder or the Hugging Face cache (no network)
        local = Path(resolve_hub_model(need.value, download=False))
    except WeightsError:
        local = None
    if local is not None:
        found.path, found.state, found.size = str(local), "present", _size(local)
        found.sha256 = _weights_digest(local) if digests else ""
        return _check_family(found, local)
    if model.gated:
        found.problem = f"gated: accept its licence at https://huggingface.co/{model.repo_id}"
        return found
    if not (download and need.download):
        found.problem = "not downloaded" if need.download else "download: false"
        return found
    check_writable(target)
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(
            model.repo_id,
            revision=model.revision,
            local_dir=str(target),
            allow_patterns=[*model.required_files, *model.optional_files],
        )
    except Exception as error:  # noqa: BLE001 - network / hub errors: one line, text on debug
        found.problem = "the download from the hub failed" + (
            f" ({type(error).__name__}: {error})" if _debug() else ""
        )
        return found
    missing = [name for name in model.required_files if not (target / name).is_file()]
    if missing:
        found.problem = f"the hub copy lacks {', '.join(missing)}"
        return found
    found.state, found.size, found.sha256 = "downloaded", _size(target), _weights_digest(target)
    return _check_family(found, target)


# ------------------------------------------------------------------------- datasets


def _find_dataset(need: Need, download: bool, config_path: str) -> Found:
    import importlib

    arguments = need.arguments
    class_path = arguments.pop("class_path")
    root = str(arguments.get("root", "?"))
    licence = DATASET_LICENCES.get(need.value, "-")
    key = f"{need.key}.init_args.root"
    found = Found(
        dataclasses.replace(need, key=key),
        root,
        "missing",
        licence=licence,
        get=f"python -m wsss_pl fetch --config {need.config_file or config_path} "
        f"--data.source.init_args.download true, then copy {root} here",
    )
    module, name = class_path.rsplit(".", 1)
    try:
        source_class = getattr(importlib.import_module(module), name)
        source = source_class(**{**arguments, "download": False})
        source.prepare_data()
        found.state = "present"
        return found
    except WsssError as error:
        found.problem = _short(error)
    except (ImportError, AttributeError, TypeError, ValueError) as error:
        found.state, found.problem = "unusable", f"cannot build {name}: {_short(error)}"
        return found
    if not (download and need.download):
        return found
    try:
        source_class(**{**arguments, "download": True}).prepare_data()
    except WsssError as error:
        found.problem = _short(error)
        return found
    found.state, found.problem = "downloaded", ""
    return found


# ------------------------------------------------------------------------- all of them


def find_all(
    needs: list[Need],
    download: bool,
    config_path: str = "CONFIG",
    data: bool = True,
    digests: bool = True,
) -> list[Found]:
    """The state of every need, downloading the missing ones when ``download`` (and the config)
    allow it; ``digests``: hash the files found (for the table). An unwritable cache stops
    everything with one line (nothing can be fetched)."""
    found = []
    for need in needs:
        if need.kind == "checkpoint":
            found.append(_find_checkpoint(need, download, digests))
        elif need.kind == "hub":
            found.append(_find_hub(need, download, digests))
        elif data:
            found.append(_find_dataset(need, download, config_path))
    return found


def _size_text(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return "-"


def table(found: list[Found]) -> str:
    """Aligned text table: name, config key, path, size, sha256 (first 16 hex), licence, state."""
    header = ("name", "config key", "path", "size", "sha256", "licence", "status")
    rows = [header]
    for item in found:
        digest = item.sha256[:16] + ("..." if len(item.sha256) > 16 else "") or "-"
        rows.append(
            (item.need.value, item.need.key, item.path, _size_text(item.size), digest or "-",
             item.licence or "-", item.state)
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def problem_lines(found: list[Found]) -> list[str]:
    """One short line per missing or unusable item: key, value, path, why, how to get it."""
    lines = []
    for item in found:
        if item.state not in ("missing", "unusable"):
            continue
        where = f" at {item.path}" if item.path != item.need.value else ""
        line = f"{item.state}: {item.need.key} = {item.need.value}{where}"
        if item.problem and item.problem != "not downloaded":
            line += f" ({item.problem})"
        if item.get:
            line += f"; elsewhere: {item.get}"
        lines.append(line)
    return lines


def ensure_weights(needs: list[Need], command: str, configs: str = "") -> None:
    """Before ``label`` / ``fit`` build anything: every weight present (downloaded now unless
    offline), else the full list on stderr and one WeightsError. Datasets are checked apart."""
    from wsss_pl.weights import hub_offline

    weights = [need for need in needs if need.kind != "dataset"]
    if not weights:
        return
    found = find_all(weights, download=not hub_offline(), data=False, digests=False)
    lines = problem_lines(found)
    if lines:
        for line in lines:
            print(f"wsss_pl {command}: {line}", file=sys.stderr, flush=True)
        raise WeightsError(
            f"{len(lines)} of the {len(found)} weights this config needs are missing or unusable "
            f"(listed above); fetch them all with `python -m wsss_pl fetch "
            f"{configs or '--config CONFIG'}` where "
            "there is internet and copy $WSSS_PL_CACHE (default ~/.cache/wsss_pl) here"
        )


# ------------------------------------------------------------------------- the command

USAGE = """usage: wsss_pl fetch --config FILE [--config FILE ...] [--offline] [--KEY VALUE ...]

Every weight and dataset the config needs, in one table (name, config key, path, size, sha256,
licence, present / downloaded / missing), downloading what it may into $WSSS_PL_CACHE
(default ~/.cache/wsss_pl): checkpoints/ and hub/. Datasets are downloaded only when the config
says download: true. Offline (HF_HUB_OFFLINE=1 or --offline): nothing is downloaded; each
missing item is one line with its config key, its path and the command that fetches it
elsewhere. Exit 0 when everything is there, 2 otherwise. Works for training configs
(configs/voc.yaml) and compare-labels configs (configs/compare_voc.yaml).
"""


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    files: list[str] = []
    rest: list[str] = []
    offline = False
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in ("--config", "-c"):
            if index + 1 >= len(argv):
                raise ConfigError("--config needs a file")
            files.append(argv[index + 1])
            index += 2
            continue
        if arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        elif arg == "--offline":
            offline = True
        else:
            rest.append(arg)
        index += 1
    if not files:
        raise ConfigError("fetch needs --config FILE (a training or compare-labels config)")
    from wsss_pl.cli_errors import _missing_file_hint

    for file in files:
        if not Path(file).is_file():
            raise ConfigError(f"config file {file} does not exist{_missing_file_hint(file)}")
    from wsss_pl.weights import default_cache_dir, hub_offline

    config = load_config(files, rest)
    needs = config_needs(config, base_dir=Path(files[0]).resolve().parent)
    download = not (offline or hub_offline())
    found = find_all(needs, download=download, config_path=files[0])
    print(table(found))
    lines = problem_lines(found)
    cache = default_cache_dir().parent
    if lines:
        mode = "offline: nothing downloaded" if not download else "online"
        print(f"\n{len(lines)} of {len(found)} missing or unusable ({mode}):")
        for line in lines:
            print(f"  {line}")
        print(f"Then copy {cache} to the same path on the offline machine (or set WSSS_PL_CACHE).")
        return 2
    print(f"\nall {len(found)} in place; weights cache: {cache} (copy it to offline machines)")
    return 0
