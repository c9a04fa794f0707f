"""DeepLab-v2 (Chen et al. 2017): a dilated ResNet and an ASPP head of per-rate 3x3 classifiers.

The network is a plain ``nn.Module``: float images in, logits at 1/output_stride resolution out;
upsampling, loss and optimiser live in the LightningModule. Parameter names follow torchvision
(``backbone.conv1.weight``, ``backbone.layer3.0.conv2.weight``, ...), so torchvision ImageNet
ResNet state dicts load directly; DeepLab-v2's Caffe models (``init.caffemodel``, COCO-trained)
and deeplab-pytorch's conversions of them are renamed to these keys (``wsss_pl.models.caffe``).

Two conventions follow the weights and travel in the state dict (buffers ``caffe_backbone``,
``caffe_input``): the backbone style (``torchvision``: stride in the 3x3 conv, floor max-pool;
``caffe``: MSRA ResNet, stride in the first 1x1 conv, ceil max-pool) and the input convention
(``imagenet_rgb``: the data pipeline's ImageNet-normalised RGB as is; ``caffe_bgr``: converted
inside ``forward`` to BGR 0..255 minus the Caffe mean, what Caffe weights were trained on).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from wsss_pl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from wsss_pl.errors import ConfigError, WeightsError
from wsss_pl.models.caffe import (
    CAFFE_MEAN_BGR,
)
from wsss_pl.models.deeplab_parts import (  # noqa: F401  (re-exported)
    _BACKBONES,
    _STAGE_DILATION,
    ASPP,
    caffe_style_stage,
    dilate_stage,
)
from wsss_pl.models.deeplab_pretrained import (  # noqa: F401  (re-exported)
    _CAFFE_LAYOUTS,
    _CAFFE_NAMES,
    _STEM_KEY,
    _check_style,
    _is_caffemodel,
    _preview,
    _read_pretrained,
    _read_state_dict,
    _to_model_keys,
)

log = logging.getLogger(__name__)

BackboneName = Literal["resnet18", "resnet34", "resnet50", "resnet101"]
BackboneStyle = Literal["auto", "torchvision", "caffe"]
InputConvention = Literal["auto", "imagenet_rgb", "caffe_bgr"]


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
        backbone_style: ``torchvision`` (stride in the 3x3 conv, floor max-pool), ``caffe``
            (DeepLab-v2's MSRA ResNet: stride in the first 1x1 conv, ceil max-pool; Bottleneck
            backbones only) or ``auto``: ``caffe`` for Caffe weights (a ``*.caffemodel``,
            ``deeplabv2_coco_init``, a deeplab-pytorch conversion, or a DeepLabV2 checkpoint of
            that style), else ``torchvision``.
        input_convention: what ``forward`` receives is always the data pipeline's ImageNet-
            normalised RGB; ``caffe_bgr`` converts it to BGR 0..255 minus the Caffe mean first
            (Caffe weights), ``imagenet_rgb`` uses it as is; ``auto`` follows the weights like
            ``backbone_style``. Assumes the data module's default mean/std.
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: BackboneName = "resnet101",
        output_stride: Literal[8, 16] = 8,
        atrous_rates: Sequence[int] = (6, 12, 18, 24),
        pretrained: str | None = None,
        freeze_bn: bool = True,
        backbone_style: BackboneStyle = "auto",
        input_convention: InputConvention = "auto",
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
        if backbone_style not in ("auto", "torchvision", "caffe"):
            raise ValueError(
                f"backbone_style must be auto, torchvision or caffe: {backbone_style!r}"
            )
        if input_convention not in ("auto", "imagenet_rgb", "caffe_bgr"):
            raise ValueError(
                f"input_convention must be auto, imagenet_rgb or caffe_bgr: {input_convention!r}"
            )
        caffe_file = pretrained is not None and _is_caffemodel(pretrained)
        if (caffe_file or backbone_style == "caffe") and backbone not in ("resnet50", "resnet101"):
            what = (
                f"pretrained {pretrained} is a Caffe model"
                if caffe_file
                else "backbone_style caffe"
            )
            raise ConfigError(
                f"model.net: {what}, which needs a Bottleneck ResNet (backbone resnet101 or "
                f"resnet50), but backbone is {backbone}"
            )

        weights = _read_pretrained(pretrained) if pretrained is not None else None
        caffe_weights = weights is not None and weights[2]
        if weights is not None and backbone_style != "auto":
            _check_style(caffe_weights, backbone_style, pretrained)
        self.backbone_style = (
            backbone_style
            if backbone_style != "auto"
            else "caffe"
            if caffe_weights
            else "torchvision"
        )
        convention = (
            input_convention
            if input_convention != "auto"
            else "caffe_bgr"
            if (weights[3] if weights is not None else False)
            else "imagenet_rgb"
        )

        resnet = _BACKBONES[backbone](weights=None)
        feature_channels = resnet.fc.in_features
        del resnet.fc, resnet.avgpool  # we run the stages ourselves; no classifier keys to carry
        if self.backbone_style == "caffe":
            for stage_name in ("layer2", "layer3", "layer4"):
                caffe_style_stage(getattr(resnet, stage_name))
            resnet.maxpool.ceil_mode = True  # Caffe pooling rounds the output size up
        for stage_name, dilation in _STAGE_DILATION[output_stride].items():
            dilate_stage(getattr(resnet, stage_name), dilation)
        self.backbone = resnet
        self.classifier = ASPP(feature_channels, num_classes, atrous_rates)

        # Persisted flags (uint8 0/1) so checkpoints carry their conventions; see module doc.
        caffe = int(self.backbone_style == "caffe")
        self.register_buffer("caffe_backbone", torch.tensor(caffe, dtype=torch.uint8))
        self.register_buffer("caffe_input", torch.tensor(0, dtype=torch.uint8))
        # ImageNet-normalised RGB -> Caffe BGR: out[c] = x[2 - c] * scale[c] + shift[c].
        mean_rgb = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
        std_rgb = torch.tensor(IMAGENET_STD, dtype=torch.float32)
        caffe_mean = torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float32)
        self.register_buffer(
            "_caffe_scale", (255.0 * std_rgb.flip(0)).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "_caffe_shift",
            (255.0 * mean_rgb.flip(0) - caffe_mean).view(1, 3, 1, 1),
            persistent=False,
        )
        self.set_input_convention(convention)

        # Whether training would start from random weights: fit warns then when freeze_bn is on
        # (not here: labelling, export and checkpoints build the net without init weights).
        self.random_init = weights is None
        if weights is not None:
            self._load_weights(*weights)
        if freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, _BatchNorm):
                    for param in module.parameters(recurse=False):
                        param.requires_grad_(False)
        self.train()

    def set_input_convention(self, convention: str) -> None:
        """``imagenet_rgb`` or ``caffe_bgr`` (see the class doc); stored in the state dict."""
        if convention not in ("imagenet_rgb", "caffe_bgr"):
            raise ValueError(f"input convention must be imagenet_rgb or caffe_bgr: {convention!r}")
        self.input_convention = convention
        self.caffe_input.fill_(int(convention == "caffe_bgr"))

    def to_weight_input(self, x: Tensor) -> Tensor:
        """ImageNet-normalised RGB float [B, 3, H, W] -> what the weights expect (same shape)."""
        if self.input_convention == "caffe_bgr":
            return x.flip(1) * self._caffe_scale.to(x.dtype) + self._caffe_shift.to(x.dtype)
        return x

    def features(self, x: Tensor) -> Tensor:
        """float [B, 3, H, W] ImageNet-normalised RGB -> layer4 features [B, F, h, w].

        h = ceil(H/os) for the torchvision style; the Caffe style's ceil max-pool can add one.
        """
        net = self.backbone
        x = self.to_weight_input(x)
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """float [B, 3, H, W] ImageNet-normalised RGB -> logits float [B, num_classes, h, w]
        at 1/output_stride (see ``features``). The caller upsamples the logits to the label size.
        """
        return self.classifier(self.features(x))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Checkpoints from before the flags existed are torchvision style / ImageNet RGB.
        for name in ("caffe_backbone", "caffe_input"):
            state_dict.setdefault(prefix + name, torch.tensor(0, dtype=torch.uint8))
        stored = int(state_dict[prefix + "caffe_backbone"])
        if stored != int(self.backbone_style == "caffe"):
            error_msgs.append(
                f"checkpoint backbone style is {'caffe' if stored else 'torchvision'} but this "
                f"DeepLabV2 is built {self.backbone_style}: set backbone_style accordingly"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # The checkpoint's input convention wins: its weights were trained with it.
        self.input_convention = "caffe_bgr" if int(self.caffe_input) else "imagenet_rgb"

    def random_init_warning(self) -> str | None:
        """What to say when training starts from this net's random init with frozen BatchNorm
        (``SegmentationModule.on_fit_start`` says it, unless a checkpoint is resumed), else None."""
        if not (self.random_init and self.freeze_bn):
            return None
        return (
            "DeepLabV2: training starts from a randomly initialised backbone with freeze_bn, which "
            "keeps BatchNorm at its initial statistics; set model.net.init_args.pretrained (e.g. "
            "resnet101_imagenet) or freeze_bn: false"
        )

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
        """Load a torchvision ResNet, DeepLabV2, Caffe or deeplab-pytorch checkpoint.

        Accepted layouts (possibly nested under ``"state_dict"``/``"model"`` and a key prefix
        such as ``"module."`` or ``"model."``): torchvision ResNet keys (``conv1.weight``,
        ``layer1.0.bn1.running_mean``, ``fc.*`` ignored), DeepLabV2 keys (``backbone.*``,
        ``classifier.*``), deeplab-pytorch keys (``layer1.conv1.conv.weight``, ``base.`` prefix
        allowed), or a binary ``*.caffemodel`` (DeepLab-v2 layer names). A classifier with another
        class count is skipped with a warning; missing and unexpected keys are logged. The input
        convention becomes the weights' one. Raises WeightsError naming ``path`` when the file
        cannot be read, when no key matches, when a backbone tensor has the wrong shape, or when
        the weights' backbone style differs from this model's.
        """
        self._load_weights(*_read_pretrained(path))

    def _load_weights(
        self,
        mapped: dict[str, Tensor],
        layout: str,
        caffe_style: bool,
        caffe_input: bool,
        path: Any,
    ) -> None:
        _check_style(caffe_style, self.backbone_style, path)
        if caffe_input != (self.input_convention == "caffe_bgr"):
            wanted = "caffe_bgr" if caffe_input else "imagenet_rgb"
            log.warning(
                "checkpoint %s expects %s inputs; input_convention was %s, now %s",
                path,
                wanted,
                self.input_convention,
                wanted,
            )
            self.set_input_convention(wanted)
        mapped = {k: v for k, v in mapped.items() if k not in ("caffe_backbone", "caffe_input")}
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
                f"parameter; its keys start with {list(mapped)[:5]}"
            )

        # This model's own flags (already set to the weights' conventions above).
        flags = {"caffe_backbone": self.caffe_backbone, "caffe_input": self.caffe_input}
        self.load_state_dict({**matched, **{k: v.clone() for k, v in flags.items()}}, strict=False)
        # The classifier is expected to be missing from an ImageNet backbone or a skipped head.
        missing = [
            k
            for k in own
            if k not in matched
            and not k.endswith("num_batches_tracked")
            and k not in ("caffe_backbone", "caffe_input")
            and not (
                k.startswith("classifier.")
                and (layout in ("torchvision", "caffe", "deeplab_pytorch") or classifier_mismatch)
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
