"""Benchmark the PseudoLabeler (Grounding DINO + SAM): labelling throughput in images/s.

Rows, all in one process on the same images (``batch_mode``, ``wsss_pl.labeling.invariance``):
- baseline: ``per_image``, one image per call (detector then SAM per image, the released way);
- ``fixed`` B: calls of B images, every detector forward exactly B rows of one shape and every SAM
  encoder forward exactly B images (zero-padded), captions padded to 256 tokens: the default,
  whose labels are bit-identical whatever the batch;
- ``free`` B: calls of B images, same-shape images batched as they come, nothing padded (labels
  may change in the last bits with the batch mates);
  the last column is the share of label pixels identical to the per-image baseline's;
- with ``--bf16``: the same under ``torch.autocast(dtype=bfloat16)``; a failure is reported as a
  row, the wrappers are not patched.
- with ``--fast``: the fast path, SAM's encoder with SDPA attention (``sam_attention: sdpa``) under
  bf16 autocast, at batch 1 and each batch size (``--compile`` adds torch.compile of the SAM
  blocks); the last column is the share of label pixels identical to the fp32 baseline's;
- with ``--label-pass`` (on in ``--quick``): the real label pass (``run_label_pass``: Lightning
  predict loop, DataLoader, cache writes, scoring against ground truth) on a synthetic VOC split
  against the labeler's forward alone on the same images and batch; ratio forward / pass.
Then, for one batch size, the time per stage (detector, SAM image encoder, the rest of SAM,
merge + RLE metadata), measured with forward hooks.

Models: ``--models tiny`` (``wsss_pl.labeling.tiny``, milliseconds on a CPU) or
``--models real-size-random``: a Grounding DINO built from ``GroundingDinoConfig()`` defaults
(Swin-T backbone, BERT-base text encoder, 900 queries: the Swin-T model's architecture) and SAM
``--sam-type`` from ``sam_model_registry[type](checkpoint=None)``, both randomly initialised (no
download). Real-size is meant for a GPU; on a CPU it is only allowed with vit_b and at most 4
images.

Random weights give random boxes with saturated scores. So that SAM's decoder sees a realistic
load, the detector's contrastive logits are divided by their std (a parameter-free forward hook,
one element-wise op) and the box threshold is calibrated on the images (``--boxes-per-image``,
default 3) before timing; every row reports the boxes per image it actually got.
``--boxes-per-image 0`` keeps the paper thresholds and the raw logits.

Usage:
    python scripts/bench_labeling.py --quick                       # tiny models, CPU, < 60 s
    python scripts/bench_labeling.py --device cuda --models real-size-random --sam-type vit_h \
        --num-images 64 --bf16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from bench_common import load_average, maxrss_mib, synchronize
from torch import Tensor, nn

from wsss_pl.classes import VOC
from wsss_pl.labeling.detectors.grounding import GroundingDetector
from wsss_pl.labeling.labeler import LabelResult, PseudoLabeler
from wsss_pl.labeling.segmenters.sam import SamSegmenter


@dataclass
class Row:
    config: str
    batch: int
    seconds: float | None  # median seconds for all images
    images: int
    boxes_per_image: float
    peak_mib: float | None
    note: str = ""
    labels: list[Tensor] | None = None


# --- models ---------------------------------------------------------------------------------


def real_size_detector(seed: int) -> GroundingDetector:
    """Grounding DINO with the Swin-T / BERT-base architecture, random weights."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    from wsss_pl.labeling.detectors.tokenizer import bert_tokenizer

    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    return GroundingDetector(model, bert_tokenizer())


def real_size_segmenter(sam_type: str, seed: int) -> SamSegmenter:
    from segment_anything import sam_model_registry

    torch.manual_seed(seed)
    return SamSegmenter(sam_model_registry[sam_type](checkpoint=None))


def build_labeler(models: str, sam_type: str, seed: int) -> PseudoLabeler:
    if models == "tiny":
        from wsss_pl.labeling.tiny import tiny_detector, tiny_segmenter

        detector, segmenter = tiny_detector(seed), tiny_segmenter(seed)
    else:
        detector, segmenter = real_size_detector(seed), real_size_segmenter(sam_type, seed)
    return PseudoLabeler(detector, segmenter, VOC)


