"""Reading DeepLab-v2's pretrained weights: a registry name or file (torchvision state dict,
deeplab-pytorch conversion, Caffe ``.caffemodel``) -> tensors under DeepLabV2's key names, their
layout and backbone style. Used by ``wsss_pl.models.deeplab_v2.DeepLabV2``, which re-exports them."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from wsss_pl.errors import WeightsError
from wsss_pl.models.caffe import (
    caffe_to_torchvision_keys,
    deeplab_pytorch_to_torchvision_keys,
    is_deeplab_pytorch,
    read_caffemodel,
)

# The logger of DeepLabV2, whose loading messages these are (tests and users filter on it).
log = logging.getLogger("wsss_pl.models.deeplab_v2")

# Checkpoint layouts whose weights are Caffe's (MSRA ResNet, BGR 0..255 minus mean inputs).
_CAFFE_LAYOUTS = ("caffe", "deeplab_pytorch")

# Registry names whose file is a caffemodel (also recognised by the .caffemodel suffix).
_CAFFE_NAMES = ("deeplabv2_coco_init",)

_STEM_KEY = "conv1.weight"


def _preview(keys: Sequence[str], limit: int = 8) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_style(caffe_weights: bool, backbone_style: str, path: Any) -> None:
    if caffe_weights != (backbone_style == "caffe"):
        raise WeightsError(
            f"checkpoint {path} holds {'Caffe (MSRA)' if caffe_weights else 'torchvision'}-style "
            f"ResNet weights but this DeepLabV2 has backbone_style {backbone_style!r}: "
            f"set backbone_style: {'caffe' if caffe_weights else 'torchvision'} (or auto)"
        )


def _is_caffemodel(path: str | Path) -> bool:
    return str(path) in _CAFFE_NAMES or str(path).endswith(".caffemodel")


def _read_pretrained(path: str | Path) -> tuple[dict[str, Tensor], str, bool, bool, str | Path]:
    """Read and rename weights: (DeepLabV2-keyed state, layout, Caffe-style backbone,
    Caffe BGR input, path). Layouts: torchvision, deeplab, deeplab_pytorch, caffe."""
    if _is_caffemodel(path):
        from wsss_pl.weights import resolve_checkpoint

        layers = read_caffemodel(resolve_checkpoint(path))
        state, skipped = caffe_to_torchvision_keys(layers, path)
        if skipped:
            log.info("caffemodel %s: layers not used by DeepLabV2: %s", path, _preview(skipped))
        if not state:
            raise WeightsError(
                f"caffemodel {path}: no layer has a DeepLab-v2 ResNet name (conv1, res2a_branch1, "
                f"bn_conv1, fc1_*_c0 ...); its layers start with {[la.name for la in layers[:5]]}"
            )
        return state, "caffe", True, True, path
    raw = _read_state_dict(path)
    if is_deeplab_pytorch(raw):
        state, skipped = deeplab_pytorch_to_torchvision_keys(raw)
        if skipped:
            log.info("checkpoint %s: keys not used by DeepLabV2: %s", path, _preview(skipped))
        return state, "deeplab_pytorch", True, True, path
    state, layout = _to_model_keys(raw, path)
    caffe_style = layout == "deeplab" and int(state.get("caffe_backbone", 0)) == 1
    caffe_input = layout == "deeplab" and int(state.get("caffe_input", 0)) == 1
    return state, layout, caffe_style, caffe_input, path


def _read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load a checkpoint (a path, or a registry name such as ``resnet101_imagenet`` that is
    downloaded with its checksum when missing) on the CPU without unpickling code."""
    from wsss_pl.weights import load_state_dict, resolve_checkpoint

    try:
        obj: Any = load_state_dict(resolve_checkpoint(path))
    except WeightsError:
        raise
    except Exception as exc:  # torch.load raises many types on corrupt or pickled-code files
        raise WeightsError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from exc

    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):  # Lightning / common training-script layouts
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not state:
        raise WeightsError(f"checkpoint {path} contains no tensors")
    return state


def _to_model_keys(state: Mapping[str, Tensor], path: str | Path) -> tuple[dict[str, Tensor], str]:
    """Rename checkpoint keys to DeepLabV2 keys; returns (state, "deeplab" | "torchvision").

    The stem conv (``[prefix]conv1.weight`` outside any stage) anchors the layout: a prefix ending
    in ``backbone.`` means a DeepLabV2 state dict, anything else a torchvision ResNet.
    """
    stems = [k for k in state if k.endswith(_STEM_KEY) and "layer" not in k]
    if not stems:
        raise WeightsError(
            f"checkpoint {path}: no ResNet stem ('conv1.weight' or 'backbone.conv1.weight') "
            f"found, so nothing matches DeepLabV2; its keys start with {list(state)[:5]}"
        )
    prefix = min(stems, key=len)[: -len(_STEM_KEY)]
    if prefix.endswith("backbone."):
        outer = prefix[: -len("backbone.")]
        return {k[len(outer) :]: v for k, v in state.items() if k.startswith(outer)}, "deeplab"
    return {
        "backbone." + k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and not k[len(prefix) :].startswith("fc.")
    }, "torchvision"
