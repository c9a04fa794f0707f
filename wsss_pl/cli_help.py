"""The short ``--help`` of the Lightning commands (fit, validate, test, predict, label).

LightningCLI's own help lists every Trainer, model and data parameter (1,360 lines, 29-42 s
to import and build on a busy 2-core machine). ``wsss_pl COMMAND --help`` prints the options people
change, grouped, from this module (standard library only: instant); ``--help full`` is the
complete list and ``--print_config`` the resolved config of a command line.
tests/test_cli_third_hour.py checks that every option named here is one the real parser accepts.
"""

from __future__ import annotations

PROG = "wsss_pl"

_WHAT = {
    "fit": "Train the segmentation net (online pseudo-labels are made in the first epoch).",
    "validate": "mIoU of a checkpoint on the validation split (per-class table).",
    "test": "mIoU on the test split (model.test_scales, model.test_flip).",
    "predict": "Write palette PNG predictions (wsss_pl.callbacks.PaletteWriter in the config).",
    "label": "Make the pseudo-label cache on all devices and score it against ground truth.",
}

# (group, [(option, what it does)]); "{cmd}" is the command's name.
_COMMON: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "config",
        [
            ("-c, --config FILE", "YAML config; repeat to layer files (the later one wins)"),
            ("--print_config", "print the resolved config (all defaults filled in) and exit"),
        ],
    ),
    (
        "trainer (any lightning.pytorch.Trainer argument: --trainer.KEY VALUE)",
        [
            ("--trainer.accelerator auto|cpu|gpu", "where to run (default auto)"),
            ("--trainer.devices N", "devices per node; more than 1 runs DDP"),
            ("--trainer.precision P", "32-true, bf16-mixed, 16-mixed, ..."),
            ("--trainer.max_epochs N", "epochs to train (or --trainer.max_steps N)"),
            ("--trainer.max_steps N", "optimiser steps to train (-1: by epochs)"),
            ("--trainer.limit_val_batches N", "validation batches (an int) or fraction"),
            ("--trainer.default_root_dir DIR", "where runs are written when no folder is set"),
            ("--trainer.logger false", "no W&B run (default: W&B, offline without a login)"),
            ("--trainer.enable_progress_bar false", "no progress bar"),
        ],
    ),
    (
        "data (wsss_pl.data.datamodule.WSSSDataModule)",
        [
            ("--data.source CLASS", "the dataset: VOC, COCO, ImageFolder, SyntheticVOC, ..."),
            ("--data.source.help CLASS", "the options of a dataset class, e.g. VOC"),
            ("--data.train_labels CLASS", "where training targets come from (pseudo-labels, ...)"),
            ("--data.train_labels.help CLASS", "the options of a label source"),
            ("--data.batch_size N", "training images per device per step"),
            ("--data.global_batch_size N", "... or per optimiser step over all devices; the one"),
            ("", "given on the command line wins over the other in a config"),
            ("--data.val_batch_size N", "batch size of validation, test and predict"),
            ("--data.num_workers N", "DataLoader worker processes per device"),
            ("--data.crop_size N", "training crop (pixels)"),
        ],
    ),
    (
        "model (wsss_pl.module.SegmentationModule)",
        [
            ("--model.net CLASS", "the network (wsss_pl.models.deeplab_v2.DeepLabV2)"),
            ("--model.net.help CLASS", "the options of a network class"),
            ("--model.net.init_args.num_classes N", "classes including background"),
            ("--model.optimizer.init_args.lr LR", "base learning rate"),
            ("--model.test_scales S [S ...]", "multi-scale test (validate/test/predict)"),
        ],
    ),
]

_OWN: dict[str, list[tuple[str, str]]] = {
    "fit": [
        ("--ckpt_path FILE|last", "resume a run from its checkpoint"),
        ("--overwrite_checkpoints true", "write into a checkpoint folder that holds an earlier"),
        ("", "run's checkpoints (default: a new version_N folder beside them)"),
    ],
    "validate": [("--ckpt_path FILE", "the checkpoint to score")],
    "test": [("--ckpt_path FILE", "the checkpoint to score")],
    "predict": [
        ("--ckpt_path FILE", "the checkpoint to predict with"),
        ("--overwrite true", "write into an output folder that holds earlier predictions"),
        ("", "(default: a new version_N folder beside them)"),
    ],
    "label": [],
}


def short_help(command: str) -> str:
    """The grouped help of a Lightning ``command`` (under 120 lines)."""
    lines = [
        f"usage: {PROG} {command} [-h [full]] [-c CONFIG ...] [--KEY VALUE ...]",
        "",
        _WHAT[command],
        "",
        "The options most runs change; any config key can be set on the command line.",
        f"`{PROG} {command} --help full` lists all of them (every Trainer, model and data",
        "parameter, with defaults); --print_config shows the resolved config of a command line.",
        f"example: {PROG} {command} --config configs/demo.yaml",
    ]
    groups = list(_COMMON)
    if _OWN[command]:
        groups.append((f"{command}", _OWN[command]))
    width = max(len(option) for _, options in groups for option, _ in options) + 2
    for title, options in groups:
        lines += ["", f"{title}:"]
        lines += [f"  {option:<{width}}{what}".rstrip() for option, what in options]
    return "\n".join(lines)


def wants_short_help(rest: list[str]) -> bool:
    """Whether a Lightning command's arguments ask for the short help (``-h``/``--help`` not
    followed by ``full``; ``--data.source.help X`` and the like are the parser's own)."""
    for index, arg in enumerate(rest):
        if arg in ("-h", "--help"):
            return rest[index + 1 : index + 2] != ["full"]
    return False


def full_help_arguments(rest: list[str]) -> list[str]:
    """``rest`` with ``--help full`` turned into the parser's ``--help``."""
    out: list[str] = []
    skip = False
    for index, arg in enumerate(rest):
        if skip:
            skip = False
            continue
        out.append(arg)
        if arg in ("-h", "--help") and rest[index + 1 : index + 2] == ["full"]:
            skip = True
    return out