def count_parameters(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


# --- inputs ---------------------------------------------------------------------------------


def make_inputs(
    count: int, height: int, width: int, portrait_fraction: float, seed: int, device: torch.device
) -> tuple[list[Tensor], list[list[str]]]:
    """VOC-like uint8 [3, H, W] images (smooth noise) with 1-3 VOC class names each."""
    generator = torch.Generator().manual_seed(seed)
    images, present = [], []
    names = list(VOC.class_names)
    for _ in range(count):
        portrait = torch.rand((), generator=generator).item() < portrait_fraction
        h, w = (width, height) if portrait else (height, width)
        coarse = torch.rand(1, 3, h // 16 + 1, w // 16 + 1, generator=generator)
        smooth = nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
        noise = torch.rand(3, h, w, generator=generator) * 0.2
        images.append(((smooth * 0.8 + noise) * 255).clamp(0, 255).to(torch.uint8).to(device))
        k = int(torch.randint(1, 4, (), generator=generator))
        order = torch.randperm(len(names), generator=generator)[:k].tolist()
        present.append([names[i] for i in sorted(order)])
    return images, present


def sample_inputs(root: str, device: torch.device) -> tuple[list[Tensor], list[list[str]]]:
    """The real samples: 3 VOC train images (image_labels.json) and 14 VOC val 513x513 crops
    (their manifest's classes), uint8 [3, H, W] with their image-level VOC class names."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    base = Path(root)
    names = list(VOC.class_names)
    labels = json.loads((base / "voc_sample/image_labels.json").read_text())
    items = [
        (path, labels[path.stem])
        for path in sorted((base / "voc_sample/VOC2012/JPEGImages").glob("*.jpg"))
    ]
    for entry in json.loads((base / "voc_val_crops/manifest.json").read_text()):
        path = base / "voc_val_crops/images" / f"{entry['id']}.jpg"
        if not path.is_file():
            path = next((base / "voc_val_crops/images").glob(f"{entry['id']}.*"))
        items.append((path, [names[c - 1] for c in entry["classes"]]))
    images = [
        torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1)
        for p, _ in items
    ]
    return [image.to(device) for image in images], [sorted(c, key=names.index) for _, c in items]


class LogitTemperature:
    """Forward hook dividing Grounding DINO's contrastive (image x token) logits by a constant.

    Random weights give logits of std ~10-20, whose sigmoid scores are exactly 1.0 in float32 for
    many boxes, so no box threshold can pick a few of them. Dividing by the logits' std (one
    element-wise op on [B, 900, 256], negligible) makes the scores spread out like a trained
    model's. The modules hooked have no parameters; the wrappers are untouched.
    """

    def __init__(self) -> None:
        self.scale = 1.0
        self.recording = True  # collect the raw logits' std (syncs the device; calibration only)
        self.stds: list[float] = []

    def __call__(self, _module: nn.Module, _args: object, output: Tensor) -> Tensor:
        if self.recording:
            finite = output[torch.isfinite(output)]
            if finite.numel() > 1:
                self.stds.append(float(finite.float().std()))
        return output * self.scale


def add_logit_temperature(
    labeler: PseudoLabeler, images: list[Tensor], present: list[list[str]]
) -> float:
    """Hook ``LogitTemperature`` into the detector and set it to 1 / std of the raw logits."""
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        GroundingDinoContrastiveEmbedding,
    )

    hook = LogitTemperature()
    for module in labeler.detector.model.modules():
        if isinstance(module, GroundingDinoContrastiveEmbedding):
            module.register_forward_hook(hook)
    labeler.detector(images[:2], present[:2], VOC)
    hook.scale, hook.recording = 1.0 / statistics.mean(hook.stds), False
    return hook.scale


def calibrate_box_threshold(
    labeler: PseudoLabeler, images: list[Tensor], present: list[list[str]], per_image: float
) -> float:
    """Box threshold at which the (random) detector keeps about ``per_image`` boxes per image."""
    detector = labeler.detector
    scores = []
    for start in range(0, len(images), 4):
        found = detector(images[start : start + 4], present[start : start + 4], VOC, -1.0)
        scores.extend(d.scores for d in found)
    flat = torch.cat(scores).float().cpu().sort(descending=True).values
    keep = round(per_image * len(images))
    if keep >= flat.numel():
        return -1.0
    if keep <= 0:
        return float(flat[0]) + 1e-6
    # Between the keep-th and the next score, so that ties do not add boxes.
    return float((flat[keep - 1] + flat[keep]) / 2)


# --- timing ---------------------------------------------------------------------------------


def set_batch_mode(labeler: PseudoLabeler, mode: str, batch: int, encoder_batch: int) -> None:
    """Switch the labeler's batching in place (same weights): ``per_image``, ``fixed`` or ``free``."""
    from wsss_pl.labeling.invariance import per_image_bi_attention

    detector, segmenter = labeler.detector, labeler.segmenter
    detector.batch_mode, detector.batch_size = mode, batch
    if mode == "fixed":
        per_image_bi_attention(detector.model)  # idempotent; the identity at batch 1
    segmenter.fixed_batch = mode == "fixed"
    segmenter.encoder_batch_size = 1 if mode == "per_image" else encoder_batch or batch


def label_all(
    labeler: PseudoLabeler,
    images: list[Tensor],
    present: list[list[str]],
    batch: int,
    autocast: Callable[[], contextlib.AbstractContextManager[None]],
) -> list[LabelResult]:
    results: list[LabelResult] = []
    with autocast():
        for start in range(0, len(images), batch):
            results.extend(labeler(images[start : start + batch], present[start : start + batch]))
    return results


def measure(
    labeler: PseudoLabeler,
    images: list[Tensor],
    present: list[list[str]],
    batch: int,
    args: argparse.Namespace,
    device: torch.device,
    config: str,
    autocast: Callable[[], contextlib.AbstractContextManager[None]],
) -> Row:
    for _ in range(args.warmup):  # warm-up calls of this batch size (kernels, allocator, caches)
        label_all(labeler, images[:batch], present[:batch], batch, autocast)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = maxrss_mib()
    times, boxes = [], 0
    for _ in range(args.repeats):
        synchronize(device)
        start = time.perf_counter()
        results = label_all(labeler, images, present, batch, autocast)
        synchronize(device)
        times.append(time.perf_counter() - start)
        boxes = sum(len(r.metadata["instances"]) for r in results)
    if device.type == "cuda":
        peak: float | None = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = maxrss_mib() - rss_before
    labels = [r.label.cpu() for r in results]
    return Row(
        config, batch, statistics.median(times), len(images), boxes / len(images), peak, "", labels
    )


@contextlib.contextmanager
def stage_hooks(
    labeler: PseudoLabeler, device: torch.device, totals: dict[str, float]
) -> Iterator[None]:
    """Accumulate seconds spent inside the detector, the SAM wrapper and SAM's image encoder."""
    modules = {
        "detector": labeler.detector,
        "segmenter": labeler.segmenter,
        "encoder": labeler.segmenter.sam.image_encoder,
    }
    starts: dict[str, float] = {}
    handles = []
    for name, module in modules.items():

        def pre(_module: nn.Module, _args: object, name: str = name) -> None:
            synchronize(device)
            starts[name] = time.perf_counter()

        def post(_module: nn.Module, _args: object, _out: object, name: str = name) -> None:
            synchronize(device)
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - starts.pop(name)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def stage_breakdown(
    labeler: PseudoLabeler,
    images: list[Tensor],
    present: list[list[str]],
    batch: int,
    args: argparse.Namespace,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[None]],
) -> list[tuple[str, float, float]]:
    """(stage, median ms per image, share of the total) for ``batch``-image calls."""
    labeler.segmenter.encoder_batch_size = args.encoder_batch_size or batch
    label_all(labeler, images[:batch], present[:batch], batch, autocast)  # warm-up
    per_stage: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        totals: dict[str, float] = {}
        with stage_hooks(labeler, device, totals):
            synchronize(device)
            start = time.perf_counter()
            label_all(labeler, images, present, batch, autocast)
            synchronize(device)
            total = time.perf_counter() - start
        stages = {
            "detector (resize, Grounding DINO, box selection)": totals["detector"],
            "SAM image encoder": totals.get("encoder", 0.0),
            "SAM rest (resize, prompt encoder, mask decoder, upsampling)": totals["segmenter"]
            - totals.get("encoder", 0.0),
            "merge + RLE metadata": total - totals["detector"] - totals["segmenter"],
            "total": total,
        }
        for name, seconds in stages.items():
            per_stage.setdefault(name, []).append(seconds)
    medians = {name: statistics.median(v) for name, v in per_stage.items()}
    return [(name, 1000 * s / len(images), s / medians["total"]) for name, s in medians.items()]


