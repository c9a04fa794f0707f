"""Benchmark the cache-hit data path: from files on disk to a collated batch.

A synthetic VOC-format dataset (``make_synthetic_voc``, 375x500 JPEGs by default) is generated into
a temporary directory, and an ``OnlinePseudoLabels`` cache (tiny models, so the settings need no
weights) is filled with every image's mask through ``PseudoLabelCache.store``. Then, in one
process, per sample:

- JPEG decode alone (PIL ``Image.open(...).convert("RGB")`` to an array): the baseline anchor;
- ``wsss_pl.io.read_image`` (JPEG to a uint8 [3, H, W] tensor);
- palette PNG decode alone (PIL, the cached label PNGs);
- ``VOCDataset[i]`` wrapped in ``LabeledDataset`` with ``GroundTruthLabels`` (JPEG + GT PNG);
- ``LabeledDataset`` with the ``OnlinePseudoLabels`` cache loader (JPEG + GT PNG + cached PNG);
  every sample is checked to be a cache hit (target not None, right size);
- a ``DataLoader`` over the latter with ``collate_samples``, batch 10, ``num_workers`` 0/1/2
  (persistent workers; the first epoch, with worker start-up, is the warm-up). With
  ``--device cuda`` batches are pinned and moved to the GPU inside the timed loop.

Reference rows (not the pipeline's files) when real VOC samples are given (``--real-voc DIR``, or
``$WSSS_PL_SAMPLE_DATA/voc_sample``; neither: no reference rows): decoding the real VOC
JPEGs there (only a few, cycled to ``--num-images`` decodes) and real SegmentationClassAug PNGs.
The synthetic images carry pixel noise, so they are larger and slower to decode than real ones.

ms/sample is the median pass time over all samples divided by their number; "x JPEG" is that
time over the JPEG-decode time (1.00 = as cheap as decoding the image alone).

Usage:
    python scripts/bench_loader.py --quick
    python scripts/bench_loader.py --num-images 500 --workers 0 1 2 4 8 --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_common import load_average
from PIL import Image
from torch.utils.data import DataLoader

from wsss_pl.data.collate import collate_samples
from wsss_pl.data.label_sources import GroundTruthLabels, LabeledDataset
from wsss_pl.data.synthetic import SyntheticVOC
from wsss_pl.data.voc import VOCDataset
from wsss_pl.io import read_image
from wsss_pl.labeling.online import OnlinePseudoLabels


def time_passes(run_pass: Callable[[], None], warmup: int, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``run_pass`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run_pass()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_pass()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_jpeg(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def decode_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def fill_cache(online: OnlinePseudoLabels, dataset: VOCDataset) -> None:
    """Store every image's ground-truth mask as its cached pseudo-label."""
    assert online.cache is not None
    for sample_id in dataset.ids:
        label = dataset.load_gt(sample_id)
        assert label is not None
        height, width = label.shape
        metadata = {
            "id": sample_id,
            "height": int(height),
            "width": int(width),
            "classes": dataset.image_labels(sample_id),
            "instances": [],
            "missing_classes": [],
            "num_unmatched_boxes": 0,
        }
        online.cache.store(sample_id, label, metadata)


