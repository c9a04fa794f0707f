"""The config overlay of ``reproduce --dry_run``: synthetic VOC / COCO data, tiny random models
and a few CPU steps, merged over the main config by every stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _dry_run_source(out: Path, dataset: str) -> dict[str, Any]:
    if dataset == "coco":
        return {
            "class_path": "wsss_pl.data.coco.COCO",
            "init_args": {"root": str(out / "data"), "year": 2014, "train_split": "train",
                          "val_split": "val", "test_split": "val", "predict_split": "val",
                          "download": False},
        }  # fmt: skip
    return {
        "class_path": "wsss_pl.data.voc.VOC",
        "init_args": {
            "root": str(out / "data"),
            "train_split": "train",
            "val_split": "val",
            "test_split": "val",
            "predict_split": "val",  # stands in for the test set
            "download": False,
        },
    }


def dry_run_overrides(out: Path, dataset: str = "voc") -> dict[str, Any]:
    """Config overlay of ``--dry_run``: synthetic data, tiny random models, a few CPU steps."""
    return {
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 6,
            "val_check_interval": 3,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
        },
        "model": {
            "net": {
                "init_args": {
                    "backbone": "resnet18",
                    "pretrained": None,
                    "freeze_bn": False,
                }
            },
            "optimizer": {"init_args": {"lr": 0.01}},
            "test_scales": [0.75, 1.0],
        },
        "data": {
            "source": _dry_run_source(out, dataset),
            "train_labels": {"init_args": {"detector": "tiny", "sam_checkpoint": "tiny"}},
            "global_batch_size": 4,
            "val_batch_size": 2,
            "num_workers": 0,
            "crop_size": 65,
            "pin_memory": False,
        },
    }
