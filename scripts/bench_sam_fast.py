"""Benchmark and agreement of SAM's image-encoder fast path (``wsss_pl.labeling.segmenters.sam_fast``).

Rows, all in one process on the same random images and the same random-weight SAM:
original fp32 (baseline), sdpa fp32, original bf16 autocast, sdpa bf16 autocast, and with
``--compile`` sdpa bf16 + torch.compile. Each row reports encoder images/s, the ratio to the
baseline, and its agreement with the baseline: max / mean absolute embedding error and the share
of identical mask pixels (one box per image through SAM's decoder, 3 boxes per image).

Usage:
    python scripts/bench_sam_fast.py --quick            # ViT-B shape at 160 px, CPU
    python scripts/bench_sam_fast.py --device cuda --sam-type vit_h --batch 8 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from bench_common import load_average, synchronize
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    Sam,
)
from segment_anything.modeling.image_encoder import Attention

from wsss_pl.labeling.segmenters.sam import SamSegmenter
from wsss_pl.labeling.segmenters.sam_fast import compile_blocks, use_attention
from wsss_pl.labeling.tiny import vit_b_shaped_sam


def build(args: argparse.Namespace) -> Sam:
    torch.manual_seed(args.seed)
    if args.image_size == 1024:
        sam = sam_model_registry[args.sam_type](checkpoint=None)
    else:
        if args.sam_type != "vit_b":
            raise SystemExit("--image-size other than 1024 is only built for --sam-type vit_b")
        sam = vit_b_shaped_sam(args.image_size)
    # Random weights leave the relative-position tables at zero: give them trained-like values.
    for module in sam.image_encoder.modules():
        if isinstance(module, Attention) and module.use_rel_pos:
            torch.nn.init.normal_(module.rel_pos_h, std=0.5)
            torch.nn.init.normal_(module.rel_pos_w, std=0.5)
    return sam.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sam-type", choices=("vit_b", "vit_l", "vit_h"), default="vit_h")
    parser.add_argument("--image-size", type=int, default=1024, help="encoder input (SAM: 1024)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="ViT-B shape, 160 px, batch 2")
    args = parser.parse_args()
    if args.quick:
        args.sam_type, args.image_size, args.batch, args.repeats = "vit_b", 160, 2, 2
    device = torch.device(args.device)
    sam = build(args).to(device)
    segmenter = SamSegmenter(sam, encoder_batch_size=args.batch)
    size = args.image_size
    generator = torch.Generator().manual_seed(args.seed)
    images = [
        torch.randint(0, 256, (3, size * 3 // 4, size), dtype=torch.uint8, generator=generator)
        for _ in range(args.batch)
    ]
    boxes = []
    for _ in images:
        xy = torch.rand(3, 2, generator=generator) * size * 0.5
        wh = torch.rand(3, 2, generator=generator) * size * 0.4 + size * 0.1
        box = torch.cat([xy, xy + wh], 1)
        box[:, 1::2] = box[:, 1::2].clamp(max=size * 3 // 4 - 1)
        boxes.append(box.to(device))
    images = [i.to(device) for i in images]
    inputs = [segmenter._input_image(i) for i in images]
    pixels = torch.stack([x for x, _ in inputs])

    configs = [("original", "fp32", False), ("sdpa", "fp32", False)]
    configs += [("original", "bf16", False), ("sdpa", "bf16", False)]
    if args.compile:
        configs.append(("sdpa", "bf16", True))
    results = []
    reference = masks_reference = None
    for attention, precision, compiled in configs:
        use_attention(sam.image_encoder, attention)
        encoder = sam.image_encoder
        if compiled:
            compile_blocks(encoder)

        def autocast(precision: str = precision) -> contextlib.AbstractContextManager[None]:
            if precision == "bf16":
                return torch.autocast(device.type, dtype=torch.bfloat16)
            return contextlib.nullcontext()

        with torch.no_grad(), autocast():
            embeddings = encoder(pixels).float()  # warm-up (compiles) and the compared output
            masks = [
                segmenter._decode({"image_embeddings": e[None]}, b, size, i)[0]
                for e, b, (_, size), i in zip(embeddings, boxes, inputs, images, strict=True)
            ]
            times = []
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.repeats):
                synchronize(device)
                start = time.perf_counter()
                encoder(pixels)
                synchronize(device)
                times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        if reference is None:
            reference, masks_reference = embeddings, masks
        error = (embeddings - reference).abs()
        same = sum(int((a == b).sum()) for a, b in zip(masks, masks_reference, strict=True))
        total = sum(m.numel() for m in masks)
        name = f"{attention} {precision}" + (" + compile" if compiled else "")
        results.append((name, statistics.median(times), error, same / total, peak))

    print(f"# SAM image encoder: original vs sdpa ({args.sam_type} shape, random weights)\n")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"- device {gpu}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load average {load_average()}; input {size}x{size}, batch {args.batch}, "
        f"median of {args.repeats}; embedding scale: std {float(reference.std()):.3f}\n"
    )
    print(
        "| config | encoder img/s | ratio vs original fp32 | max abs emb err | mean abs emb err "
        "| mask pixels identical | peak CUDA MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = results[0][1]
    for name, seconds, error, agreement, peak in results:
        print(
            f"| {name} | {args.batch / seconds:.2f} | {base / seconds:.2f}x | "
            f"{float(error.max()):.2e} | {float(error.mean()):.2e} | {100 * agreement:.3f}% | "
            f"{'n/a' if peak is None else f'{peak:.0f}'} |"
        )


if __name__ == "__main__":
    main()
