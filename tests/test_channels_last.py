"""SegmentationModule(channels_last=True): same outputs, conv weights in channels_last."""

from __future__ import annotations

import torch

from wsss_pl.models.deeplab_v2 import DeepLabV2
from wsss_pl.module import SegmentationModule


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    net = DeepLabV2(num_classes=3, backbone="resnet18")
    plain = SegmentationModule(net, class_names=["a", "b"]).eval()
    images = torch.randn(2, 3, 41, 41)
    with torch.no_grad():
        reference = plain(images)
        fast = SegmentationModule(net, class_names=["a", "b"], channels_last=True).eval()
        output = fast(images)
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(output, reference, atol=1e-4, rtol=1e-4)
