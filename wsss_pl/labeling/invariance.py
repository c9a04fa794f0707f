"""What makes a batched label bit-identical to a label made alone: fixed shapes, a per-image
softmax shift in Grounding DINO, deterministic kernels, and a fingerprint of what still changes bits.

Measured causes of batch-dependent bits (CPU, torch 2.14, tiny and ViT-B-shaped models):
- convolution and matrix-product kernels are chosen by batch size: every forward runs at one
  fixed batch size (short batches padded with zero rows);
- transformers' ``GroundingDinoBiMultiHeadAttention`` subtracts ``attn_weights.max()`` taken over
  the WHOLE batch before its softmax, so one image's scores depend on the others:
  ``per_image_bi_attention`` runs that module image by image (the stock module at batch 1);
- a caption padded to the longest of its batch changes the text length: captions are padded to
  one fixed token length;
- MKL's GEMM may depend on a row's memory position: ``MKL_CBWR`` pins its code path (it must be
  set before torch loads MKL, see ``wsss_pl/__init__.py``);
- the CPU thread count and the GPU model / library versions change bits: the labelling thread
  count is fixed on CPU, and the device and versions go into the cache fingerprint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from importlib import metadata
from typing import Any, Literal

import torch
from torch import Tensor, nn

BatchMode = Literal["fixed", "per_image", "free"]
BATCH_MODES: tuple[str, ...] = ("fixed", "per_image", "free")
# Fixed token length of every caption in ``fixed`` mode: Grounding DINO's maximum text length.
CAPTION_TOKENS = 256


class PerImageBiAttention(nn.Module):
    """Marker base: a ``GroundingDinoBiMultiHeadAttention`` whose forward runs image by image.

    The stock module shifts its logits by one maximum over the whole batch; here every image
    gets its own shift, i.e. exactly what the stock module computes for a batch of one.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 (see class docstring)
        stock = super().forward  # type: ignore[misc]
        batch = _batch_size(args, kwargs)
        if batch is None or batch <= 1:
            return stock(*args, **kwargs)
        rows = [
            stock(*_row(args, i), **{k: _row(v, i) for k, v in kwargs.items()})
            for i in range(batch)
        ]
        return _cat(rows)


def per_image_bi_attention(model: nn.Module) -> int:
    """Swap every ``GroundingDinoBiMultiHeadAttention`` (and MM-Grounding-DINO's copy of it) in
    ``model`` for its per-image variant (same weights, same module; only the class changes).
    Returns how many were swapped."""
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        GroundingDinoBiMultiHeadAttention,
    )
    from transformers.models.mm_grounding_dino.modeling_mm_grounding_dino import (
        MMGroundingDinoBiMultiHeadAttention,
    )

    patched = {
        stock: type(f"PerImage{stock.__name__}", (PerImageBiAttention, stock), {})
        for stock in (GroundingDinoBiMultiHeadAttention, MMGroundingDinoBiMultiHeadAttention)
    }
    count = 0
    for module in model.modules():
        if type(module) in patched:
            module.__class__ = patched[type(module)]
            count += 1
    return count


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None


def _row(value: Any, index: int) -> Any:
    if isinstance(value, Tensor) and value.dim() > 0:
        return value[index : index + 1]
    if isinstance(value, tuple):
        return tuple(_row(v, index) for v in value)
    return value


def _cat(rows: list[Any]) -> Any:
    first = rows[0]
    if isinstance(first, Tensor):
        return torch.cat(rows)
    if isinstance(first, tuple):
        return tuple(_cat([r[k] for r in rows]) for k in range(len(first)))
    return first  # None and other constants


@contextlib.contextmanager
def deterministic_labelling(device: torch.device, cpu_threads: int) -> Iterator[None]:
    """Deterministic kernels for one labelling call, restored afterwards (training may differ).

    CUDA: cuDNN benchmark off (its autotuner may pick another algorithm per run) and
    deterministic algorithms on. CPU: exactly ``cpu_threads`` intra-op threads.
    """
    if device.type == "cuda":
        saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device | str, cpu_threads: int) -> dict[str, Any]:
    """What, besides the settings, changes a label's bits: device model, thread count, library
    versions (a cache made elsewhere is never mixed with labels made here)."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "device_type": device.type,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "segment_anything": _version("segment-anything"),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        info["device_name"] = torch.cuda.get_device_name(index)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    else:
        info["device_name"] = torch.backends.cpu.get_cpu_capability()
        info["cpu_threads"] = cpu_threads
        info["mkl_cbwr"] = os.environ.get("MKL_CBWR")
    return info


def padded_rows(count: int, batch_size: int) -> int:
    """Rows of the last forward that are padding when ``count`` rows run ``batch_size`` at a time."""
    return (-count) % batch_size
