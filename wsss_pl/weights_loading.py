"""Safe loading of checkpoint files: state dicts and Lightning training checkpoints with
``weights_only=True`` (or safetensors), never running pickled code, with one-line errors that
name the file. Re-exported by ``wsss_pl.weights``.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wsss_pl.errors import WeightsError
from wsss_pl.weights_registry import CHECKPOINTS

log = logging.getLogger(__name__)

# Keys under which trainers commonly nest a state dict, tried in this order.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "module")


def load_state_dict(path: str | Path, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors on the CPU without running pickled code.

    Uses ``torch.load(weights_only=True)`` (or safetensors for ``*.safetensors``), unwraps common
    containers (``{"state_dict": ...}``, ``{"model": ...}``, ...) or the one named by ``key``
    (dots descend: ``"ema.model"``), and strips DDP's ``module.`` prefixes. A missing, truncated or
    non-tensor-only file raises a WeightsError naming the path and what to do.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"checkpoint file {path} does not exist; check the path, or use a registry name "
            f"({', '.join(CHECKPOINTS)}) to download a known checkpoint"
        )
    loaded = _load(path)
    obj = _select(loaded, key, path) if key is not None else _unwrap(loaded, path)
    state: dict[str, torch.Tensor] = {}
    for name, value in obj.items():
        if isinstance(value, torch.Tensor):
            state[_strip_module(str(name))] = value
    if not state:
        raise WeightsError(
            f"{path} holds no tensors under the selected entry; its keys are "
            f"{_describe_keys(loaded)}: pass key= naming the entry that holds the state dict"
        )
    if len(state) < len(obj):
        log.debug("%s: ignored %d non-tensor entries", path, len(obj) - len(state))
    return state


def _load(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # SafetensorError, OSError: a damaged file either way
            raise WeightsError(
                f"{path} is not a readable safetensors file ({error}); it is truncated or "
                "damaged: download it again"
            ) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch words both cases "Weights only load failed"; only a disallowed global means the
        # file is intact but holds Python objects (random bytes fail on an unknown opcode).
        if "unsupported global" in str(error).lower():
            raise WeightsError(
                f"{path} contains pickled Python objects besides tensors, which wsss_pl refuses "
                "to load (weights_only=True: unpickling could run arbitrary code). If you trust "
                "the file, re-save just its tensors once, e.g. torch.save(torch.load(path, "
                "weights_only=False)['state_dict'], new_path), and pass new_path"
            ) from error
        raise WeightsError(_corrupt(path, error)) from error
    except Exception as error:  # torch raises RuntimeError/KeyError/EOFError... for bad files
        raise WeightsError(_corrupt(path, error)) from error


def _corrupt(path: Path, error: BaseException) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if first_line.startswith("Weights only load failed"):  # torch's advice there does not apply
        first_line = "not a valid checkpoint archive or pickle"
    return (
        f"{path} cannot be read as a PyTorch checkpoint ({first_line}); it is probably truncated "
        "or damaged (an interrupted download or copy): delete it and download or copy it again"
    )


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    for _ in range(4):  # nested containers, e.g. {"model": {"state_dict": ...}}
        if (
            isinstance(obj, Mapping)
            and obj
            and all(isinstance(v, torch.Tensor) for v in obj.values())
        ):
            return obj
        inner = next(
            (
                obj[k]
                for k in _CONTAINER_KEYS
                if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)
            ),
            None,
        )
        if inner is None:
            break
        obj = inner
    if _is_state_dict(obj):
        return obj
    raise WeightsError(
        f"{path} does not look like a state dict (keys: {_describe_keys(obj)}); "
        "pass key= naming the entry that holds it"
    )


def _select(obj: Any, key: str, path: Path) -> Mapping[str, Any]:
    if isinstance(obj, Mapping) and key in obj:
        selected = obj[key]
    else:
        selected = obj
        for part in key.split("."):
            if not isinstance(selected, Mapping) or part not in selected:
                raise WeightsError(
                    f"{path} has no entry {key!r}; its keys are {_describe_keys(obj)}"
                )
            selected = selected[part]
    if not isinstance(selected, Mapping):
        raise WeightsError(
            f"entry {key!r} of {path} is a {type(selected).__name__}, not a state dict"
        )
    return selected


def _describe_keys(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return f"(a {type(obj).__name__}, not a dict)"
    keys = [str(k) for k in obj]
    return ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")


def _strip_module(name: str) -> str:
    while name.startswith("module."):
        name = name[len("module.") :]
    return name


_CKPT_KEYWORDS = ("best", "last", "hpc", "registry")  # Lightning's names for checkpoints it finds


def load_training_checkpoint(path: str | Path) -> Mapping[str, Any] | None:
    """Read a ``--ckpt_path`` without unpickling code (tensors memory-mapped, not read) and check
    that it is a Lightning checkpoint; a one-line WeightsError naming the file otherwise.

    Returns None for Lightning's own names (``best``, ``last``...) and URLs, left to Lightning.
    """
    text = str(path)
    if text in _CKPT_KEYWORDS or text.startswith(_CKPT_KEYWORDS[3] + ":") or "://" in text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} (--ckpt_path) does not exist; check the path")
    try:
        checkpoint = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as error:
        if "unsupported global" in str(error).lower():
            raise WeightsError(
                f"checkpoint {path} (--ckpt_path) holds pickled Python objects besides tensors; "
                "wsss_pl refuses to unpickle them (that could run arbitrary code): pass a "
                "checkpoint written by wsss_pl fit"
            ) from None
        raise WeightsError(_not_a_checkpoint(path)) from None
    except Exception:  # truncated zip, not a pickle at all...
        raise WeightsError(_not_a_checkpoint(path)) from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"{path} (--ckpt_path) is not a checkpoint of wsss_pl fit (no 'state_dict'; its keys: "
            f"{_describe_keys(checkpoint)}); for pretrained backbone weights set "
            "model.net.init_args.pretrained instead"
        )
    return checkpoint


def _not_a_checkpoint(path: Path) -> str:
    return (
        f"{path} (--ckpt_path) cannot be read as a PyTorch checkpoint: it was not written by "
        "torch.save, or it is truncated; pass a checkpoint written by wsss_pl fit (*.ckpt)"
    )


def check_training_checkpoint(path: str | Path, model: torch.nn.Module) -> None:
    """``load_training_checkpoint`` plus: its tensors have the keys and shapes of ``model`` (the
    configured architecture); a one-line WeightsError naming the file and the mismatch."""
    checkpoint = load_training_checkpoint(path)
    if checkpoint is None:
        return
    state = checkpoint["state_dict"]
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in state
        and isinstance(state[k], torch.Tensor)
        and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = [
        f"{len(found)} {what} (e.g. {found[0]})"
        for what, found in (
            ("keys missing", missing),
            ("unexpected keys", unexpected),
            ("tensors of another shape", reshaped),
        )
        if found
    ]
    if problems:
        raise WeightsError(
            f"checkpoint {path} (--ckpt_path) was trained with another architecture: "
            + ", ".join(problems)
            + "; use the model settings it was trained with (its run_config.yaml, e.g. "
            "model.net.init_args.backbone and num_classes)"
        )


def unsafe_pickle_error(path: str | Path, error: BaseException) -> WeightsError | None:
    """A WeightsError for a weights file that ``torch.load(weights_only=True)`` refused, or None
    when ``error`` is not such a refusal (for loaders such as transformers' from_pretrained)."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    if "unsupported global" in str(error).lower():
        return WeightsError(
            f"{path} holds pickled Python objects besides tensors; wsss_pl refuses to unpickle "
            "them (that could run arbitrary code): use the model's model.safetensors, or a "
            "pytorch_model.bin of tensors only"
        )
    return WeightsError(_corrupt(Path(path), error))