def check_cache_hits(dataset: LabeledDataset) -> None:
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample is not None
        target = sample["target"]
        if target is None or target.shape != sample["image"].shape[1:]:
            raise RuntimeError(f"sample {sample['id']} is not a cache hit")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the median is shown")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per row")
    parser.add_argument(
        "--root", type=Path, default=None, help="dataset + cache directory (default: temporary)"
    )
    sample_data = os.environ.get("WSSS_PL_SAMPLE_DATA")
    parser.add_argument(
        "--real-voc",
        type=Path,
        default=Path(sample_data) / "voc_sample" if sample_data else None,
        help="real VOC sample root (VOC2012/JPEGImages, SegmentationClassAug) for reference rows",
    )
    parser.add_argument("--no-real", action="store_true", help="skip the real-VOC reference rows")
    parser.add_argument("--quick", action="store_true", help="100 images, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.num_images, args.repeats = 100, 3
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        start = time.perf_counter()
        source = SyntheticVOC(
            str(root / "voc"), num_train=args.num_images, num_val=1, image_size=args.image_size
        )
        dataset = source.dataset("train")
        assert isinstance(dataset, VOCDataset)
        online = OnlinePseudoLabels(
            cache_root=str(root / "cache"), detector="tiny", sam_checkpoint="tiny"
        )
        online.setup(source)
        fill_cache(online, dataset)
        assert online.cache is not None
        setup_s = time.perf_counter() - start

        ids = dataset.ids
        jpegs = [dataset.image_path(i) for i in ids]
        pngs = [online.cache.path(i) for i in ids]
        gt_data = LabeledDataset(dataset, GroundTruthLabels().loader())
        cached_data = LabeledDataset(dataset, online.loader())
        check_cache_hits(cached_data)

        def per_sample(fn: Callable[[int], object]) -> Callable[[], None]:
            def run() -> None:
                for index in range(len(ids)):
                    fn(index)

            return run

        rows: list[tuple[str, float]] = []
        passes = {
            "JPEG decode alone (PIL, RGB array)": per_sample(lambda i: decode_jpeg(jpegs[i])),
            "wsss_pl.io.read_image (JPEG -> uint8 CHW tensor)": per_sample(
                lambda i: read_image(jpegs[i])
            ),
            "palette PNG decode alone (PIL, cached label)": per_sample(
                lambda i: decode_png(pngs[i])
            ),
            "VOCDataset + GroundTruthLabels (JPEG + GT PNG)": per_sample(lambda i: gt_data[i]),
            "LabeledDataset + OnlinePseudoLabels cache hit (JPEG + GT + cached PNG)": per_sample(
                lambda i: cached_data[i]
            ),
        }
        references: dict[str, Callable[[], None]] = {}
        real_jpegs: list[Path] = []
        real_pngs: list[Path] = []
        if not args.no_real and args.real_voc is not None:
            real_jpegs = sorted((args.real_voc / "VOC2012" / "JPEGImages").glob("*.jpg"))
            real_pngs = sorted((args.real_voc / "SegmentationClassAug").glob("*.png"))
            real_pngs = real_pngs[: len(ids)]
        if real_jpegs:
            cycled = [real_jpegs[i % len(real_jpegs)] for i in range(len(ids))]
            references[f"reference: real VOC JPEG decode ({len(real_jpegs)} files cycled)"] = (
                per_sample(lambda i: decode_jpeg(cycled[i]))
            )
        if real_pngs:
            references[
                f"reference: real SegmentationClassAug PNG decode ({len(real_pngs)} files)"
            ] = per_sample(lambda i: decode_png(real_pngs[i % len(real_pngs)]))
        for name, run in passes.items():
            rows.append((name, time_passes(run, args.warmup, args.repeats) / len(ids)))

        for workers in args.workers:
            loader = DataLoader(
                cached_data,
                batch_size=args.batch_size,
                shuffle=False,
                num_workers=workers,
                collate_fn=collate_samples,
                pin_memory=device.type == "cuda",
                persistent_workers=workers > 0,
            )

            def epoch(loader: DataLoader = loader) -> None:
                for batch in loader:
                    if batch["needs_label"].any():
                        raise RuntimeError("a batch has samples that are not cache hits")
                    if device.type == "cuda":
                        for key in ("image", "target", "gt"):
                            batch[key] = batch[key].to(device, non_blocking=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            seconds = time_passes(epoch, max(args.warmup, 1), args.repeats)
            to_device = " + to GPU" if device.type == "cuda" else ""
            rows.append(
                (
                    f"DataLoader, collate_samples, batch {args.batch_size}, "
                    f"num_workers={workers}{to_device}",
                    seconds / len(ids),
                )
            )
            del loader  # shuts the persistent workers down
        for name, run in references.items():
            rows.append((name, time_passes(run, args.warmup, args.repeats) / len(ids)))

        height, width = args.image_size
        print("# Cache-hit data path\n")
        print(
            f"- {platform.machine()}, os.cpu_count {os.cpu_count()}, torch threads "
            f"{torch.get_num_threads()}, load average {load_average()}, device {args.device}"
        )
        print(
            f"- {len(ids)} synthetic VOC images {height}x{width} (JPEG q95) + palette PNG labels "
            f"in {root}; dataset + cache set-up {setup_s:.1f} s (not timed below)"
        )
        sizes = {
            "synthetic JPEG": jpegs,
            "cached PNG": pngs,
            "real VOC JPEG": real_jpegs,
            "real VOC PNG": real_pngs,
        }
        print(
            "- mean file size: "
            + ", ".join(
                f"{k} {statistics.mean(p.stat().st_size for p in v) / 1024:.0f} KiB"
                for k, v in sizes.items()
                if v
            )
        )
        print(
            f"- all {len(ids)} samples were cache hits; warm-up {args.warmup} pass, "
            f"median of {args.repeats} passes\n"
        )
        base = rows[0][1]
        print("| path | ms/sample | samples/s | x JPEG decode |")
        print("|---|---:|---:|---:|")
        for name, seconds in rows:
            print(f"| {name} | {1000 * seconds:.2f} | {1 / seconds:.0f} | {seconds / base:.2f} |")
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
