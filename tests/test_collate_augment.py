"""Padded collation and paired device-side augmentation."""

from __future__ import annotations

import torch

from wsss_pl.data.augment import BatchAugment
from wsss_pl.data.base import Sample
from wsss_pl.data.collate import collate_samples


def _sample(sample_id: str, height: int, width: int, with_gt: bool, with_target: bool) -> Sample:
    label = torch.randint(0, 21, (height, width), dtype=torch.uint8)
    return Sample(
        id=sample_id,
        image=torch.randint(1, 256, (3, height, width), dtype=torch.uint8),
        labels=torch.zeros(20),
        gt=label if with_gt else None,
        target=label.clone() if with_target else None,
    )


def test_collate_pads_images_with_zero_and_masks_with_ignore() -> None:
    a = _sample("a", 5, 7, with_gt=True, with_target=True)
    b = _sample("b", 8, 4, with_gt=False, with_target=False)
    batch = collate_samples([a, None, b])
    assert batch["id"] == ["a", "b"]
    assert batch["num_skipped"] == 1
    assert batch["image"].shape == (2, 3, 8, 7)
    assert torch.equal(batch["size"], torch.tensor([[5, 7], [8, 4]]))
    assert torch.equal(batch["image"][0, :, :5, :7], a["image"])
    assert int(batch["image"][0, :, 5:].max()) == 0 and int(batch["image"][1, :, :, 4:].max()) == 0
    assert torch.equal(batch["gt"][0, :5, :7], a["gt"])
    assert bool((batch["gt"][0, 5:] == 255).all()) and bool((batch["gt"][1] == 255).all())
    assert batch["has_gt"].tolist() == [True, False]
    assert batch["needs_label"].tolist() == [False, True]
    assert bool((batch["target"][1] == 255).all())


def test_train_augmentation_keeps_image_and_masks_aligned() -> None:
    """Pixel colour encodes the class: after scale/crop/flip each mask must still match the image."""
    torch.manual_seed(0)
    height, width = 40, 60
    label = torch.zeros(height, width, dtype=torch.uint8)
    label[:, 30:] = 1
    label[10:20, 5:15] = 2
    colours = torch.tensor([[0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=torch.uint8)
    image = colours[label.long()].permute(2, 0, 1).contiguous()
    sample = Sample(id="x", image=image, labels=torch.zeros(20), gt=label, target=label.clone())
    augment = BatchAugment(
        crop_size=33, scale_range=(0.6, 1.4), flip=True, mean=(0, 0, 0), std=(1, 1, 1)
    )
    for _ in range(10):
        batch = augment.train_batch(collate_samples([sample, sample]))
        assert batch["image"].shape == (2, 3, 33, 33) and batch["image"].dtype == torch.float32
        for i in range(2):
            target, gt = batch["target"][i], batch["gt"][i]
            assert torch.equal(target, gt)
            assert set(target.unique().tolist()) <= {0, 1, 2, 255}
            # Interior pixels (away from class borders, where bilinear blends) must agree.
            rgb = batch["image"][i]
            red, blue = rgb[0] > 0.9, rgb[2] > 0.9
            dark = rgb.sum(0) < 0.1
            assert bool((target[red & ~blue] != 2).all()) and bool((target[blue] != 1).all())
            # Pixels whose 8 neighbours share their label (bilinear blends only at borders).
            padded_t = torch.nn.functional.pad(target[None, None].float(), (1, 1, 1, 1), value=-1)
            windows = torch.nn.functional.unfold(padded_t, 3).view(9, *target.shape)
            interior = (windows == target.float()).all(0)
            for class_id, colour in ((1, red), (0, dark)):
                inside = interior & (target == class_id)
                if int(inside.sum()) >= 10:
                    assert float(colour[inside].float().mean()) > 0.8
            padded = target == 255
            if bool(padded.any()):  # padding is mean-coloured image (0 here) with ignored labels
                assert float(rgb[:, padded].abs().max()) == 0.0


def test_eval_batch_only_normalises() -> None:
    sample = _sample("a", 6, 9, with_gt=True, with_target=False)
    augment = BatchAugment()
    batch = augment.eval_batch(collate_samples([sample]))
    assert batch["image"].shape == (1, 3, 6, 9)
    restored = augment.denormalize(batch["image"])
    assert (restored.int() - sample["image"][None].int()).abs().max() <= 1


def test_augmentation_is_seeded_per_rank() -> None:
    """Equal seeds draw the same scale/crop/flip; the per-rank seeds of two ranks do not."""
    label = torch.arange(40 * 60, dtype=torch.int64).remainder(21).to(torch.uint8).view(40, 60)
    sample = Sample(
        id="x",
        image=torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8),
        labels=torch.zeros(20),
        gt=label,
        target=label.clone(),
    )

    def draw(seed: int) -> torch.Tensor:
        augment = BatchAugment(crop_size=21, scale_range=(0.5, 1.5))
        augment.seed(seed)
        return torch.cat(
            [augment.train_batch(collate_samples([sample]))["target"] for _ in range(4)]
        )

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(7 + 1_000_003))


def test_padded_eval_sampler_flags_repeats_and_keeps_shards_equal() -> None:
    from wsss_pl.data.samplers import PaddedEvalSampler

    shards = [list(PaddedEvalSampler(list(range(5)), num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]  # equal steps on every rank
    counted = sorted(i for shard in shards for i, padding in shard if not padding)
    assert counted == [0, 1, 2, 3, 4]  # each image exactly once
    assert [i for shard in shards for i, padding in shard if padding] == [0]
