"""The paper's training recipe (issue 13): scale set and int() sizes, labels resized like PIL
NEAREST, crop padding per input convention, the loss normalisation of deeplab-pytorch, and the
global batch split over ranks (the multi-process gradient check is tests/test_global_batch.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_pl.data.augment import (
    CAFFE_MEAN_RGB,
    PAPER_SCALES,
    BatchAugment,
    resize_mask_nearest,
)
from wsss_pl.data.base import Sample
from wsss_pl.data.collate import collate_samples
from wsss_pl.data.samplers import GlobalBatchSampler, split_global_batch
from wsss_pl.models.loss import step_loss
from wsss_pl.models.msc import resize_labels_nearest


def _sample(height: int, width: int, seed: int = 0) -> Sample:
    generator = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 21, (height, width), generator=generator, dtype=torch.uint8)
    image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
    return Sample(id="x", image=image, labels=torch.zeros(20), gt=label, target=label.clone())


def _pil_nearest(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The reference: PIL ``Image.resize((w, h), NEAREST)`` of a uint8 label map [H, W]."""
    resized = Image.fromarray(label.numpy()).resize((size[1], size[0]), resample=Image.NEAREST)
    return torch.from_numpy(np.asarray(resized).copy())


def test_scales_are_drawn_from_the_discrete_set_and_range_is_an_option() -> None:
    generator = torch.Generator().manual_seed(0)
    discrete = BatchAugment(scales=list(PAPER_SCALES))
    draws = [discrete.draw_scale(generator) for _ in range(500)]
    assert set(draws) == set(PAPER_SCALES)  # every factor, nothing else
    counts = [draws.count(f) for f in PAPER_SCALES]
    assert min(counts) > 60  # uniform: 100 each expected
    continuous = BatchAugment(scale_range=(0.5, 1.5))
    values = [continuous.draw_scale(generator) for _ in range(200)]
    assert all(0.5 <= v <= 1.5 for v in values) and len(set(values) - set(PAPER_SCALES)) > 190


@pytest.mark.parametrize("scale", PAPER_SCALES)
def test_scaled_size_is_int_of_side_times_factor_and_label_is_pil_nearest(scale: float) -> None:
    """35x45 at 0.75 is int(26.25) x int(33.75) = 26 x 33 (round() would give 34 columns); the
    label of the (uncropped, unflipped) sample equals PIL NEAREST's resize of it."""
    sample = _sample(35, 45)
    augment = BatchAugment(crop_size=80, scales=[scale], flip=False)
    batch = augment.train_batch(collate_samples([sample]))
    height, width = int(35 * scale), int(45 * scale)
    assert (height, width) != (round(35 * scale), round(45 * scale)) or scale in (0.5, 1.0, 1.5)
    target = batch["target"][0]
    valid = target != 255
    assert valid[:height, :width].all() and not valid[height:].any() and not valid[:, width:].any()
    assert torch.equal(target[:height, :width], _pil_nearest(sample["target"], (height, width)))


ODD_SIZES = [((37, 53), (17, 29)), ((37, 53), (61, 91)), ((281, 500), (140, 250)),
             ((281, 500), (351, 625)), ((375, 333), (187, 249)), ((13, 7), (41, 23))]  # fmt: skip


@pytest.mark.parametrize(("source", "size"), ODD_SIZES)
def test_label_resize_equals_pil_nearest_on_odd_sizes(
    source: tuple[int, int], size: tuple[int, int]
) -> None:
    label = torch.randint(0, 256, source, generator=torch.Generator().manual_seed(1)).to(
        torch.uint8
    )
    expected = _pil_nearest(label, size)
    assert torch.equal(resize_mask_nearest(label[None], size)[0], expected)
    assert torch.equal(resize_labels_nearest(label[None], size)[0].to(torch.uint8), expected)


