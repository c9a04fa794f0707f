"""Known checkpoints (URL, sha256), cached downloads, hub models, and safe state-dict loading.

This module resolves names and downloads; the registry data lives in
``wsss_pl.weights_registry`` and safe loading in ``wsss_pl.weights_loading``, both re-exported
here so ``wsss_pl.weights.<name>`` keeps working.

A checkpoint is named either by a path (used as is) or by a registry name such as ``sam_vit_h``,
which resolves to ``<cache>/<filename>``, downloaded and verified when missing. Grounding DINO comes
from the Hugging Face hub as a model directory. Loading always uses ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import zipfile
from pathlib import Path

from wsss_pl.download import (
    download_file,
    file_sha256,
    read_sha256_sidecar,
    write_sha256_sidecar,
)
from wsss_pl.errors import WeightsError
from wsss_pl.weights_loading import (  # noqa: F401  (re-exported)
    check_training_checkpoint,
    load_state_dict,
    load_training_checkpoint,
    unsafe_pickle_error,
)
from wsss_pl.weights_registry import CHECKPOINTS, HUB_MODELS, Checkpoint, HubModel

log = logging.getLogger(__name__)

CACHE_ENV = "WSSS_PL_CACHE"


def default_cache_dir() -> Path:
    """``$WSSS_PL_CACHE/checkpoints``, else ``${XDG_CACHE_HOME:-~/.cache}/wsss_pl/checkpoints``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "checkpoints"
    return (
        Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
        / "wsss_pl"
        / "checkpoints"
    )


def _known_names() -> str:
    return ", ".join(f"{name} ({c.description})" for name, c in CHECKPOINTS.items())


def resolve_checkpoint(
    name_or_path: str | Path, cache_dir: str | Path | None = None, download: bool = True
) -> Path:
    """Path of a checkpoint given as an existing path or as a registry name.

    A registry name resolves to ``cache_dir / filename`` (default :func:`default_cache_dir`);
    a missing or damaged file is downloaded and verified when ``download`` is true, otherwise a
    WeightsError says which URL to fetch and exactly where to put it.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        return candidate
    checkpoint = CHECKPOINTS.get(str(name_or_path))
    if checkpoint is None:
        raise WeightsError(
            f"checkpoint {str(name_or_path)!r} is neither an existing file nor a known name; "
            f"pass the path of a checkpoint file or one of: {_known_names()}"
        )
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = target / checkpoint.filename
    if target.is_file():
        digest = checkpoint_fingerprint(target)
        if checkpoint.matches(digest):
            return target
        if not download:
            raise WeightsError(
                f"{target} has sha256 {digest} but {checkpoint.name} must have "
                f"{checkpoint.expected}: "
                f"the file is damaged or a different version; delete it and download "
                f"{checkpoint.url} again (or allow downloading)"
            )
        log.warning("%s fails its checksum; downloading %s again", target, checkpoint.url)
    elif not download:
        extract = (
            f", extract {checkpoint.archive_member} from it"
            if checkpoint.archive_member is not None
            else ""
        )
        raise WeightsError(
            f"checkpoint {checkpoint.name} ({checkpoint.description}) is not at {target} and "
            f"downloading is off: download {checkpoint.url} on a machine with internet access"
            f"{extract} and put it at exactly {target} ({checkpoint.expected}), or pass the file's "
            "path instead of the name"
        )
    if checkpoint.archive_member is not None:
        return _download_member(checkpoint, target)
    path = download_file(
        checkpoint.url,
        target,
        sha256=checkpoint.sha256,
        sha256_prefix=checkpoint.sha256_prefix,
        error_type=WeightsError,
    )
    if checkpoint.unverified:
        log.warning(
            "%s: %s; its sha256 is %s", path, checkpoint.expected, checkpoint_fingerprint(path)
        )
    return path


def _download_member(checkpoint: Checkpoint, target: Path) -> Path:
    """Download ``checkpoint``'s zip next to ``target`` (resumable, with progress), extract its
    ``archive_member`` to ``target`` atomically, then delete the zip."""
    member = str(checkpoint.archive_member)
    archive = target.with_name(target.name + ".zip")
    download_file(checkpoint.url, archive, error_type=WeightsError)
    part = target.with_name(target.name + ".extracting")
    try:
        with (
            zipfile.ZipFile(archive) as zipped,
            zipped.open(member) as source,
            part.open("wb") as out,
        ):
            shutil.copyfileobj(source, out, 1 << 20)
    except KeyError as error:
        part.unlink(missing_ok=True)
        raise WeightsError(
            f"{archive} (from {checkpoint.url}) has no member {member!r}: the release changed; "
            f"put the file at {target} by hand"
        ) from error
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        part.unlink(missing_ok=True)
        archive.unlink(missing_ok=True)  # a damaged archive: the next call downloads it again
        raise WeightsError(
            f"cannot extract {member} from {archive} ({error}); the download is damaged and was "
            "deleted: run again to download it anew"
        ) from error
    digest = file_sha256(part)
    if not checkpoint.matches(digest):
        part.unlink(missing_ok=True)
        raise WeightsError(
            f"{member} from {checkpoint.url} has sha256 {digest}, expected {checkpoint.expected}"
        )
    os.replace(part, target)
    write_sha256_sidecar(target, digest)
    archive.unlink(missing_ok=True)
    archive.with_name(archive.name + ".sha256").unlink(missing_ok=True)  # download_file's record
    if checkpoint.unverified:
        log.warning("%s: %s; its sha256 is %s", target, checkpoint.expected, digest)
    return target


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}
_FINGERPRINTS_LOCK = threading.Lock()


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 of a checkpoint file, hashed at most once per (path, size, mtime).

    Memoised in the process and recorded in a ``<file>.sha256`` sidecar, so a 2.5 GB SAM file is
    read once, not on every run that fingerprints the pseudo-label cache.
    """
    path = Path(path).expanduser().resolve()
    try:
        info = path.stat()
    except OSError as error:
        raise WeightsError(f"cannot fingerprint checkpoint {path}: {error}") from error
    key = (str(path), info.st_size, info.st_mtime_ns)
    with _FINGERPRINTS_LOCK:
        cached = _FINGERPRINTS.get(key)
    if cached is not None:
        return cached
    digest = read_sha256_sidecar(path)
    if digest is None:
        digest = file_sha256(path)
        write_sha256_sidecar(path, digest)
    with _FINGERPRINTS_LOCK:
        _FINGERPRINTS[key] = digest
    return digest


