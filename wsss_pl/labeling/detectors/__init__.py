"""Open-vocabulary detectors behind one interface (``detector:`` class_path in config).

- ``base``: the interface: ``DetectorSpec``, ``DetectorOptions``, ``Detections``.
- ``GroundingDinoSpec`` (``grounding_dino``; module ``grounding.GroundingDetector`` with its
  caption / phrase rules in ``prompt`` and BERT tokenizer in ``tokenizer``): Grounding DINO Swin-T
  (the paper's) / Swin-B; a plain string ``detector: grounding-dino-tiny`` is this spec with the
  same fingerprint. ``MMGroundingDinoSpec``: MM-Grounding-DINO through the same module.
- ``OwlV2Spec`` (``owlv2``): OWLv2, one text query per class phrase.
- ``OmDetTurboSpec`` (``omdet_turbo``): OmDet-Turbo, class phrases + a task prompt.
- ``Sam3Spec`` (``sam3``): SAM 3 text-prompted instance / semantic masks (no SAM runs after it).

A new model family is one module here with its spec (re-exported below).
"""

from wsss_pl.labeling.detectors.base import (
    TINY,
    Detections,
    DetectorOptions,
    DetectorSpec,
    check_batching,
    class_queries,
    concat_detections,
    model_directory_settings,
)
from wsss_pl.labeling.detectors.grounding_dino import GroundingDinoSpec, MMGroundingDinoSpec
from wsss_pl.labeling.detectors.omdet_turbo import OmDetTurboDetector, OmDetTurboSpec
from wsss_pl.labeling.detectors.owlv2 import OwlV2Detector, OwlV2Spec
from wsss_pl.labeling.detectors.sam3 import Sam3Detector, Sam3Spec

__all__ = [
    "TINY",
    "Detections",
    "DetectorOptions",
    "DetectorSpec",
    "GroundingDinoSpec",
    "MMGroundingDinoSpec",
    "OmDetTurboDetector",
    "OmDetTurboSpec",
    "OwlV2Detector",
    "OwlV2Spec",
    "Sam3Detector",
    "Sam3Spec",
    "check_batching",
    "class_queries",
    "concat_detections",
    "model_directory_settings",
]
