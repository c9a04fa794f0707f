"""Benchmark a DeepLab-v2 training step (images/s) and the on-device batch augmentation.

One step is what ``SegmentationModule.training_step`` plus the optimiser do: forward of
``DeepLabV2`` (OS8, frozen BatchNorm) on normalised crops, bilinear upsampling of the logits to the
crop, cross-entropy with ignore 255, backward, SGD (momentum 0.9, the model's 1x/10x/20x lr
groups). Inputs are random crops already on the device, so only the model is timed.

Rows: backbones (default resnet101 = baseline, resnet50, resnet18) x precision (fp32, and bf16
autocast on CUDA) x memory format (contiguous, plus channels_last with ``--channels-last``).
FLOPs of one step are counted with ``torch.utils.flop_counter.FlopCounterMode`` (during the first
warm-up step) to give GFLOP per image and the achieved TFLOP/s; the anchor it is compared with is
about 450 GFLOP per training image for R101 OS8 at 321x321.

Then Lightning's overhead: ``Trainer.fit`` of ``SegmentationModule`` (the real training_step,
its logging, counters and poly schedule) against a plain PyTorch loop doing the same forward, loss,
backward, SGD and poly-lr step, on the same model, batches and DataLoader (random crops on the
host, moved to the device each step in both). Both time the steps after the warm-up; the ratio is
plain / Lightning seconds (1.00 = no overhead; the target is >= 0.95).

Separately: ``BatchAugment.train_batch`` (scale, crop 321, flip, normalise) on a collated uint8
batch of VOC-sized images on the same device, against the baseline model step.

Usage:
    python scripts/bench_train_step.py --quick
    python scripts/bench_train_step.py --device cuda --channels-last    # batch 10, fp32 + bf16
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from bench_common import load_average, maxrss_mib, synchronize
from torch.optim import SGD
from torch.utils.flop_counter import FlopCounterMode

from wsss_pl.classes import IGNORE_INDEX
from wsss_pl.data.augment import BatchAugment
from wsss_pl.models.deeplab_v2 import DeepLabV2

ANCHOR_GFLOP_PER_IMAGE = 450.0  # R101 OS8 at 321x321, one training image (forward + backward)


@dataclass
class Row:
    backbone: str
    precision: str
    memory_format: str
    step_s: float | None
    batch: int
    gflop_per_step: float | None
    peak_mib: float | None
    note: str = ""


def timed_median(
    fn: Callable[[], object], device: torch.device, warmup: int, repeats: int
) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_step(
    backbone: str,
    precision: str,
    memory_format: str,
    args: argparse.Namespace,
    device: torch.device,
    count_flops: bool,
) -> Row:
    torch.manual_seed(args.seed)
    model = DeepLabV2(num_classes=21, backbone=backbone).to(device)  # type: ignore[arg-type]
    layout = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = SGD(model.param_groups(2.5e-4, 5e-4), lr=2.5e-4, momentum=0.9)
    crop = args.crop_size
    images = torch.randn(args.batch_size, 3, crop, crop, device=device)
    images = images.contiguous(memory_format=layout)
    target = torch.randint(0, 21, (args.batch_size, crop, crop), device=device)
    target[:, :, : crop // 10] = IGNORE_INDEX  # some ignored pixels, as in real labels

    def autocast() -> contextlib.AbstractContextManager[None]:
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(images)
            logits = F.interpolate(logits, size=(crop, crop), mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        loss.backward()
        optimizer.step()

    gflop = None
    warmup = args.warmup
    if count_flops:
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        gflop = counter.get_total_flops() / 1e9
        warmup -= 1
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = maxrss_mib()
    seconds = timed_median(step, device, max(warmup, 0), args.repeats)
    if device.type == "cuda":
        peak: float | None = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = maxrss_mib() - rss_before
    return Row(backbone, precision, memory_format, seconds, args.batch_size, gflop, peak)


class _Crops(torch.utils.data.Dataset):
    """Random normalised crops and labels with the batch keys ``SegmentationModule`` reads."""

    def __init__(self, count: int, crop: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(count, 3, crop, crop, generator=generator)
        self.targets = torch.randint(0, 21, (count, crop, crop), generator=generator)
        self.targets[:, :, : crop // 10] = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, object]:
        return {"image": self.images[index], "target": self.targets[index], "has_gt": False,
                "gt": self.targets[index], "num_skipped": 0, "num_labelled": 0,
                "num_unmatched_boxes": 0, "num_missing_classes": 0}  # fmt: skip


def lightning_overhead(args: argparse.Namespace, device: torch.device) -> tuple[float, float, str]:
    """(plain-loop seconds, Lightning fit seconds) for the same timed steps, and a description."""
    import lightning.pytorch as pl

    from wsss_pl.module import SegmentationModule

    warmup, steps = max(args.warmup, 1), args.lightning_steps
    data = _Crops(args.batch_size * (warmup + steps), args.crop_size, args.seed)

    def loader() -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            data, batch_size=args.batch_size, shuffle=False, pin_memory=device.type == "cuda"
        )

    def model() -> DeepLabV2:
        torch.manual_seed(args.seed)
        return DeepLabV2(num_classes=21, backbone=args.lightning_backbone)  # type: ignore[arg-type]

    # Plain loop: the same math as SegmentationModule.training_step + its optimizer/scheduler.
    net = model().to(device)
    module = SegmentationModule(net, max_steps=warmup + steps)
    optimizer = SGD(net.param_groups(2.5e-4, 5e-4), lr=2.5e-4, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(1 - step / (warmup + steps), 0.0) ** 0.9
    )
    start = 0.0
    for index, batch in enumerate(loader()):
        if index == warmup:
            synchronize(device)
            start = time.perf_counter()
        images = batch["image"].to(device, non_blocking=True)
        target = batch["target"].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(module(images), target, ignore_index=IGNORE_INDEX)
        loss.backward()
        optimizer.step()
        scheduler.step()
    synchronize(device)
    plain = time.perf_counter() - start

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.start = 0.0
            self.end = 0.0

        def on_train_batch_start(self, trainer: pl.Trainer, *_: object) -> None:
            if trainer.global_step == warmup:
                synchronize(device)
                self.start = time.perf_counter()

        def on_train_end(self, trainer: pl.Trainer, *_: object) -> None:
            synchronize(device)
            self.end = time.perf_counter()

    clock = StepClock()
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        max_steps=warmup + steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=[clock],
    )  # fmt: skip
    trainer.fit(SegmentationModule(model(), max_steps=warmup + steps), train_dataloaders=loader())
    description = (
        f"{args.lightning_backbone} fp32, batch {args.batch_size}, crop {args.crop_size}, "
        f"{steps} timed steps after {warmup} warm-up, DataLoader 0 workers"
    )
    return plain, clock.end - clock.start, description


def augment_cost(args: argparse.Namespace, device: torch.device) -> tuple[float, str]:
    """Median seconds of BatchAugment.train_batch on a collated VOC-like batch on ``device``."""
    generator = torch.Generator().manual_seed(args.seed)
    sizes = [(500, 375) if i % 4 == 3 else (375, 500) for i in range(args.batch_size)]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    image = torch.zeros(args.batch_size, 3, height, width, dtype=torch.uint8)
    target = torch.full((args.batch_size, height, width), IGNORE_INDEX, dtype=torch.uint8)
    for i, (h, w) in enumerate(sizes):
        image[i, :, :h, :w] = torch.randint(0, 256, (3, h, w), generator=generator)
        target[i, :h, :w] = torch.randint(0, 21, (h, w), generator=generator)
    batch = {
        "image": image.to(device),
        "target": target.to(device),
        "gt": target.clone().to(device),
        "size": torch.tensor(sizes, dtype=torch.int64),  # stays on the CPU, as after transfer
    }
    augment = BatchAugment(crop_size=args.crop_size)
    description = (
        f"{args.batch_size} image(s) ({sum(1 for h, _ in sizes if h < w)} 375x500 + "
        f"{sum(1 for h, _ in sizes if h > w)} 500x375, padded to {height}x{width}), "
        f"crop {args.crop_size}, scale 0.5-1.5, flip"
    )
    seconds = timed_median(
        lambda: augment.train_batch(dict(batch)), device, args.warmup + 2, args.repeats * 5
    )
    return seconds, description


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=0, help="0: 10 on cuda, 2 on cpu")
    parser.add_argument("--crop-size", type=int, default=321)
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["resnet101", "resnet50", "resnet18"],
        choices=("resnet18", "resnet34", "resnet50", "resnet101"),
        help="the first one, in fp32, is the baseline row",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp32", "bf16"),
        default=None,
        help="default: fp32 bf16 on cuda, fp32 on cpu",
    )
    parser.add_argument("--channels-last", action="store_true", help="add channels_last rows")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps; the median is shown")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per row")
    parser.add_argument("--no-flops", action="store_true", help="skip FlopCounterMode")
    parser.add_argument(
        "--lightning-steps", type=int, default=20, help="timed steps of fit vs plain loop"
    )
    parser.add_argument(
        "--lightning-backbone", default="", help="backbone of fit vs plain (default: baseline's)"
    )
    parser.add_argument("--no-lightning", action="store_true", help="skip fit vs plain loop")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="batch 1, 1 warm-up (the FLOP count), 2 repeats"
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.batch_size <= 0:
        args.batch_size = 10 if args.device == "cuda" else 2
    if args.precisions is None:
        args.precisions = ["fp32", "bf16"] if args.device == "cuda" else ["fp32"]
    if args.quick:
        args.batch_size, args.warmup, args.repeats = 1, 1, 2
        args.lightning_steps = 4
        args.lightning_backbone = args.lightning_backbone or "resnet18"
    args.lightning_backbone = args.lightning_backbone or args.backbones[0]
    if "fp32" not in args.precisions:
        args.precisions.insert(0, "fp32")  # the baseline row is fp32
    return args


def main() -> None:
    args = parse_args()
    # Random weights with frozen BatchNorm (the training default) are fine for timing; silence the
    # model's "randomly initialised backbone" warning, printed once per row otherwise.
    logging.getLogger("wsss_pl.models.deeplab_v2").setLevel(logging.ERROR)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    formats = ["contiguous", "channels_last"] if args.channels_last else ["contiguous"]

    rows: list[Row] = []
    flops: dict[str, float | None] = {}
    for backbone in args.backbones:
        for precision in args.precisions:
            for memory_format in formats:
                count = not args.no_flops and backbone not in flops
                try:
                    row = measure_step(backbone, precision, memory_format, args, device, count)
                except Exception as error:  # noqa: BLE001 - report the failing configuration
                    message = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                    row = Row(backbone, precision, memory_format, None, args.batch_size, None, None)
                    row.note = f"FAILED {message}"
                if count:
                    flops[backbone] = row.gflop_per_step
                row.gflop_per_step = flops.get(backbone)
                rows.append(row)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    aug_s, aug_desc = augment_cost(args, device)
    overhead = None if args.no_lightning else lightning_overhead(args, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print("# DeepLab-v2 training step\n")
    print(
        f"- device: {args.device} ({name}), torch {torch.__version__}, CPU threads "
        f"{torch.get_num_threads()}, os.cpu_count {os.cpu_count()}, load average {load_average()}"
    )
    print(
        f"- batch {args.batch_size}, crop {args.crop_size}, OS8, 21 classes, SGD; warm-up "
        f"{args.warmup} steps, median of {args.repeats} steps; FLOPs from FlopCounterMode on one "
        f"step (forward + backward), anchor {ANCHOR_GFLOP_PER_IMAGE:.0f} GFLOP/image (R101)\n"
    )
    base = rows[0]
    memory = "peak CUDA alloc MiB" if device.type == "cuda" else "maxrss growth MiB"
    print(
        "| backbone | precision | memory format | images/s | ms/step | ratio vs baseline | "
        f"GFLOP/image | vs 450 anchor | achieved TFLOP/s | {memory} |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        label = f"{row.backbone}{' (baseline)' if row is base else ''}"
        if row.step_s is None:
            print(f"| {label} | {row.precision} | {row.memory_format} | {row.note} ||||||")
            continue
        ratio = f"{base.step_s / row.step_s:.2f}x" if base.step_s else "n/a"
        per_image = f"{row.gflop_per_step / row.batch:.0f}" if row.gflop_per_step else "n/a"
        anchor = (
            f"{row.gflop_per_step / row.batch / ANCHOR_GFLOP_PER_IMAGE:.2f}"
            if row.gflop_per_step
            else "n/a"
        )
        tflops = f"{row.gflop_per_step / row.step_s / 1e3:.3f}" if row.gflop_per_step else "n/a"
        peak = "n/a" if row.peak_mib is None else f"{row.peak_mib:.0f}"
        print(
            f"| {label} | {row.precision} | {row.memory_format} | "
            f"{row.batch / row.step_s:.2f} | {1000 * row.step_s:.1f} | {ratio} | {per_image} | "
            f"{anchor} | {tflops} | {peak} |"
        )

    print(f"\n## On-device augmentation vs the model step ({args.device})\n")
    print("| what | ms/batch | share of baseline step |")
    print("|---|---:|---:|")
    print(f"| BatchAugment.train_batch: {aug_desc} | {1000 * aug_s:.1f} | ", end="")
    print(f"{100 * aug_s / base.step_s:.1f}% |" if base.step_s else "n/a |")
    if base.step_s:
        print(
            f"| model step, {base.backbone} {base.precision} (baseline) | {1000 * base.step_s:.1f} | 100% |"
        )
    if overhead is not None:
        plain, fit, description = overhead
        steps = args.lightning_steps
        print(f"\n## Lightning fit vs a plain PyTorch loop ({description})\n")
        print("| loop | ms/step | ratio (plain / this) |")
        print("|---|---:|---:|")
        print(f"| plain PyTorch loop (baseline) | {1000 * plain / steps:.1f} | 1.00x |")
        print(f"| Lightning Trainer.fit | {1000 * fit / steps:.1f} | {plain / fit:.2f}x |")
    if device.type == "cpu":
        print(
            "\nmaxrss growth: rise of the process's resident high-water mark during the row "
            "(0 once an earlier row reached a higher peak)."
        )


if __name__ == "__main__":
    main()
