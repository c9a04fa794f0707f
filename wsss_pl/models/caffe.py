"""DeepLab-v2's Caffe weights without Caffe: a protobuf wire-format reader and key mapping.

``read_caffemodel`` parses a binary ``NetParameter`` (``*.caffemodel``) into layers with their
blobs; ``caffe_to_torchvision_keys`` and ``deeplab_pytorch_to_torchvision_keys`` rename the
weights of the official DeepLab-v2 ResNet-101 (``init.caffemodel``, ``train*_iter_20000``) and of
kazuto1011/deeplab-pytorch's ``convert.py`` output to DeepLabV2's torchvision-style keys
(``backbone.layer3.0.conv1.weight``, ``classifier.convs.0.weight``).

Facts of those weights the model must honour (``DeepLabV2(backbone_style="caffe")``): the MSRA
ResNet strides in the first 1x1 conv of a block (``branch2a``), not the 3x3; the stem max-pool
rounds up (Caffe's ceil); BatchNorm eps 1e-5 with the statistics stored as sums to divide by a
third "scale factor" blob, and a separate Scale layer holding gamma/beta; inputs are BGR 0..255
minus the Caffe mean. ``init.caffemodel`` is DeepLab's COCO-trained model (91 classes, a 1x1
classifier that DeepLab-v2 does not reuse: its ASPP ``fc1_voc12_c0..3`` starts from scratch).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from wsss_pl.errors import WeightsError

# Caffe's mean pixel in BGR order (DeepLab-v2 prototxts' ``mean_value``).
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)

# caffe.proto field numbers used here.
_NET_LAYER, _NET_V1_LAYERS = 100, 2
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS, _LAYER_BN_PARAM = 1, 2, 7, 139
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_SHAPE_DIM = 1
_BN_EPS = 3


@dataclass
class CaffeLayer:
    """One ``LayerParameter``: name, type, blobs (float32 arrays in their Caffe shapes)."""

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)
    bn_eps: float | None = None  # BatchNormParameter.eps when set


# ---------------------------------------------------------------------------- wire format


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of a message: ints for varint/fixed, views for bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 1:
            if pos + 8 > len(buf):
                raise ValueError("truncated fixed64")
            yield number, wire, buf[pos : pos + 8]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError(f"field {number}: length {length} runs past the message end")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise ValueError("truncated fixed32")
            yield number, wire, buf[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"field {number}: unsupported wire type {wire}")


def _packed_varints(view: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(view):
        value, pos = _varint(view, pos)
        values.append(value)
    return values


def _parse_blob(buf: memoryview) -> np.ndarray:
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    dims: list[int] = []
    legacy = {_BLOB_NUM: 0, _BLOB_CHANNELS: 0, _BLOB_HEIGHT: 0, _BLOB_WIDTH: 0}
    for number, wire, value in _fields(buf):
        if number == _BLOB_DATA:
            if wire in (2, 5):  # packed (what Caffe writes) or one unpacked float
                floats.append(np.frombuffer(value, dtype="<f4"))
        elif number == _BLOB_DOUBLE_DATA:
            if wire in (1, 2):
                doubles.append(np.frombuffer(value, dtype="<f8"))
        elif number == _BLOB_SHAPE and wire == 2:
            for sub_number, sub_wire, sub_value in _fields(value):
                if sub_number == _SHAPE_DIM:
                    if sub_wire == 2:
                        dims.extend(_packed_varints(sub_value))
                    elif sub_wire == 0:
                        dims.append(int(sub_value))
        elif number in legacy and wire == 0:
            legacy[number] = int(value)
    data = np.concatenate(floats) if floats else np.concatenate(doubles) if doubles else None
    if data is None:
        data = np.zeros(0, dtype=np.float32)
    if not dims and any(legacy.values()):
        dims = [legacy[k] for k in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH)]
        while len(dims) > 1 and dims[0] == 1 and int(np.prod(dims)) == data.size:
            dims = dims[1:]  # legacy 4-d blobs pad vectors with leading 1s
    if not dims:
        dims = [data.size]
    if int(np.prod(dims)) != data.size:
        raise ValueError(f"blob of shape {dims} holds {data.size} values")
    return data.astype(np.float32).reshape(dims)


def _parse_layer(buf: memoryview) -> CaffeLayer:
    layer = CaffeLayer(name="", type="")
    for number, wire, value in _fields(buf):
        if wire != 2:
            continue
        if number == _LAYER_NAME:
            layer.name = bytes(value).decode("utf-8")
        elif number == _LAYER_TYPE:
            layer.type = bytes(value).decode("utf-8")
        elif number == _LAYER_BLOBS:
            layer.blobs.append(_parse_blob(value))
        elif number == _LAYER_BN_PARAM:
            for sub_number, sub_wire, sub_value in _fields(value):
                if sub_number == _BN_EPS and sub_wire == 5:
                    layer.bn_eps = struct.unpack("<f", sub_value)[0]
    return layer


def read_caffemodel(path: str | Path) -> list[CaffeLayer]:
    """Layers of a binary Caffe ``NetParameter`` file, in file order.

    Raises WeightsError naming ``path`` for an unreadable or malformed file, and for old-format
    (V1 ``layers``) models, which DeepLab-v2's releases are not.
    """
    path = Path(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as error:
        raise WeightsError(f"cannot read caffemodel {path}: {error}") from error
    layers: list[CaffeLayer] = []
    has_v1 = False
    try:
        for number, wire, value in _fields(data):
            if number == _NET_LAYER and wire == 2:
                layers.append(_parse_layer(value))
            elif number == _NET_V1_LAYERS and wire == 2:
                has_v1 = True
    except (ValueError, UnicodeDecodeError) as error:
        raise WeightsError(
            f"{path} is not a valid caffemodel ({error}); it is truncated or damaged: download "
            "it again"
        ) from error
    if not layers:
        hint = (
            "it uses the old V1 'layers' format; upgrade it with Caffe's upgrade_net_proto_binary"
            if has_v1
            else "it holds no layers: not a caffemodel, or damaged"
        )
        raise WeightsError(f"{path}: no Caffe layers found ({hint})")
    return layers


# ---------------------------------------------------------------------------- key mapping

# res4b22_branch2a / bn4b22_branch2a / scale4b22_branch2a (also res2a_branch1 ...).
_BLOCK = re.compile(r"^(res|bn|scale)([2-5])([a-z])(\d*)_branch(1|2a|2b|2c)$")
# ASPP classifiers: fc1_voc12_c0 .. c3 (any dataset tag).
_ASPP = re.compile(r"^fc\d*_\w+_c(\d+)$")
_BRANCH = {"1": "downsample.{}", "2a": "{}1", "2b": "{}2", "2c": "{}3"}
# Layers of the MSC copies (shared parameters) in the released MSC caffemodels.
_MSC_COPIES = ("res075", "res05")


def _block_index(letter: str, number: str) -> int:
    if number:
        return int(number)  # res4b1 -> block 1 (a is block 0)
    return ord(letter) - ord("a")  # res2a, res2b, res2c -> 0, 1, 2


def _module_of(name: str) -> tuple[str, str] | None:
    """Caffe layer name -> (torchvision module path, 'conv' | 'bn'), None if not a backbone layer."""
    if name == "conv1":
        return "backbone.conv1", "conv"
    if name in ("bn_conv1", "scale_conv1"):
        return "backbone.bn1", "bn"
    match = _BLOCK.match(name)
    if match is None:
        return None
    kind, stage, letter, number, branch = match.groups()
    prefix = f"backbone.layer{int(stage) - 1}.{_block_index(letter, number)}."
    if branch == "1":
        return prefix + ("downsample.0" if kind == "res" else "downsample.1"), (
            "conv" if kind == "res" else "bn"
        )
    part = "conv" if kind == "res" else "bn"
    return prefix + _BRANCH[branch].format(part), part


def caffe_to_torchvision_keys(
    layers: list[CaffeLayer], source: str | Path = "caffemodel"
) -> tuple[dict[str, Tensor], list[str]]:
    """Map DeepLab-v2 Caffe layers to DeepLabV2 keys; returns (state dict, skipped layer names).

    Convolution -> ``weight`` (and ``bias``); BatchNorm -> ``running_mean``/``running_var``
    divided by its scale-factor blob (Caffe stores running sums); Scale -> BN ``weight``/``bias``;
    ``fc*_c<i>`` -> ``classifier.convs.<i>``. MSC copies (``*res075*``, ``*res05*``) and layers
    without blobs are ignored; other layers with blobs (e.g. the COCO 1x1 classifier) are
    returned as skipped.
    """
    state: dict[str, Tensor] = {}
    skipped: list[str] = []
    for layer in layers:
        if not layer.blobs or any(tag in layer.name for tag in _MSC_COPIES):
            continue
        blobs = [torch.from_numpy(np.ascontiguousarray(b)) for b in layer.blobs]
        aspp = _ASPP.match(layer.name)
        if aspp is not None:
            key = f"classifier.convs.{aspp.group(1)}"
            state[key + ".weight"] = blobs[0]
            if len(blobs) > 1:
                state[key + ".bias"] = blobs[1].reshape(-1)
            continue
        target = _module_of(layer.name)
        if target is None:
            skipped.append(layer.name)
            continue
        module, _ = target
        if layer.type == "Convolution":
            state[module + ".weight"] = blobs[0]
            if len(blobs) > 1:
                state[module + ".bias"] = blobs[1].reshape(-1)
        elif layer.type == "BatchNorm":
            if len(blobs) != 3:
                raise WeightsError(
                    f"{source}: BatchNorm layer {layer.name} has {len(blobs)} blobs, expected 3 "
                    "(mean, variance, scale factor)"
                )
            factor = float(blobs[2].reshape(-1)[0])
            inverse = 0.0 if factor == 0 else 1.0 / factor  # Caffe's own rule
            state[module + ".running_mean"] = blobs[0].reshape(-1) * inverse
            state[module + ".running_var"] = blobs[1].reshape(-1) * inverse
            if layer.bn_eps is not None and abs(layer.bn_eps - 1e-5) > 1e-9:
                raise WeightsError(
                    f"{source}: BatchNorm {layer.name} has eps {layer.bn_eps}; DeepLabV2 uses "
                    "1e-5 like DeepLab-v2's models"
                )
        elif layer.type == "Scale":
            state[module + ".weight"] = blobs[0].reshape(-1)
            if len(blobs) > 1:
                state[module + ".bias"] = blobs[1].reshape(-1)
        else:
            skipped.append(layer.name)
    return state, skipped


# kazuto1011/deeplab-pytorch names: layer1.conv1.{conv,bn} (stem), layer{2..5}.block{k}.
# {reduce,conv3x3,increase,shortcut}.{conv,bn}, aspp.c{i} (DeepLabV2) or fc (DeepLabV1 COCO).
_DLP_STEM = re.compile(r"^layer1\.conv1\.(conv|bn)\.(.+)$")
_DLP_BLOCK = re.compile(
    r"^layer([2-5])\.block(\d+)\.(reduce|conv3x3|increase|shortcut)\.(conv|bn)\.(.+)$"
)
_DLP_ASPP = re.compile(r"^aspp\.c(\d+)\.(weight|bias)$")
_DLP_PART = {"reduce": "{}1", "conv3x3": "{}2", "increase": "{}3"}
DEEPLAB_PYTORCH_STEM = "layer1.conv1.conv.weight"


def is_deeplab_pytorch(state: Mapping[str, Tensor]) -> bool:
    """Whether a state dict uses deeplab-pytorch's names (its stem key, any prefix)."""
    return any(key.endswith(DEEPLAB_PYTORCH_STEM) for key in state)


