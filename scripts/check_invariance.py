"""Batch-invariance check of the labeller on any device: label the same images in another order
and batch composition in another process, and compare the label bytes.

One run labels ``--num-images`` synthetic images of three shapes (two landscape sizes and a
portrait) with ``batch_mode: fixed`` in calls of ``--call-size`` images, in the given ``--order``,
and writes a JSON of per-image SHA-256 hashes of the label map and of the box/score metadata.
``--compare A.json B.json`` prints how many images agree and exits 1 on any difference.

Usage (what scripts/gpu_check.sh runs, fp32 then bf16, each order in its own process):
    python scripts/check_invariance.py --device cuda --models real-size-random --out a.json
    python scripts/check_invariance.py --device cuda --models real-size-random --order shuffled \
        --call-size 7 --out b.json
    python scripts/check_invariance.py --compare a.json b.json
``--models tiny`` runs the same on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import torch
from bench_labeling import add_logit_temperature, calibrate_box_threshold, make_inputs
from bench_labeling import build_labeler as build_bench_labeler

from wsss_pl.labeling.invariance import deterministic_labelling, per_image_bi_attention
from wsss_pl.labeling.labeler import PseudoLabeler


def build_labeler(models: str, sam_type: str, batch: int, device: torch.device) -> PseudoLabeler:
    labeler = build_bench_labeler(models, sam_type, seed=0)
    labeler.detector.batch_mode, labeler.detector.batch_size = "fixed", batch
    per_image_bi_attention(labeler.detector.model)
    labeler.segmenter.fixed_batch, labeler.segmenter.encoder_batch_size = True, batch
    return labeler.to(device)


def images_of_three_shapes(count: int, device: torch.device):
    thirds = [count - 2 * (count // 3), count // 3, count // 3]
    images, present = [], []
    for k, (n, (h, w)) in enumerate(zip(thirds, [(375, 500), (333, 500), (500, 375)], strict=True)):
        batch_images, batch_present = make_inputs(n, h, w, 0.0, seed=k, device=device)
        images += batch_images
        present += batch_present
    return images, present


def digest(result) -> dict[str, str]:
    label = result.label.to("cpu", torch.uint8).contiguous().numpy().tobytes()
    meta = json.dumps(result.metadata["instances"], sort_keys=True).encode()
    return {"label": hashlib.sha256(label).hexdigest(), "boxes": hashlib.sha256(meta).hexdigest()}


def label(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    labeler = build_labeler(args.models, args.sam_type, args.batch, device)
    images, present = images_of_three_shapes(args.num_images, device)
    # The same calibration in every process: the order of the calibration images is fixed.
    add_logit_temperature(labeler, images, present)
    labeler.detector.set_threshold(calibrate_box_threshold(labeler, images, present, 3))
    order = list(range(len(images)))
    if args.order == "shuffled":
        random.Random(1).shuffle(order)
    hashes: dict[str, dict[str, str]] = {}
    boxes = 0
    bf16 = args.precision == "bf16"
    with (
        deterministic_labelling(device, cpu_threads=1),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
    ):
        for start in range(0, len(order), args.call_size):
            chunk = order[start : start + args.call_size]
            results = labeler([images[i] for i in chunk], [present[i] for i in chunk])
            for i, result in zip(chunk, results, strict=True):
                hashes[str(i)] = digest(result)
                boxes += len(result.metadata["instances"])
    Path(args.out).write_text(json.dumps(hashes, indent=0, sort_keys=True))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"labelled {len(order)} images ({args.order} order, calls of {args.call_size}, fixed "
        f"batch {args.batch}, {args.precision}, {args.models}, {name}): {boxes} boxes -> {args.out}"
    )


def compare(first: str, second: str) -> int:
    a, b = json.loads(Path(first).read_text()), json.loads(Path(second).read_text())
    same_label = sum(a[k]["label"] == b.get(k, {}).get("label") for k in a)
    same_boxes = sum(a[k]["boxes"] == b.get(k, {}).get("boxes") for k in a)
    print(
        f"| images | label maps identical | boxes/scores identical |\n|---:|---:|---:|\n"
        f"| {len(a)} | {same_label}/{len(a)} | {same_boxes}/{len(a)} |"
    )
    return 0 if same_label == same_boxes == len(a) == len(b) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", choices=("tiny", "real-size-random"), default="tiny")
    parser.add_argument("--sam-type", choices=("vit_b", "vit_l", "vit_h"), default="vit_h")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--num-images", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4, help="fixed rows per forward")
    parser.add_argument("--call-size", type=int, default=4, help="images per labeller call")
    parser.add_argument("--order", choices=("sorted", "shuffled"), default="sorted")
    parser.add_argument("--out", default="invariance.json")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    label(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
