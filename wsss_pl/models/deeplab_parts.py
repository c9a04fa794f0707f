"""DeepLab-v2's building blocks: the torchvision ResNets it can use, the dilation of a ResNet
stage (output stride 8 or 16), the MSRA / Caffe stage layout, and the ASPP head. Used by
``wsss_pl.models.deeplab_v2.DeepLabV2``, which re-exports them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torchvision import models

_BACKBONES: dict[str, Callable[..., models.ResNet]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
    "resnet101": models.resnet101,
}

# Which stride-2 stages become stride-1 and with what dilation, per output stride.
_STAGE_DILATION: dict[int, dict[str, int]] = {8: {"layer3": 2, "layer4": 4}, 16: {"layer4": 2}}


def dilate_stage(stage: nn.Sequential, dilation: int) -> None:
    """Make a ResNet stage stride 1 and dilate all its 3x3 convs by ``dilation`` (in place).

    Every block of the stage gets the same dilation, as in DeepLab-v2 and its Caffe models
    (torchvision's ``replace_stride_with_dilation`` keeps the previous dilation in the first block
    and refuses BasicBlock ResNets). padding = dilation keeps the map size; the 1x1 shortcut conv
    only loses its stride. Works for BasicBlock and Bottleneck stages.
    """
    for block in stage:
        if hasattr(block, "stride"):
            block.stride = 1  # informative only, torchvision blocks do not read it in forward
        for module in block.modules():
            if not isinstance(module, nn.Conv2d):
                continue
            module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation = (dilation, dilation)
                module.padding = (dilation, dilation)


def caffe_style_stage(stage: nn.Sequential) -> None:
    """Move a Bottleneck stage's stride from the 3x3 conv to the first 1x1 (MSRA/Caffe ResNet).

    Only the first block strides; its shortcut conv keeps its stride. In place.
    """
    for block in stage:
        if not isinstance(block, models.resnet.Bottleneck):
            raise ValueError("backbone_style 'caffe' needs a Bottleneck ResNet (resnet50/101)")
        stride = block.conv2.stride
        if stride != (1, 1):
            block.conv2.stride = (1, 1)
            block.conv1.stride = stride


class ASPP(nn.Module):
    """DeepLab-v2 ASPP: one 3x3 conv per rate straight to class logits, outputs summed.

    Input float [B, in_channels, h, w] -> logits float [B, num_classes, h, w].
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        if not rates or any(int(r) < 1 for r in rates):
            raise ValueError(f"atrous rates must be a non-empty list of ints >= 1, got {rates!r}")
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=int(r), dilation=int(r), bias=True)
            for r in rates
        )
        for conv in self.convs:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out