def resolve_hub_model(
    name_or_dir: str | Path, download: bool = True, cache_dir: str | Path | None = None
) -> str:
    """Local directory of a transformers model given as a directory, registry name or hub id.

    A directory containing ``config.json`` is returned as is. Otherwise the name (a key of
    :data:`HUB_MODELS` or an ``owner/repo`` id) is fetched with
    ``huggingface_hub.snapshot_download`` into the hub cache (``cache_dir`` or the HF default); with ``download=False`` or
    ``HF_HUB_OFFLINE=1`` only the cache is used. Missing files raise a WeightsError that says how to
    fetch the model on another machine and which directory to pass instead.
    """
    directory = Path(name_or_dir).expanduser()
    if directory.is_dir():
        if (directory / "config.json").is_file():
            return str(directory)
        raise WeightsError(
            f"{directory} is not a model directory (no config.json); pass the folder that "
            "holds config.json and the weights, or a known model name: " + ", ".join(HUB_MODELS)
        )
    model = _hub_model(str(name_or_dir))
    fetched = hub_local_dir(model)  # where `wsss_pl fetch` puts it
    if all((fetched / name).is_file() for name in model.required_files):
        return str(fetched)
    offline = not download or hub_offline()
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            model.repo_id,
            revision=model.revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
            allow_patterns=[*model.required_files, *model.optional_files],
            local_files_only=offline,
        )
    except Exception as error:  # hub, network and offline-cache errors all mean the same to users
        reason = (
            "not in the wsss_pl cache nor in the Hugging Face cache"
            if offline
            else "the download from the hub failed"
        )
        if os.environ.get("WSSS_PL_DEBUG"):  # the library's own text only when asked for
            reason += f" ({type(error).__name__}: {_one_line(str(error))})"
        raise WeightsError(_hub_help(model, offline, reason)) from error
    missing = [name for name in model.required_files if not (Path(local) / name).is_file()]
    if missing:
        raise WeightsError(_hub_help(model, offline, f"{local} lacks {', '.join(missing)}"))
    return str(local)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network (then nothing is downloaded)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_local_dir(model: HubModel | str) -> Path:
    """``$WSSS_PL_CACHE/hub/<name>``: the folder ``wsss_pl fetch`` downloads a hub model into
    (``hf download REPO --local-dir`` layout) and where ``resolve_hub_model`` looks first.
    Known models use their registry name, other hub ids ``owner--repo``."""
    if isinstance(model, str):
        model = _hub_model(model)
    folder = model.name if model.name in HUB_MODELS else model.repo_id.replace("/", "--")
    return default_cache_dir().parent / "hub" / folder


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _hub_model(name: str) -> HubModel:
    if name in HUB_MODELS:
        return HUB_MODELS[name]
    for model in HUB_MODELS.values():
        if model.repo_id == name:
            return model
    if name.count("/") == 1 and all(name.split("/")):
        return HubModel(name=name, repo_id=name)
    raise WeightsError(
        f"unknown hub model {name!r}: not a directory, not an 'owner/repo' hub id, and not one of "
        + ", ".join(f"{key} ({m.repo_id})" for key, m in HUB_MODELS.items())
    )


def _hub_help(model: HubModel, offline: bool, reason: str) -> str:
    mode = "offline" if offline else "online"
    if model.gated:
        return (
            f"could not get hub model {model.repo_id} ({mode}): {reason.rstrip('.')}. "
            f"It is gated ({model.licence}): accept its licence at "
            f"https://huggingface.co/{model.repo_id}, then on a machine with internet run "
            f"`hf auth login && hf download {model.repo_id} --local-dir {hub_local_dir(model)}` "
            f"and copy that folder to the same path here, or pass its path instead of "
            f"{model.name!r}"
        )
    revision = f" --revision {model.revision}" if model.revision else ""
    return (
        f"could not get hub model {model.repo_id} ({mode}): {reason.rstrip('.')}. "
        f"Where there is internet run `hf download {model.repo_id}{revision} --local-dir "
        f"{hub_local_dir(model)}` (or `python -m wsss_pl fetch --config CONFIG`) and copy that "
        f"folder here, or pass a folder's path instead of {model.name!r}"
    )
