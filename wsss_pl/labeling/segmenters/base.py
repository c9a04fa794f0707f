"""The segmenter interface (``segmenter:`` class_path in config): ``SegmenterSpec``.

A ``SegmenterSpec`` is the config side: plain settings (LightningCLI schema), ``settings()`` for the
cache fingerprint, ``build()`` for the frozen module. Every built segmenter is called as
``segmenter(images, boxes)`` with B uint8 [3, H_i, W_i] images and B float [N_i, 4] xyxy pixel
boxes, and returns per image ``(masks bool [N_i, H_i, W_i], scores float32 [N_i])``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

from torch import nn

TINY = "tiny"
# A spec naming the tiny model is built by wsss_pl.labeling.tiny (no model module imports it).
TINY_BUILD = (
    "the tiny random model is built by wsss_pl.labeling.tiny.build_tiny_detector / "
    "build_tiny_segmenter (or wsss_pl.labeling.labeller_factory.build_detector / build_segmenter)"
)
ImageResize = Literal["pil", "tensor"]
SAM_IMAGE_SIZE = 1024


class SegmenterSpec(ABC):
    """Config of a box-prompted segmenter (see the module docstring for the call contract)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What changes the masks (weights hash, model type): part of the cache fingerprint."""

    @abstractmethod
    def build(self, encoder_batch_size: int = 4, image_resize: ImageResize = "tensor") -> nn.Module:
        """The frozen segmenter module, on the CPU (options as ``SamSegmenter``)."""