def label_pass_section(args: argparse.Namespace, device: torch.device) -> None:
    """Print the label pass (``python -m wsss_pl label``'s ``run_label_pass``) against the
    labeler's forward alone: same tiny models, images, batch size and device, one process."""
    import json
    import logging
    import tempfile
    from pathlib import Path

    import lightning.pytorch as pl

    from wsss_pl.data.datamodule import WSSSDataModule
    from wsss_pl.data.synthetic import SyntheticVOC
    from wsss_pl.labeling.invariance import deterministic_labelling
    from wsss_pl.labeling.label_pass import run_label_pass
    from wsss_pl.labeling.online import OnlinePseudoLabels

    logging.getLogger("lightning").setLevel(logging.ERROR)
    count, batch = args.label_pass_images, args.label_pass_batch
    height, width = args.image_size
    with tempfile.TemporaryDirectory() as tmp:
        source = SyntheticVOC(
            root=f"{tmp}/voc", num_train=count, num_val=1, image_size=(height, width)
        )
        labels = OnlinePseudoLabels(
            cache_root=f"{tmp}/cache", detector="tiny", sam_checkpoint="tiny",
            sam_encoder_batch_size=batch, detector_batch_size=batch,
            write_workers=args.write_workers,
        )  # fmt: skip
        data = WSSSDataModule(
            source, labels, batch_size=batch, num_workers=args.label_pass_workers,
            pin_memory=device.type == "cuda",
        )  # fmt: skip
        source.prepare_data()
        labels.prepare_data(source)
        labeler = labels.labeler(device)  # built before both timings
        data.setup("fit")
        dataset = data.datasets["train"]
        samples = [dataset[i] for i in range(count)]
        images = [s["image"].to(device) for s in samples]
        present = [labels.vocabulary.names_of(s["labels"]) for s in samples]  # type: ignore[union-attr]
        # Under the label pass's own kernel settings (CPU: labels.cpu_threads threads), so the
        # ratio compares the pipeline around the forward, not thread counts.
        with deterministic_labelling(device, labels.cpu_threads):
            label_all(labeler, images[:batch], present[:batch], batch, contextlib.nullcontext)
            synchronize(device)
            start = time.perf_counter()
            label_all(labeler, images, present, batch, contextlib.nullcontext)
            synchronize(device)
            forward = time.perf_counter() - start
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, logger=False,
            enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115 - its quality table
            run_label_pass(trainer, data)
        assert labels.cache is not None
        report = json.loads((labels.cache.directory / "label_pass" / "rank0.json").read_text())
        assert len(report["labelled"]) == count, report
        passed = float(report["seconds"])
        stored = len(list(Path(labels.cache.directory).glob("*.png")))
    print(
        f"\n## Label pass vs the labeler's forward alone ({count} synthetic {height}x{width} "
        f"images, batch {batch}, tiny models, {args.label_pass_workers} loader worker(s), "
        f"{args.write_workers} writer thread(s))\n"
    )
    print("| what | s | images/s | ratio (forward / this) |")
    print("|---|---:|---:|---:|")
    print(f"| labeler forward alone (baseline) | {forward:.2f} | {count / forward:.2f} | 1.00x |")
    print(
        f"| label pass (load, collate, label, write {stored} labels, score) | {passed:.2f} | "
        f"{count / passed:.2f} | {forward / passed:.2f}x |"
    )


