"""Box -> mask segmenters behind one interface (``segmenter:`` class_path in config).

- ``base``: the interface, ``SegmenterSpec`` (call contract in its docstring).
- ``SamSpec`` (``sam``: ``SamSegmenter``; ``sam_fast``: its SDPA / compiled encoder):
  segment-anything SAM, the default, unchanged.
- ``HQSamSpec`` (``hq_sam``): HQ-SAM.
- ``Sam2Spec`` (``sam2``: ``Sam2Segmenter``): SAM 2.1 through transformers;
  ``Sam3TrackerSpec``: SAM 3's box-promptable branch through the same module (SAM 3 refining
  another detector's boxes).

A new model family is one module here with its spec (re-exported below); its tiny random model
for tests goes into ``wsss_pl.labeling.tiny`` (no module here imports it).
"""

from wsss_pl.labeling.segmenters.base import TINY, ImageResize, SegmenterSpec
from wsss_pl.labeling.segmenters.hq_sam import HQSamSegmenter, HQSamSpec
from wsss_pl.labeling.segmenters.sam import SamSegmenter, SamSpec
from wsss_pl.labeling.segmenters.sam2 import (
    Sam2Segmenter,
    Sam2Spec,
    Sam3TrackerSpec,
    sam2_processor,
)

__all__ = [
    "TINY",
    "HQSamSegmenter",
    "HQSamSpec",
    "ImageResize",
    "Sam2Segmenter",
    "Sam2Spec",
    "Sam3TrackerSpec",
    "SamSegmenter",
    "SamSpec",
    "SegmenterSpec",
    "sam2_processor",
]