def test_plain_nearest_is_not_pil_nearest() -> None:
    """The can-fail sibling: ``mode="nearest"`` (the old resize) picks other source pixels."""
    label = torch.randint(0, 256, (37, 53), generator=torch.Generator().manual_seed(1))
    label = label.to(torch.uint8)
    for size in [s for _, s in ODD_SIZES[:2]]:
        old = torch.nn.functional.interpolate(label[None, None].float(), size=size, mode="nearest")
        assert not torch.equal(old[0, 0].to(torch.uint8), _pil_nearest(label, size))


def _padded_pixels(augment: BatchAugment) -> tuple[torch.Tensor, torch.Tensor]:
    """A 20x30 image at scale 0.5 in a 24x24 crop: image [3, 24, 24] and its padded pixels."""
    augment.scales = [0.5]
    sample = _sample(20, 30)
    sample["target"] = torch.zeros(20, 30, dtype=torch.uint8)
    batch = augment.train_batch(collate_samples([sample]))
    padded = batch["target"][0] == 255
    assert 0 < int(padded.sum()) < padded.numel()
    return batch["image"][0], padded


def test_crop_padding_is_the_mean_of_the_models_input_convention() -> None:
    """``pad_rgb: auto`` pads with the pixel the net's input sees as 0: the Caffe mean for a
    Caffe-input DeepLab-v2 (0 after its BGR mean subtraction), the ImageNet mean otherwise."""
    from wsss_pl.data.datamodule import WSSSDataModule
    from wsss_pl.data.synthetic import SyntheticVOC
    from wsss_pl.models.deeplab_v2 import DeepLabV2

    for convention in ("caffe_bgr", "imagenet_rgb"):
        net = DeepLabV2(
            num_classes=21, backbone="resnet18", pretrained=None, freeze_bn=False,
            input_convention=convention,
        )  # fmt: skip
        data = WSSSDataModule(SyntheticVOC("unused"), crop_size=24, flip=False)
        data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(net=net))  # type: ignore[assignment]
        data._resolve_pad_colour()
        image, padded = _padded_pixels(data.augment)
        at_input = net.to_weight_input(image[None])[0][:, padded]
        assert float(at_input.abs().max()) < 1e-3, convention  # 0 at the network's input
        if convention == "caffe_bgr":
            assert data.augment.pad_rgb == CAFFE_MEAN_RGB
            # The can-fail sibling: the old padding (ImageNet mean) is not 0 for Caffe input.
            old = BatchAugment(crop_size=24, flip=False)
            old_image, old_padded = _padded_pixels(old)
            old_input = net.to_weight_input(old_image[None])[0][:, old_padded]
            assert float(old_input.abs().max()) > 0.3
        else:
            assert float(image[:, padded].abs().max()) < 1e-6


def test_global_batch_split_and_sampler_give_every_step_the_same_images() -> None:
    assert split_global_batch(10, 1) == [10]
    assert split_global_batch(10, 3) == [4, 3, 3]
    assert split_global_batch(10, 8) == [2, 2, 1, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="global_batch_size 10 is smaller than the 16"):
        split_global_batch(10, 16)
    dataset = list(range(23))  # 3 steps of 10, the last completed with the epoch's first images
    for epoch in (0, 1):
        streams = {}
        for world in (1, 2, 3, 8):
            per_rank = []
            for rank in range(world):
                sampler = GlobalBatchSampler(dataset, 10, num_replicas=world, rank=rank, seed=5)
                sampler.set_epoch(epoch)
                items = list(sampler)
                assert len(items) == len(sampler) == 3 * sampler.batch_size
                per_rank.append(
                    [
                        items[i : i + sampler.batch_size]
                        for i in range(0, len(items), sampler.batch_size)
                    ]
                )
            steps = [[x for rank in per_rank for x in rank[s]] for s in range(3)]
            assert [[x[3] for x in step] for step in steps] == [list(range(10))] * 3
            streams[world] = steps
        assert streams[1] == streams[2] == streams[3] == streams[8]  # indices, seeds, positions
        flat = [x[0] for step in streams[1] for x in step]
        assert sorted(set(flat)) == dataset and flat[23:] == flat[:7]
    assert [x[0] for x in GlobalBatchSampler(dataset, 10, 1, 0, seed=50)] != flat


