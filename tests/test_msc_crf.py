"""DeepLab-v2's MSC training loss and dense-CRF test-time refinement."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from equivalence import assert_class_maps_match, top2_margin
from PIL import Image
from torch import nn

from wsss_pl.data.augment import BatchAugment
from wsss_pl.models.crf import CRFParams, dense_crf
from wsss_pl.models.msc import msc_forward, msc_loss, resize_labels_nearest
from wsss_pl.module import SegmentationModule

SAMPLE = os.environ.get("WSSS_PL_SAMPLE_DATA")
VOC = Path(SAMPLE or ".") / "voc_sample" / "VOC2012"


class _Stride8(nn.Module):
    """A tiny net with DeepLab's output stride: float [B, 3, H, W] -> [B, K, ceil(H/8), ...]."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.num_classes = classes
        self.conv = nn.Conv2d(3, classes, 3, stride=8, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _pil_nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """deeplab-pytorch's resize_labels: PIL NEAREST on float labels; size (h, w)."""
    out = [
        np.asarray(Image.fromarray(label.float().numpy()).resize(size[::-1], Image.NEAREST))
        for label in labels
    ]
    return torch.from_numpy(np.stack(out)).long()


@pytest.mark.parametrize(
    "shape, size", [((321, 321), (41, 41)), ((321, 321), (31, 31)), ((97, 130), (13, 17))]
)
def test_nearest_label_resize_matches_pil(shape, size) -> None:
    labels = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    assert torch.equal(resize_labels_nearest(labels, size), _pil_nearest(labels, size))


def test_msc_forward_and_loss() -> None:
    torch.manual_seed(0)
    net = _Stride8()
    images = torch.randn(2, 3, 65, 81)
    target = torch.randint(0, 4, (2, 65, 81), dtype=torch.uint8)
    target[:, :10] = 255
    outputs = msc_forward(net, images, [1.0, 0.75, 0.5])
    sizes = [tuple(o.shape[-2:]) for o in outputs]
    # 65x81 at 1, 0.75 (48x60), 0.5 (32x40), each through a stride-8 conv; fusion at scale 1
    assert sizes == [(9, 11), (6, 8), (4, 5), (9, 11)]

    full = net(images)
    resized = [full] + [
        F.interpolate(o, size=(9, 11), mode="bilinear", align_corners=False) for o in outputs[1:3]
    ]
    fused = outputs[-1]
    assert torch.equal(fused, torch.maximum(torch.maximum(resized[0], resized[1]), resized[2]))
    assert bool((fused >= resized[2]).all()) and not torch.equal(fused, resized[0])
    # scale 0.75 input exactly as deeplab-pytorch's MSC makes it
    small = F.interpolate(images, scale_factor=0.75, mode="bilinear", align_corners=False)
    torch.testing.assert_close(outputs[1], net(small))

    loss = msc_loss(outputs, target)
    expected = sum(
        F.cross_entropy(o, _pil_nearest(target, tuple(o.shape[-2:])), ignore_index=255)
        for o in outputs
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert net.conv.weight.grad is not None and net.conv.weight.grad.abs().sum() > 0

    # An output whose shrunk labels are all ignore adds 0 instead of NaN.
    sparse = torch.full_like(target, 255)
    sparse[:, 0, 0] = 1
    assert torch.isfinite(msc_loss(msc_forward(net, images, [1.0, 0.5]), sparse))


def _batch(images: torch.Tensor, target: torch.Tensor) -> dict:
    batch_size = images.shape[0]
    return {
        "image": images,
        "target": target,
        "gt": target,
        "has_gt": torch.ones(batch_size, dtype=torch.bool),
        "padding": torch.zeros(batch_size, dtype=torch.bool),
        "size": torch.tensor([list(images.shape[-2:])] * batch_size),
        "id": [str(i) for i in range(batch_size)],
        "num_skipped": 0,
        "num_labelled": 0,
        "num_unmatched_boxes": 0,
        "num_missing_classes": 0,
    }


def test_module_msc_training_step() -> None:
    torch.manual_seed(0)
    net = _Stride8()
    module = SegmentationModule(net, class_names=["a", "b", "c"], msc_scales=[1.0, 0.75, 0.5])
    images = torch.randn(2, 3, 65, 81)
    target = torch.randint(0, 4, (2, 65, 81), dtype=torch.uint8)
    loss = module.training_step(_batch(images, target), 0)
    expected = msc_loss(msc_forward(net, images, [1.0, 0.75, 0.5]), target)
    torch.testing.assert_close(loss, expected)
    single = SegmentationModule(net, class_names=["a", "b", "c"])
    assert not torch.allclose(single.training_step(_batch(images, target), 0), loss)
    with pytest.raises(ValueError, match="1.0"):
        SegmentationModule(net, class_names=["a", "b", "c"], msc_scales=[0.75, 0.5])
    assert module.hparams["msc_scales"] == [1.0, 0.75, 0.5]
    assert module.hparams["crf"] == CRFParams().as_dict()


def _real_sample(sample_id: str = "2007_000033"):
    image = np.asarray(Image.open(VOC / "JPEGImages" / f"{sample_id}.jpg").convert("RGB"))
    gt = np.asarray(Image.open(VOC / "SegmentationClass" / f"{sample_id}.png"))
    return image, gt


def _noisy_probs(gt: np.ndarray, classes: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """A DeepLab-like coarse prediction (1/8 resolution, upsampled) of the ground truth with
    i.i.d. logit noise: (noisy probabilities [C, H, W], the noise-free prediction [H, W])."""
    from scipy import ndimage

    height, width = gt.shape
    nearest = ndimage.distance_transform_edt(gt == 255, return_distances=False, return_indices=True)
    labels = torch.from_numpy(gt[tuple(nearest)].astype(np.int64))  # ignore band: nearest class
    onehot = F.one_hot(labels, classes).permute(2, 0, 1).float()[None]
    coarse = F.interpolate(onehot, size=(height // 8, width // 8), mode="area")
    logits = F.interpolate(coarse * 8, size=(height, width), mode="bilinear", align_corners=False)
    clean = logits.argmax(1)[0].numpy()
    noise = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0)) * 3
    return (logits + noise).softmax(1)[0].numpy(), clean


def _miou(pred: np.ndarray, gt: np.ndarray) -> float:
    valid = gt != 255
    ious = [
        ((pred == c) & (gt == c) & valid).sum() / (((pred == c) | (gt == c)) & valid).sum()
        for c in np.unique(gt[valid])
    ]
    return float(np.mean(ious))


@pytest.mark.skipif(not SAMPLE, reason="WSSS_PL_SAMPLE_DATA not set")
def test_dense_crf_cleans_a_noisy_prediction_on_a_real_image() -> None:
    image, gt = _real_sample()
    probs, clean = _noisy_probs(gt)
    refined = dense_crf(image, probs, CRFParams())
    assert refined.shape == probs.shape and np.allclose(refined.sum(0), 1, atol=1e-3)
    noisy, out = probs.argmax(0), refined.argmax(0)
    valid = gt != 255
    flipped = noisy != clean  # pixels the noise changed
    assert 0.15 < flipped.mean() < 0.5
    # The CRF changes mostly the noise: it restores most flipped pixels and keeps the rest.
    assert (out[flipped] == clean[flipped]).mean() > 0.8
    assert (out[~flipped] == clean[~flipped]).mean() > 0.99
    accuracy_noisy, accuracy_crf = (noisy == gt)[valid].mean(), (out == gt)[valid].mean()
    assert accuracy_crf > accuracy_noisy + 0.15
    assert _miou(out, gt) > _miou(noisy, gt) + 0.15
    # Without the image term (bilateral weight 0) and smoothness (Gaussian weight 0) it is a no-op.
    flat = dense_crf(image, probs, CRFParams(pos_weight=0.0, bi_weight=0.0))
    assert (flat.argmax(0) == noisy).mean() > 0.999


class _FixedLogits(nn.Module):
    """Returns the given logits (at input size) whatever the input; num_classes for the module."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.num_classes = logits.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[..., : x.shape[-2], : x.shape[-1]]


@pytest.mark.skipif(not SAMPLE, reason="WSSS_PL_SAMPLE_DATA not set")
def test_module_test_step_applies_crf_on_the_unpadded_image() -> None:
    image, gt = _real_sample()
    image, gt = np.array(image[:180, :240]), gt[:180, :240]  # a crop keeps the test fast
    probs, _ = _noisy_probs(gt)
    height, width = gt.shape
    pad = 7  # the batch is padded below and right, as collate does for larger batch mates
    logits = torch.zeros(1, 21, height + pad, width + pad)
    logits[0, :, :height, :width] = torch.from_numpy(np.log(probs))
    uint8 = torch.zeros(1, 3, height + pad, width + pad, dtype=torch.uint8)
    uint8[0, :, :height, :width] = torch.from_numpy(image).permute(2, 0, 1)
    augment = BatchAugment()
    batch = _batch(augment.normalize(uint8), torch.zeros(1, height + pad, width + pad))
    batch["size"] = torch.tensor([[height, width]])
    assert torch.equal(augment.denormalize(batch["image"]), uint8)  # exact round trip

    names = [f"c{i}" for i in range(1, 21)]
    module = SegmentationModule(_FixedLogits(logits), class_names=names, test_crf=True).eval()
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(augment=augment))
    preds = module._predict(batch)
    refined = dense_crf(image, probs, CRFParams())
    expected = refined.argmax(0)
    # The module feeds the CRF softmax(log(probs)), equal to probs up to float rounding: only
    # pixels whose refined top-2 probabilities are within 1e-4 may take the other class.
    assert_class_maps_match(
        preds[0, :height, :width], torch.from_numpy(expected), top2_margin(refined, dim=0), 1e-4
    )
    plain = SegmentationModule(_FixedLogits(logits), class_names=names).eval()._predict(batch)
    assert (plain[0, :height, :width] != preds[0, :height, :width]).float().mean() > 0.15

    module._trainer = None
    with pytest.raises(Exception, match="image_uint8"):
        module._predict(batch)
    batch["image_uint8"] = uint8
    assert torch.equal(module._predict(batch), preds)


def test_max_logit_test_fusion_is_deeplab_v2_msc_eval() -> None:
    """test_fusion max_logit = deeplab-pytorch's MSC in eval (max at logit size, then upsample)."""
    from wsss_pl.models.inference import predict_logits, predict_msc_max

    torch.manual_seed(0)
    net = _Stride8().eval()
    images = torch.randn(2, 3, 65, 81)
    with torch.no_grad():
        base = net(images)
        pyramid = [
            F.interpolate(
                net(F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)),
                size=base.shape[-2:],
                mode="bilinear",
                align_corners=False,
            )
            for s in (0.75, 0.5)
        ]
        fused = torch.stack([base, *pyramid]).max(dim=0)[0]
        expected = F.interpolate(fused, size=(65, 81), mode="bilinear", align_corners=False)
    probs = predict_msc_max(net, images, [1.0, 0.75, 0.5])
    torch.testing.assert_close(probs, expected.softmax(1))
    mean = predict_logits(net, images, [1.0, 0.75, 0.5])
    assert not torch.allclose(probs, mean)  # another rule than the probability average

    flipped = predict_msc_max(net, images, [1.0, 0.75, 0.5], flip=True)
    mirror = predict_msc_max(net, images.flip(-1), [1.0, 0.75, 0.5]).flip(-1)
    torch.testing.assert_close(flipped, (probs + mirror) / 2)

    module = SegmentationModule(
        net, class_names=["a", "b", "c"], test_scales=[1.0, 0.75, 0.5], test_fusion="max_logit"
    )
    preds = module._predict(_batch(images, torch.zeros(2, 65, 81)))
    assert torch.equal(preds, probs.argmax(1))
    with pytest.raises(ValueError, match="1.0"):
        SegmentationModule(net, test_scales=[0.5], test_fusion="max_logit")
