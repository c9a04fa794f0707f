"""Peak memory and time of SAM's mask decoder per chunk of boxes (``sam_decoder_batch_size``).

The decoder is the same for ViT-B/L/H (256 wide). Each chunk size runs in its own process: SAM
ViT-B built with segment-anything's builder (random weights, real size), a fixed random image
embedding [1, 256, 64, 64] (the encoder is not run, so its own peak does not hide the
decoder's), then ``SamSegmenter._decode`` on N boxes of a WIDTHxHEIGHT image at chunk size k.
Reported: the RSS high-water mark above the process's RSS just before decoding, and seconds.

    python scripts/bench_decoder_chunks.py --chunks 1 4 8 16 32 --boxes 32 --size 640 480
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from bench_common import load_average, maxrss_mib


def one(chunk: int, boxes: int, width: int, height: int, threads: int) -> dict[str, float]:
    """Decode ``boxes`` boxes at chunk size ``chunk`` in this process; peak RSS growth, time."""
    from segment_anything import sam_model_registry

    from wsss_pl.labeling.segmenters.sam import SamSegmenter

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    segmenter = SamSegmenter(sam_model_registry["vit_b"](checkpoint=None), fixed_batch=True)
    segmenter.decoder_batch_size = chunk
    inputs = {"image_embeddings": torch.randn(1, 256, 64, 64)}
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    corner = torch.rand(boxes, 2) * torch.tensor([width * 0.7, height * 0.7])
    prompts = torch.cat([corner, corner + torch.tensor([width * 0.3, height * 0.3])], dim=1)
    input_size = segmenter.resize.get_preprocess_shape(height, width, 1024)
    before = maxrss_mib()
    start = time.perf_counter()
    with torch.no_grad():
        masks, _ = segmenter._decode(inputs, prompts, input_size, image)
    seconds = time.perf_counter() - start
    assert masks.shape == (boxes, height, width)
    return {"chunk": chunk, "boxes": boxes, "peak_mib_above_start": maxrss_mib() - before,
            "seconds": seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--boxes", type=int, default=32, help="boxes of the image (N)")
    parser.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.boxes, *args.size, args.threads)))
        return
    print(f"load average {load_average()}; {args.boxes} boxes, {args.size[0]}x{args.size[1]}")
    for chunk in args.chunks:
        command = [sys.executable, __file__, "--one", str(chunk), "--boxes", str(args.boxes),
                   "--size", *map(str, args.size), "--threads", str(args.threads)]  # fmt: skip
        result = json.loads(subprocess.run(command, capture_output=True, text=True,
                                           check=True).stdout.splitlines()[-1])  # fmt: skip
        print(
            f"chunk {chunk:3d}: peak +{result['peak_mib_above_start']:7.1f} MiB, "
            f"{result['seconds']:6.1f} s for {args.boxes} boxes "
            f"({result['seconds'] / args.boxes:.2f} s/box)"
        )


if __name__ == "__main__":
    main()