def deeplab_pytorch_to_torchvision_keys(
    state: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename a deeplab-pytorch state dict (``base.``/``module.`` prefixes allowed) to DeepLabV2
    keys; returns (state dict, skipped keys such as the COCO ``fc.*`` classifier)."""
    stems = [k for k in state if k.endswith(DEEPLAB_PYTORCH_STEM)]
    prefix = min(stems, key=len)[: -len(DEEPLAB_PYTORCH_STEM)] if stems else ""
    mapped: dict[str, Tensor] = {}
    skipped: list[str] = []
    for full_key, value in state.items():
        if not full_key.startswith(prefix):
            skipped.append(full_key)
            continue
        key = full_key[len(prefix) :]
        if match := _DLP_STEM.match(key):
            kind, param = match.groups()
            mapped[f"backbone.{'conv1' if kind == 'conv' else 'bn1'}.{param}"] = value
        elif match := _DLP_BLOCK.match(key):
            stage, block, part, kind, param = match.groups()
            base = f"backbone.layer{int(stage) - 1}.{int(block) - 1}."
            if part == "shortcut":
                module = "downsample.0" if kind == "conv" else "downsample.1"
            else:
                module = _DLP_PART[part].format(kind)
            mapped[f"{base}{module}.{param}"] = value
        elif match := _DLP_ASPP.match(key):
            mapped[f"classifier.convs.{match.group(1)}.{match.group(2)}"] = value
        else:
            skipped.append(full_key)
    return mapped, skipped
