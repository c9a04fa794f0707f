"""DeepLabV2: shapes, dilation, lr groups, frozen BN, checkpoint loading, test-time inference."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision import models

from wsss_pl.errors import WeightsError
from wsss_pl.models.deeplab_v2 import DeepLabV2
from wsss_pl.models.inference import predict_logits


@pytest.fixture(scope="module")
def r18() -> DeepLabV2:
    torch.manual_seed(0)
    return DeepLabV2(num_classes=5, backbone="resnet18", output_stride=8).eval()


@pytest.mark.parametrize(
    ("backbone", "output_stride", "size", "expected"),
    [
        ("resnet18", 8, (65, 65), (9, 9)),
        ("resnet18", 16, (65, 65), (5, 5)),
        ("resnet18", 8, (65, 97), (9, 13)),
        ("resnet18", 16, (65, 97), (5, 7)),
        ("resnet101", 8, (65, 65), (9, 9)),
        ("resnet101", 16, (65, 65), (5, 5)),
    ],
)
def test_output_shape(
    backbone: str, output_stride: int, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    model = DeepLabV2(num_classes=7, backbone=backbone, output_stride=output_stride).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 7, *expected)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilation_replaces_stride(output_stride: int) -> None:
    model = DeepLabV2(num_classes=3, backbone="resnet18", output_stride=output_stride).eval()
    plain = models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        ours = model.features(x)
        plain_feat = plain.layer4(
            plain.layer3(
                plain.layer2(plain.layer1(plain.maxpool(plain.relu(plain.bn1(plain.conv1(x))))))
            )
        )
    assert plain_feat.shape[-2:] == (3, 3)  # stride 32 without dilation
    assert ours.shape == (1, 512, -(-65 // output_stride), -(-65 // output_stride))

    expected = {8: {"layer3": 2, "layer4": 4}, 16: {"layer3": 1, "layer4": 2}}[output_stride]
    for stage, dilation in expected.items():
        for conv in getattr(model.backbone, stage).modules():
            if isinstance(conv, nn.Conv2d):
                if dilation > 1:
                    assert conv.stride == (1, 1)
                if conv.kernel_size == (3, 3):
                    assert conv.dilation == (dilation, dilation)
                    assert conv.padding == (dilation, dilation)


def test_aspp_sums_one_conv_per_rate() -> None:
    model = DeepLabV2(num_classes=4, backbone="resnet18", atrous_rates=(1, 3)).eval()
    convs = model.classifier.convs
    assert [c.dilation for c in convs] == [(1, 1), (3, 3)]
    assert all(not c.bias.detach().any() for c in convs)
    feat = torch.randn(1, 512, 9, 9)
    with torch.no_grad():
        assert torch.allclose(model.classifier(feat), convs[0](feat) + convs[1](feat))
    big = DeepLabV2(num_classes=64, backbone="resnet18").classifier.convs[0].weight.detach()
    assert 0.008 < float(big.std()) < 0.012  # normal init std 0.01


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_param_groups(freeze_bn: bool) -> None:
    model = DeepLabV2(num_classes=3, backbone="resnet18", freeze_bn=freeze_bn)
    groups = model.param_groups(lr=1e-3, weight_decay=5e-4)
    by_name = {g["name"]: g for g in groups}
    assert [g["lr_mult"] for g in groups] == [1, 10, 20]
    for g in groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_mult"])
    assert by_name["classifier.bias"]["weight_decay"] == 0.0
    assert (
        by_name["backbone"]["weight_decay"] == by_name["classifier.weight"]["weight_decay"] == 5e-4
    )

    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # disjoint
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(ids) == trainable  # covering, trainable only
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("backbone.") for p in by_name["backbone"]["params"])
    assert {names[id(p)].rsplit(".", 1)[1] for p in by_name["classifier.weight"]["params"]} == {
        "weight"
    }
    assert {names[id(p)].rsplit(".", 1)[1] for p in by_name["classifier.bias"]["params"]} == {
        "bias"
    }
    bn_params = [p for m in model.modules() if isinstance(m, _BatchNorm) for p in m.parameters()]
    assert all(p.requires_grad != freeze_bn for p in bn_params)
    torch.optim.SGD(groups, lr=1e-3, momentum=0.9)  # the groups are valid optimiser input


def test_frozen_bn_stays_eval_and_keeps_stats() -> None:
    model = DeepLabV2(num_classes=3, backbone="resnet18", freeze_bn=True)
    model.eval().train()
    assert model.training
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert all(m.training for m in model.modules() if not isinstance(m, _BatchNorm))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(2, 3, 33, 33) * 3 + 1)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())

    unfrozen = DeepLabV2(num_classes=3, backbone="resnet18", freeze_bn=False).train()
    bn = next(m for m in unfrozen.modules() if isinstance(m, _BatchNorm))
    assert bn.training
    mean = bn.running_mean.clone()
    unfrozen(torch.randn(2, 3, 33, 33) * 3 + 1)
    assert not torch.equal(mean, bn.running_mean)  # the control: unfrozen BN does update


def test_frozen_bn_random_init_warning_is_left_to_fit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Building the net says nothing (label, export-model and checkpoints build it without init
    weights on purpose); ``random_init_warning`` is what fit says when it trains from random."""
    with caplog.at_level(logging.WARNING, logger="wsss_pl.models.deeplab_v2"):
        frozen = DeepLabV2(num_classes=3, backbone="resnet18", freeze_bn=True)
    assert not [r for r in caplog.records if "freeze_bn" in r.getMessage()]
    assert "freeze_bn" in (frozen.random_init_warning() or "")
    assert (
        DeepLabV2(num_classes=3, backbone="resnet18", freeze_bn=False).random_init_warning() is None
    )
    path = tmp_path / "resnet18.pth"
    torch.save(models.resnet18(weights=None).state_dict(), path)
    loaded = DeepLabV2(num_classes=3, backbone="resnet18", pretrained=str(path), freeze_bn=True)
    assert loaded.random_init_warning() is None


