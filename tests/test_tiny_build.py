"""A spec's ``tiny`` model is built one layer up (``labeller_factory`` -> ``wsss_pl.labeling.tiny``):
spec modules refuse ``tiny`` with a line naming the builder, and a spec without a tiny model is a
clear error rather than another family's model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from wsss_pl.labeling.detectors import (
    DetectorOptions,
    DetectorSpec,
    GroundingDinoSpec,
    MMGroundingDinoSpec,
    OmDetTurboSpec,
    OwlV2Spec,
)
from wsss_pl.labeling.detectors.sam3 import Sam3Spec
from wsss_pl.labeling.labeller_factory import build_detector, build_segmenter
from wsss_pl.labeling.segmenters import (
    HQSamSegmenter,
    HQSamSpec,
    Sam2Spec,
    Sam3TrackerSpec,
    SamSpec,
)
from wsss_pl.labeling.tiny import build_tiny_detector, is_tiny, tiny_hq_sam

DETECTORS = [GroundingDinoSpec, MMGroundingDinoSpec, OwlV2Spec, OmDetTurboSpec, Sam3Spec]


@pytest.mark.parametrize("spec_class", DETECTORS, ids=lambda c: c.__name__)
def test_detector_spec_refuses_to_build_tiny_itself(spec_class: type) -> None:
    with pytest.raises(ValueError, match="build_tiny_detector"):
        spec_class("tiny").build(DetectorOptions())


@pytest.mark.parametrize(
    "spec",
    [
        SamSpec(checkpoint="tiny"),
        HQSamSpec(checkpoint="tiny"),
        Sam2Spec("tiny"),
        Sam3TrackerSpec("tiny"),
    ],
    ids=["sam", "hq_sam", "sam2", "sam3_tracker"],
)
def test_segmenter_spec_refuses_to_build_tiny_itself(spec: Any) -> None:
    with pytest.raises(ValueError, match="build_tiny_segmenter"):
        spec.build()


def test_is_tiny_reads_model_or_checkpoint() -> None:
    assert is_tiny(OwlV2Spec("tiny")) and is_tiny(HQSamSpec(checkpoint="tiny"))
    assert not is_tiny(OwlV2Spec("owlv2-base")) and not is_tiny(SamSpec(checkpoint="sam_vit_b"))


def test_factory_builds_the_family_tiny_model() -> None:
    """HQ-SAM's tiny model through the factory is HQ-SAM's wrapper with tiny_hq_sam's weights."""
    built = build_segmenter(HQSamSpec(checkpoint="tiny"), encoder_batch_size=1)
    assert type(built) is HQSamSegmenter
    reference = tiny_hq_sam().state_dict()
    state = built.sam.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)


class _NoTinySpec(DetectorSpec):
    model = "tiny"

    def settings(self) -> dict[str, Any]:
        return {}

    def build(self, options: DetectorOptions) -> nn.Module:
        raise AssertionError("not called for tiny")

    def input_size(self, height: int, width: int, options: DetectorOptions) -> tuple[int, int]:
        return height, width

    def detector_kwargs(self, options: DetectorOptions) -> dict[str, Any]:
        return {}


def test_a_spec_without_a_tiny_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no tiny model for the detector _NoTinySpec"):
        build_tiny_detector(_NoTinySpec(), DetectorOptions())
    with pytest.raises(ValueError, match="no tiny model"):
        build_detector(_NoTinySpec(), DetectorOptions())
