"""LR-ASPP MobileNetV3-Large (Howard et al. 2019): a light segmenter for deployment.

torchvision's model (3.2 M parameters and 4.2 GFLOP at 513x513, against 44.0 M and 379 GFLOP for
DeepLab-v2 R101 OS8, counted with torch.utils.flop_counter), wrapped to the interface ``SegmentationModule`` expects of a net: float normalised
images [B, 3, H, W] in, logits out (here already at the input size), ``num_classes`` and
``param_groups(lr, weight_decay)``.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor, nn
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from wsss_pl.errors import WeightsError

log = logging.getLogger(__name__)


class LRASPPMobileNetV3(nn.Module):
    """LR-ASPP on a dilated MobileNetV3-Large (output stride 16, low-level features at 8).

    Args:
        num_classes: output channels including background.
        pretrained: ImageNet MobileNetV3-Large backbone checkpoint: a registry name
            (``mobilenet_v3_large_imagenet``, downloaded with its checksum) or a path; None =
            random init.
        head_lr_mult: learning-rate multiplier of the LR-ASPP head (backbone 1x).
    """

    def __init__(
        self, num_classes: int = 21, pretrained: str | None = None, head_lr_mult: float = 10.0
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.head_lr_mult = head_lr_mult
        model = lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=num_classes
        )
        self.backbone = model.backbone
        self.classifier = model.classifier
        if pretrained is not None:
            self.load_pretrained(pretrained)

    def forward(self, x: Tensor) -> Tensor:
        """float [B, 3, H, W] normalised -> logits float [B, num_classes, ceil(H/8), ceil(W/8)]."""
        return self.classifier(self.backbone(x))

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Backbone 1x, head ``head_lr_mult`` x; each group has ``lr_mult`` and ``name``."""
        specs = (
            ("backbone", [p for p in self.backbone.parameters() if p.requires_grad], 1.0),
            (
                "classifier",
                [p for p in self.classifier.parameters() if p.requires_grad],
                self.head_lr_mult,
            ),
        )
        return [
            {
                "name": name,
                "params": params,
                "lr": lr * mult,
                "lr_mult": mult,
                "weight_decay": weight_decay,
            }
            for name, params, mult in specs
            if params
        ]

    def load_pretrained(self, path: str) -> None:
        """Load an ImageNet MobileNetV3-Large state dict (``features.*``) into the backbone."""
        from wsss_pl.weights import load_state_dict, resolve_checkpoint

        state = load_state_dict(resolve_checkpoint(path))
        features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        if not features:
            raise WeightsError(
                f"{path}: no features.* keys; expected a torchvision MobileNetV3-Large ImageNet "
                "state dict (mobilenet_v3_large-8738ca79.pth)"
            )
        own = self.backbone.state_dict()
        missing = [k for k in own if k not in features]
        shapes = [k for k in own if k in features and features[k].shape != own[k].shape]
        if missing or shapes:
            raise WeightsError(
                f"{path} does not fit the MobileNetV3-Large backbone: missing {missing[:5]}, "
                f"shape mismatch {shapes[:5]}"
            )
        self.backbone.load_state_dict({k: features[k] for k in own})
        log.info("LR-ASPP: loaded the ImageNet backbone from %s", path)