def test_load_torchvision_resnet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(1)
    resnet = models.resnet18(weights=None)
    with torch.no_grad():
        resnet.bn1.running_mean.uniform_(-1, 1)  # a non-default buffer must be copied too
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(resnet.state_dict(), path)

    torch.manual_seed(2)
    fresh = DeepLabV2(num_classes=3, backbone="resnet18")
    assert not torch.equal(fresh.backbone.conv1.weight, resnet.conv1.weight)
    caplog.clear()  # the random-init model above warns about frozen BN; loading must not warn
    with caplog.at_level(logging.WARNING, logger="wsss_pl.models.deeplab_v2"):
        model = DeepLabV2(num_classes=3, backbone="resnet18", pretrained=str(path))
    assert not caplog.records  # fc.* is ignored silently, the classifier is expected missing
    ours = model.state_dict()
    for key, value in resnet.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(ours["backbone." + key], value), key
    # BN stays frozen after loading
    assert not model.backbone.bn1.weight.requires_grad


def test_load_deeplab_checkpoint_other_classes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(3)
    coco = DeepLabV2(num_classes=81, backbone="resnet18", freeze_bn=False)
    path = tmp_path / "coco.pt"
    torch.save({"state_dict": {"model." + k: v for k, v in coco.state_dict().items()}}, path)

    with caplog.at_level(logging.WARNING, logger="wsss_pl.models.deeplab_v2"):
        voc = DeepLabV2(num_classes=21, backbone="resnet18", pretrained=str(path))
    assert any("81 classes" in r.getMessage() for r in caplog.records)
    assert torch.equal(voc.backbone.layer4[1].conv2.weight, coco.backbone.layer4[1].conv2.weight)
    assert voc.classifier.convs[0].weight.shape[0] == 21

    same = DeepLabV2(num_classes=81, backbone="resnet18", pretrained=str(path))
    assert torch.equal(same.classifier.convs[2].weight, coco.classifier.convs[2].weight)


def test_bad_checkpoints_raise_weights_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth"):
        DeepLabV2(num_classes=3, backbone="resnet18", pretrained=str(missing))

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02this is not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="corrupt.pth"):
        DeepLabV2(num_classes=3, backbone="resnet18", pretrained=str(corrupt))

    unrelated = tmp_path / "unrelated.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(WeightsError, match="unrelated.pth"):
        DeepLabV2(num_classes=3, backbone="resnet18", pretrained=str(unrelated))

    # e.g. a ResNet-50 checkpoint for a ResNet-18 model: same key, other shape
    state = models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    other_arch = tmp_path / "other_arch.pth"
    torch.save(state, other_arch)
    with pytest.raises(WeightsError, match="other_arch.pth.*layer1.0.conv1.weight"):
        DeepLabV2(num_classes=3, backbone="resnet18", pretrained=str(other_arch))


def test_predict_logits_single_scale_is_softmax(r18: DeepLabV2) -> None:
    images = torch.randn(2, 3, 65, 49)
    probs = predict_logits(r18, images)
    assert probs.shape == (2, 5, 65, 49)
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(
            r18(images), size=(65, 49), mode="bilinear", align_corners=False
        )
    assert torch.allclose(probs, logits.softmax(1), atol=1e-6)


def test_predict_logits_multiscale_flip(r18: DeepLabV2) -> None:
    torch.manual_seed(4)
    images = torch.randn(1, 3, 41, 49)
    scales = (0.75, 1.0)
    probs = predict_logits(r18, images, scales=scales, flip=True)
    assert probs.shape == (1, 5, 41, 49)
    assert torch.allclose(probs.sum(1), torch.ones(1, 41, 49), atol=1e-5)
    assert not torch.allclose(probs, predict_logits(r18, images, scales=(1.0,), flip=True))
    # Flip-averaging makes the prediction mirror-equivariant even though the model is not.
    mirrored = predict_logits(r18, images.flip(-1), scales=scales, flip=True)
    assert torch.allclose(mirrored.flip(-1), probs, atol=1e-6)
    plain = predict_logits(r18, images, scales=scales)
    plain_mirrored = predict_logits(r18, images.flip(-1), scales=scales)
    assert not torch.allclose(plain_mirrored.flip(-1), plain, atol=1e-4)
    with pytest.raises(ValueError, match="scales"):
        predict_logits(r18, images, scales=(0.0,))