def _outputs_and_target(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(10, 4, 9, 11, generator=generator)
    target = torch.randint(0, 4, (10, 9, 11), generator=generator)
    # Unequal valid pixels per image, as crops padded with 255 give.
    for i in range(10):
        target[i, : i % 7] = 255
    target[:5, :, :6] = 255  # the first half has fewer valid pixels ...
    logits[:5] *= 4.0  # ... and other per-pixel losses, so the normalisations differ
    return logits, target


def test_step_loss_groups_match_deeplab_pytorch_iter_size() -> None:
    """groups=2 is deeplab-pytorch's ITER_SIZE 2: the mean of the two 5-image batches' pixel
    means; groups=1 one pixel mean over all 10 images. Both differ when valid counts differ."""
    logits, target = _outputs_and_target()
    ce = torch.nn.functional.cross_entropy
    halves = (
        ce(logits[:5], target[:5], ignore_index=255) + ce(logits[5:], target[5:], ignore_index=255)
    ) / 2
    loss, value = step_loss([logits], target, torch.arange(10), 10, groups=2)
    torch.testing.assert_close(loss, halves) and torch.testing.assert_close(value, halves)
    whole, _ = step_loss([logits], target, torch.arange(10), 10, groups=1)
    torch.testing.assert_close(whole, ce(logits, target, ignore_index=255))
    assert abs(float(whole - halves)) > 1e-3  # the two normalisations are told apart


def test_step_loss_shares_add_up_to_the_one_rank_loss_and_gradient() -> None:
    """Ranks holding [4, 3, 3] images, each with the summed statistics of all ranks, back-propagate
    losses whose mean (what DDP's gradient averaging computes) has the one-rank gradient."""
    logits, target = _outputs_and_target()
    full = logits.clone().requires_grad_(True)
    reference, _ = step_loss([full], target, torch.arange(10), 10, groups=2)
    reference.backward()
    parts = logits.clone().requires_grad_(True)
    bounds = [(0, 4), (4, 7), (7, 10)]
    stats = []
    for start, stop in bounds:  # what each rank contributes to the all-reduce
        step_loss([parts[start:stop].detach()], target[start:stop], torch.arange(start, stop), 10,
                  groups=2, world_size=3, all_reduce_sum=lambda t: stats.append(t) or t)  # fmt: skip
    total = torch.stack(stats).sum(0)
    losses = [
        step_loss(
            [parts[a:b]],
            target[a:b],
            torch.arange(a, b),
            10,
            groups=2,
            world_size=3,
            all_reduce_sum=lambda t: total,
        )[0]  # fmt: skip
        for a, b in bounds
    ]
    (sum(losses) / 3).backward()
    torch.testing.assert_close(parts.grad, full.grad, rtol=1e-5, atol=1e-8)
    # The can-fail sibling: DDP's average of per-rank means weighs a 3-image rank's images more.
    naive = logits.clone().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy
    (sum(ce(naive[a:b], target[a:b], ignore_index=255) for a, b in bounds) / 3).backward()
    assert float((naive.grad - full.grad).abs().max()) > 100 * float(full.grad.abs().max()) * 1e-5


def test_batch_size_and_global_batch_size_are_exclusive() -> None:
    from wsss_pl.data.datamodule import WSSSDataModule
    from wsss_pl.data.synthetic import SyntheticVOC
    from wsss_pl.errors import ConfigError

    with pytest.raises(ConfigError, match="set exactly one .* --data.global_batch_size null"):
        WSSSDataModule(SyntheticVOC("unused"), batch_size=4, global_batch_size=10)
    with pytest.raises(ConfigError, match="data.global_batch_size is 0; .* over all devices"):
        WSSSDataModule(SyntheticVOC("unused"), batch_size=None, global_batch_size=0)
    data = WSSSDataModule(SyntheticVOC("unused"), batch_size=None, global_batch_size=10)
    assert data.batch_size == 10  # the label pass packs calls of up to this many images
