"""``python -m wsss_pl reproduce voc|coco``: the paper's whole experiment and the table it ends with.

Stages, each a real ``python -m wsss_pl`` command in a subprocess (so ``--gpus N`` runs each of
them as Lightning DDP on N devices) except ``score`` (in this process), logged to
``<out>/logs/<stage>.log``:

0. ``fetch``: every weight and the dataset the config needs (``python -m wsss_pl fetch``): one
   table, downloads where allowed (the dataset too: ``download: true``); offline, one line per
   missing item with its config key, its path and how to get it elsewhere, and the run stops;
1. ``label``: Grounding DINO + SAM pseudo-labels for the training split on all GPUs, into
   ``<out>/pseudo_labels`` (resumable);
2. ``score``: pseudo-label mIoU against ground truth, as WSSS papers report it (VOC: ``train``,
   1,464 ids, and ``train_aug``, 10,582; COCO: ``train``);
3. ``fit``: DeepLab-v2 on the pseudo-labels;
4. ``test``: the final step's weights on val (the paper's protocol: DeepLab-v2 reports its last
   iteration) with the config's test settings (multi-scale max fusion, + CRF on VOC); the
   checkpoint with the best val mIoU is tested too and reported beside it, labelled "selected
   on val" (choosing it on the split it is scored on is optimistic);
5. ``predict``: VOC test-set predictions of the final weights in the evaluation server's layout,
   ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png``, and ``results.tar.gz`` to upload;
6. the table: ours beside the paper's numbers, printed as markdown and saved as
   ``<out>/results.md`` and ``<out>/results.json``.

Stages already done are skipped when rerun (their outputs exist), so a crashed reproduction
resumes. ``--dry_run`` runs the same stages end to end with tiny random models on a generated
synthetic VOC- or COCO-format dataset on the CPU: the pipeline's plumbing, not its numbers. The
VOC one took 47 s on 2 idle CPU cores (COCO 37 s), mostly the start-up of its stage processes,
and takes several times that on a busy machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsss_pl.options import CommandParser
from wsss_pl.reproduce_dry_run import dry_run_overrides  # noqa: F401  (re-exported)
from wsss_pl.reproduce_stages import (  # noqa: F401  (re-exported: configs name MetricsJsonWriter here)
    _OWN_FILES,
    IN_PROCESS_STAGES,
    MARKER,
    PARTIAL,
    REPO_CONFIGS,
    STAGES,
    MetricsJsonWriter,
    Reproduction,
    ReproductionError,
    _checkpoint_step,
    _last_error,
    _tee_stdout,
)
from wsss_pl.reproduce_table import PAPER, Target, write_table  # noqa: F401  (re-exported)


def check_arguments(out: Path, root: Path | None, overwrite: bool) -> None:
    """Refuse, before anything is created, an ``--output_dir`` that is a file or a folder of other
    files (unless ``overwrite``), and a ``--root`` that does not exist."""
    if out.exists() and not out.is_dir():
        raise ReproductionError(f"--output_dir {out} is a file; give a folder for the reproduction")
    if out.is_dir() and not overwrite:
        entries = {p.name for p in out.iterdir()}
        if entries and not entries & set(_OWN_FILES):
            raise ReproductionError(
                f"--output_dir {out} holds other files ({', '.join(sorted(entries)[:3])}); its outputs "
                "would replace them: choose an empty or new folder, or pass --overwrite"
            )
    if root is not None and not root.is_dir():
        raise ReproductionError(
            f"--root {root} does not exist; give the dataset root (e.g. data/VOCdevkit), or "
            "create the folder first to download the dataset into it"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="wsss_pl reproduce",
        renamed={"--out": "--output_dir"},
        description="Reproduce 'An Alternative to WSSS?' end to end and print ours beside the "
        "paper's numbers. Extra arguments after -- go to every stage (e.g. -- --data.num_workers 8).",
    )
    parser.add_argument("dataset", choices=sorted(PAPER))
    parser.add_argument("--gpus", type=int, default=1, help="devices per stage (DDP when > 1)")
    parser.add_argument("--root", type=Path, help="dataset root (default: the config's)")
    parser.add_argument(
        "--output_dir", type=Path, help="output folder (default runs/reproduce_<dataset>)"
    )
    parser.add_argument("--config", type=Path, help="main config (default configs/<dataset>.yaml)")
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}"
    )
    parser.add_argument("--dry_run", action="store_true", help="tiny models, synthetic data, CPU")
    parser.add_argument("--offline", action="store_true", help="W&B offline (sync later)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --output_dir folder that holds other files (a reproduction's own folder "
        "is resumed without it)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]
    args = build_parser().parse_args(argv)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ReproductionError(f"--stages: unknown {unknown}; choose from {', '.join(STAGES)}")
    if args.gpus < 1:
        raise ReproductionError(f"--gpus must be >= 1, got {args.gpus}")
    out = args.output_dir or Path("runs") / (
        f"reproduce_{args.dataset}" + ("_dry_run" if args.dry_run else "")
    )
    check_arguments(out, None if args.dry_run else args.root, args.overwrite)
    Reproduction(
        args.dataset, out, gpus=args.gpus, root=args.root, dry_run=args.dry_run,
        config=args.config, extra_args=extra, offline=args.offline,
    ).run(stages)  # fmt: skip
    return 0
