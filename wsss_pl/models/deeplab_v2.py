"""DeepLab-v2 (Chen et al. 2017): a dilated ResNet and an ASPP head of per-rate 3x3 classifiers.

The network is a plain ``nn.Module``: float images in, logits at 1/output_stride resolution out;
upsampling, loss and optimiser live in the LightningModule. Parameter names follow torchvision
(``backbone.conv1.weight``, ``backbone.layer3.0.conv2.weight``, ...), so torchvision ImageNet
ResNet state dicts load directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision import models

from wsss_pl.errors import WeightsError

log = logging.getLogger(__name__)

BackboneName = Literal["resnet18", "resnet34", "resnet50", "resnet101"]

_BACKBONES: dict[str, Callable[..., models.ResNet]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
    "resnet101": models.resnet101,
}

# Which stride-2 stages become stride-1 and with what dilation, per output stride.
_STAGE_DILATION: dict[int, dict[str, int]] = {8: {"layer3": 2, "layer4": 4}, 16: {"layer4": 2}}

_STEM_KEY = "conv1.weight"


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


class DeepLabV2(nn.Module):
    """DeepLab-v2: dilated torchvision ResNet + ASPP.

    Args:
        num_classes: output channels including background (21 for VOC, 81 for COCO).
        backbone: torchvision ResNet depth (built with ``weights=None``).
        output_stride: 8 (layer3 dilation 2, layer4 dilation 4) or 16 (layer4 dilation 2).
        atrous_rates: ASPP dilation rates, one 3x3 classifier each.
        pretrained: checkpoint path or registry name (``resnet101_imagenet``, downloaded with
            its checksum) to load: a torchvision ImageNet ResNet state dict (``fc.*``
            ignored) or a DeepLabV2 state dict (its classifier is skipped when its class count
            differs); see ``load_pretrained``.
        freeze_bn: keep every BatchNorm in eval mode (running statistics fixed) and its affine
            parameters frozen, as DeepLab-v2 trains with small batches.
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: BackboneName = "resnet101",
        output_stride: Literal[8, 16] = 8,
        atrous_rates: Sequence[int] = (6, 12, 18, 24),
        pretrained: str | None = None,
        freeze_bn: bool = True,
    ) -> None:
        super().__init__()
        if backbone not in _BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(_BACKBONES)}")
        if output_stride not in _STAGE_DILATION:
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.backbone_arch = backbone
        self.output_stride = output_stride
        self.freeze_bn = freeze_bn

        resnet = _BACKBONES[backbone](weights=None)
        feature_channels = resnet.fc.in_features
        del resnet.fc, resnet.avgpool  # we run the stages ourselves; no classifier keys to carry
        for stage_name, dilation in _STAGE_DILATION[output_stride].items():
            dilate_stage(getattr(resnet, stage_name), dilation)
        self.backbone = resnet
        self.classifier = ASPP(feature_channels, num_classes, atrous_rates)

        if pretrained is not None:
            self.load_pretrained(pretrained)
        elif freeze_bn:
            log.warning(
                "DeepLabV2: freeze_bn with a randomly initialised backbone keeps BatchNorm at its "
                "initial statistics; set pretrained (e.g. resnet101_imagenet) or freeze_bn: false"
            )
        if freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, _BatchNorm):
                    for param in module.parameters(recurse=False):
                        param.requires_grad_(False)
        self.train()

    def features(self, x: Tensor) -> Tensor:
        """float [B, 3, H, W] -> layer4 features float [B, F, ceil(H/os), ceil(W/os)]."""
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """float [B, 3, H, W] normalised images -> logits float [B, num_classes, ceil(H/os), ceil(W/os)].

        The caller upsamples the logits to the label size.
        """
        return self.classifier(self.features(x))

    def train(self, mode: bool = True) -> DeepLabV2:
        """Set train/eval mode; with ``freeze_bn`` the BatchNorm layers stay in eval mode."""
        super().train(mode)
        if self.freeze_bn:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser groups: backbone 1x lr, classifier weights 10x, classifier biases 20x (no decay).

        Only parameters with ``requires_grad`` are listed, each in exactly one group; empty groups
        are left out. Every group carries ``lr_mult`` so a poly schedule can set
        ``lr = base_lr * lr_mult * (1 - it / max_it) ** power``, and ``name`` for logging.
        """
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        weights = [c.weight for c in self.classifier.convs if c.weight.requires_grad]
        biases = [
            c.bias for c in self.classifier.convs if c.bias is not None and c.bias.requires_grad
        ]
        specs = (
            ("backbone", backbone, 1, weight_decay),
            ("classifier.weight", weights, 10, weight_decay),
            ("classifier.bias", biases, 20, 0.0),
        )
        return [
            {"name": name, "params": params, "lr": lr * mult, "lr_mult": mult, "weight_decay": wd}
            for name, params, mult, wd in specs
            if params
        ]

    def load_pretrained(self, path: str | Path) -> None:
        """Load a torchvision ResNet or DeepLabV2 checkpoint into this model.

        Accepted layouts (possibly nested under ``"state_dict"``/``"model"`` and a key prefix
        such as ``"module."`` or ``"model."``): torchvision ResNet keys (``conv1.weight``,
        ``layer1.0.bn1.running_mean``, ``fc.*`` ignored) or DeepLabV2 keys (``backbone.*``,
        ``classifier.*``). A classifier with another class count is skipped with a warning;
        missing and unexpected keys are logged. Raises WeightsError naming ``path`` when the file
        cannot be read, when no key matches, or when a backbone tensor has the wrong shape.
        """
        state = _read_state_dict(path)
        mapped, layout = _to_model_keys(state, path)
        own = self.state_dict()

        matched: dict[str, Tensor] = {}
        unexpected: list[str] = []
        wrong_shape: list[str] = []
        classifier_mismatch = False
        for key, value in mapped.items():
            if key not in own:
                unexpected.append(key)
            elif own[key].shape != value.shape:
                if key.startswith("classifier."):
                    classifier_mismatch = True
                else:
                    wrong_shape.append(f"{key}: {tuple(value.shape)} vs {tuple(own[key].shape)}")
            else:
                matched[key] = value
        if wrong_shape:
            raise WeightsError(
                f"checkpoint {path}: {len(wrong_shape)} backbone tensors have another shape than "
                f"this model's (checkpoint vs model; a checkpoint of another backbone?): "
                f"{'; '.join(wrong_shape[:5])}"
            )
        if classifier_mismatch:
            # A half-loaded classifier is worse than a fresh one: drop all its keys.
            matched = {k: v for k, v in matched.items() if not k.startswith("classifier.")}
            head = mapped.get("classifier.convs.0.weight")
            log.warning(
                "checkpoint %s: classifier has %s classes, the model %d; classifier left at its "
                "random initialisation, backbone loaded",
                path,
                head.shape[0] if head is not None else "another number of",
                self.num_classes,
            )
        if not matched:
            raise WeightsError(
                f"checkpoint {path}: no tensor matches a DeepLabV2 ({self.backbone_arch}) "
                f"parameter; its keys start with {list(state)[:5]}"
            )

        self.load_state_dict(matched, strict=False)
        # The classifier is expected to be missing from an ImageNet backbone or a skipped head.
        missing = [
            k
            for k in own
            if k not in matched
            and not k.endswith("num_batches_tracked")
            and not (
                k.startswith("classifier.") and (layout == "torchvision" or classifier_mismatch)
            )
        ]
        if missing:
            log.warning(
                "checkpoint %s: %d model tensors not in the checkpoint (left at init): %s",
                path,
                len(missing),
                _preview(missing),
            )
        if unexpected:
            log.warning(
                "checkpoint %s: %d checkpoint tensors unused by the model: %s",
                path,
                len(unexpected),
                _preview(unexpected),
            )
        log.info("loaded %d tensors from %s (%s layout)", len(matched), path, layout)


def _preview(keys: Sequence[str], limit: int = 8) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


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
