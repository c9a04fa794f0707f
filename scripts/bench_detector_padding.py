"""Share of padding rows of the detector in ``batch_mode: fixed`` per ``detector_batch_size``.

No model runs: the label pass sorts images by detector input shape (Grounding DINO's size rule,
shorter side 800, longer side at most 1333, from the file headers) and runs each shape's images
B at a time, short batches filled with zero images. For every folder (or id list of sizes) and
B this prints the padding share and the number of forwards.

    python scripts/bench_detector_padding.py DIR [DIR ...] --batch-sizes 1 2 4 8
    python scripts/bench_detector_padding.py --synthetic-mixed 500 --batch-sizes 1 2 4
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

from wsss_pl.labeling.label_pass import image_size
from wsss_pl.labeling.online import OnlinePseudoLabels

PATTERNS = ("*.jpg", "*.jpeg", "*.png")


def folder_sizes(folder: Path) -> list[tuple[int, int]]:
    """(height, width) of every image of ``folder`` from its header."""
    files = sorted(p for pattern in PATTERNS for p in folder.glob(pattern))
    return [s for s in map(image_size, files) if s[0] and s[1]]


def synthetic_mixed(count: int, seed: int = 0) -> list[tuple[int, int]]:
    """Sizes of a user's own folder: phone photos both ways, screen and web images, crops."""
    rng = random.Random(seed)
    common = [(3024, 4032), (4032, 3024), (1080, 1920), (1920, 1080), (768, 1024), (480, 640)]
    sizes = []
    for _ in range(count):
        if rng.random() < 0.5:
            sizes.append(rng.choice(common))
        else:  # crops and downloads of any size
            sizes.append((rng.randint(200, 2000), rng.randint(200, 2000)))
    return sizes


def padding(sizes: list[tuple[int, int]], batch_size: int) -> tuple[float, int]:
    """(padding share, forwards) for ``sizes`` at ``batch_size`` in fixed mode."""
    labels = OnlinePseudoLabels(detector="grounding-dino-tiny", sam_checkpoint="tiny")
    shapes = Counter(labels.detector_input_size(h, w) for h, w in sizes)
    forwards = sum(-(-n // batch_size) for n in shapes.values())
    rows = forwards * batch_size
    return (rows - len(sizes)) / rows, forwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--synthetic-mixed", type=int, default=0, metavar="N")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    sets = {str(f): folder_sizes(f) for f in args.folders}
    if args.synthetic_mixed:
        sets[f"synthetic mixed ({args.synthetic_mixed})"] = synthetic_mixed(args.synthetic_mixed)
    labels = OnlinePseudoLabels(detector="grounding-dino-tiny", sam_checkpoint="tiny")
    for name, sizes in sets.items():
        shapes = len({labels.detector_input_size(h, w) for h, w in sizes})
        print(f"{name}: {len(sizes)} images, {shapes} detector input shapes")
        for batch_size in args.batch_sizes:
            share, forwards = padding(sizes, batch_size)
            print(f"  detector_batch_size {batch_size}: {100 * share:5.1f} % padding rows, "
                  f"{forwards} forwards")  # fmt: skip


if __name__ == "__main__":
    main()