# --- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models", choices=("tiny", "real-size-random"), default="tiny")
    parser.add_argument("--sam-type", choices=("vit_b", "vit_l", "vit_h"), default="vit_h")
    parser.add_argument("--num-images", type=int, default=32, help="images per timed pass")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument(
        "--encoder-batch-size",
        type=int,
        default=0,
        help="SAM image-encoder batch; 0: the call's batch size",
    )
    parser.add_argument("--image-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument(
        "--portrait-fraction",
        type=float,
        default=0.0,
        help="share of images turned to portrait (W x H); mixed batches pad in the detector",
    )
    parser.add_argument(
        "--detector-image-size",
        type=int,
        default=0,
        help="detector input short side (longer side <= x 1333/800); 0: model default (800, tiny 256)",
    )
    parser.add_argument(
        "--boxes-per-image",
        type=float,
        default=3.0,
        help="calibrate the random detector to about this many boxes per image; 0: paper thresholds",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the median is shown")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per row")
    parser.add_argument("--stage-batch", type=int, default=0, help="0: largest batch size")
    parser.add_argument("--bf16", action="store_true", help="add torch.autocast bf16 rows")
    parser.add_argument("--fast", action="store_true", help="add sdpa + bf16 autocast rows")
    parser.add_argument("--compile", action="store_true", help="with --fast: add a compile row")
    parser.add_argument(
        "--label-pass", action="store_true", help="label pass vs labeler forward (tiny models)"
    )
    parser.add_argument(
        "--label-pass-only", action="store_true", help="only the label-pass section"
    )
    parser.add_argument("--label-pass-images", type=int, default=32)
    parser.add_argument("--label-pass-batch", type=int, default=8)
    parser.add_argument("--label-pass-workers", type=int, default=1)
    parser.add_argument(
        "--write-workers", type=int, default=2, help="label pass cache-writer threads (0: inline)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--sample-data", default="", help="label the real samples in this folder (shared/data)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="tiny models, 8 images, 1 warm-up, 3 repeats"
    )
    args = parser.parse_args()
    if args.quick:
        args.models, args.num_images, args.warmup, args.repeats = "tiny", 8, 1, 3
        args.label_pass, args.label_pass_images = True, 16
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    cpu_real = args.models == "real-size-random" and args.device == "cpu"
    if cpu_real and (args.sam_type != "vit_b" or args.num_images > 4):
        parser.error(
            "real-size models on a CPU: only with --sam-type vit_b and --num-images <= 4 "
            "(tens of seconds per image); use --device cuda for the real benchmark"
        )
    args.batch_sizes = sorted({b for b in args.batch_sizes if 1 < b <= args.num_images})
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.label_pass_only:
        print(
            f"- torch {torch.__version__}, CPU threads {torch.get_num_threads()}, load {load_average()}"
        )
        label_pass_section(args, device)
        return
    torch.manual_seed(args.seed)
    labeler = build_labeler(args.models, args.sam_type, args.seed).to(device)
    if args.detector_image_size:
        labeler.detector.image_size = args.detector_image_size
        labeler.detector.max_size = round(args.detector_image_size * 1333 / 800)
    height, width = args.image_size
    if args.sample_data:
        images, present = sample_inputs(args.sample_data, device)
        args.num_images = len(images)
    else:
        images, present = make_inputs(
            args.num_images, height, width, args.portrait_fraction, args.seed, device
        )
    note = "paper thresholds"
    if args.boxes_per_image > 0:
        scale = add_logit_temperature(labeler, images, present)
        threshold = calibrate_box_threshold(labeler, images, present, args.boxes_per_image)
        labeler.detector.set_threshold(threshold)
        note = f"detector logits x {scale:.3g}, box threshold calibrated to {threshold:.4f}"

    print(f"# PseudoLabeler throughput ({args.models}, {args.device})\n")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"- device: {args.device} ({gpu or platform.machine()}), torch {torch.__version__}, "
        f"CPU threads {torch.get_num_threads()}, os.cpu_count {os.cpu_count()}, "
        f"load average {load_average()}"
    )
    sam_name = "tiny" if args.models == "tiny" else args.sam_type
    print(
        f"- models: detector {count_parameters(labeler.detector):.1f} M params "
        f"(input short side {labeler.detector.image_size}), SAM {sam_name} "
        f"{count_parameters(labeler.segmenter):.1f} M params"
    )
    print(
        f"- {args.num_images} images "
        + (f"from {args.sample_data}" if args.sample_data else f"{height}x{width}")
        + f" (portrait share {args.portrait_fraction}), "
        f"{sum(map(len, present)) / len(present):.2f} classes/image; {note}; "
        f"warm-up {args.warmup} calls, median of {args.repeats} passes\n"
    )

    plain: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext

    def bf16() -> contextlib.AbstractContextManager[None]:
        return torch.autocast(device.type, dtype=torch.bfloat16)

    encoder_batch = args.encoder_batch_size
    set_batch_mode(labeler, "per_image", 1, encoder_batch)
    rows = [measure(labeler, images, present, 1, args, device, "fp32 per_image", plain)]
    for batch in args.batch_sizes:
        for mode in ("fixed", "free"):
            set_batch_mode(labeler, mode, batch, encoder_batch)
            config = f"fp32 {mode} B={batch}"
            rows.append(measure(labeler, images, present, batch, args, device, config, plain))
    set_batch_mode(labeler, "fixed", max(args.batch_sizes, default=1), encoder_batch)
    if args.bf16:
        for batch in [1, *args.batch_sizes]:
            set_batch_mode(labeler, "fixed", batch, encoder_batch)
            config = "bf16 autocast" + (", 1 image/call" if batch == 1 else " batched")
            try:
                rows.append(measure(labeler, images, present, batch, args, device, config, bf16))
            except Exception as error:  # noqa: BLE001 - report whatever autocast breaks
                message = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                rows.append(Row(config, batch, None, len(images), 0.0, None, f"FAILED {message}"))

    if args.fast:
        from wsss_pl.labeling.segmenters.sam_fast import compile_blocks, use_attention

        use_attention(labeler.segmenter.sam.image_encoder, "sdpa")
        variants = [("bf16 + sdpa", False)] + ([("bf16 + sdpa + compile", True)] * args.compile)
        for config, compiled in variants:
            if compiled:
                compile_blocks(labeler.segmenter.sam.image_encoder)
            for batch in [1, *args.batch_sizes]:
                set_batch_mode(labeler, "fixed", batch, encoder_batch)
                try:
                    rows.append(
                        measure(labeler, images, present, batch, args, device, config, bf16)
                    )
                except Exception as error:  # noqa: BLE001 - report whatever breaks
                    message = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                    rows.append(
                        Row(config, batch, None, len(images), 0.0, None, f"FAILED {message}")
                    )
        use_attention(labeler.segmenter.sam.image_encoder, "original")

    base = rows[0]
    assert base.seconds is not None and base.labels is not None
    memory = "peak CUDA alloc MiB" if device.type == "cuda" else "maxrss growth MiB"
    print(
        f"| config | batch | images/s | ms/image | ratio vs baseline | boxes/image | {memory} "
        "| label pixels = baseline |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if row.seconds is None:
            print(f"| {row.config} | {row.batch} | {row.note} | | | | |")
            continue
        rate = row.images / row.seconds
        peak = "n/a" if row.peak_mib is None else f"{row.peak_mib:.0f}"
        same = sum(int((a == b).sum()) for a, b in zip(row.labels or [], base.labels, strict=False))
        agreement = f"{100 * same / sum(b.numel() for b in base.labels):.2f}%"
        print(
            f"| {row.config}{' (baseline)' if row is base else ''} | {row.batch} | {rate:.2f} | "
            f"{1000 * row.seconds / row.images:.1f} | {base.seconds / row.seconds:.2f}x | "
            f"{row.boxes_per_image:.2f} | {peak} | {agreement} |"
        )

    stage_batch = args.stage_batch or (max(args.batch_sizes) if args.batch_sizes else 1)
    stage_batch = min(stage_batch, args.num_images)
    print(f"\n## Where the time goes (fp32, {stage_batch} images/call, forward hooks)\n")
    print("| stage | ms/image | share |")
    print("|---|---:|---:|")
    for name, ms, share in stage_breakdown(
        labeler, images, present, stage_batch, args, device, plain
    ):
        print(f"| {name} | {ms:.1f} | {100 * share:.0f}% |")
    if args.label_pass:
        label_pass_section(args, device)
    if device.type == "cpu":
        print(
            "\nmaxrss growth: rise of the process's resident high-water mark during the row "
            "(0 once an earlier row reached a higher peak)."
        )


if __name__ == "__main__":
    main()
