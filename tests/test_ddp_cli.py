"""Multi-process DDP (gloo, 2 CPU processes) through the real CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from cli_runner import DEMO_CONFIG, FAST_OVERRIDES, run_cli, write_csv_logger_config

pytestmark = pytest.mark.slow

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def _val_miou(workdir: Path, version: int) -> float:
    path = workdir / f"runs/csv/lightning_logs/version_{version}/metrics.csv"
    with path.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/mIoU")]
    assert len(rows) == 1
    return float(rows[0]["val/mIoU"])


def test_ddp_fit_then_validate_matches_single_process(tmp_path: Path) -> None:
    loggers = write_csv_logger_config(tmp_path)
    # 3 val images on 2 ranks: a padding sampler would count one image twice.
    base = [
        "--config",
        str(DEMO_CONFIG),
        "--config",
        str(loggers),
        *FAST_OVERRIDES,
        "--data.source.init_args.num_val",
        "3",
    ]
    fit = run_cli(["fit", *base, *DDP, "--trainer.max_epochs", "1"], tmp_path)
    assert fit.returncode == 0, fit.stdout[-2000:] + fit.stderr[-5000:]
    assert "terminate called" not in fit.stderr
    # Only rank 0 logs: one W&B run, one CSV version, one set of review media.
    assert len(list(tmp_path.glob("runs/demo/wandb/offline-run-*"))) == 1
    assert len(list(tmp_path.glob("runs/csv/lightning_logs/version_*"))) == 1
    ckpt = tmp_path / "runs/demo/checkpoints/last.ckpt"
    assert ckpt.is_file()

    # The same checkpoint validated on 2 processes (confusion matrices summed across ranks) and on
    # 1 process must give the same mIoU, also when the images do not split evenly.
    common = [*base, "--ckpt_path", str(ckpt)]
    two = run_cli(["validate", *common, *DDP], tmp_path)
    assert two.returncode == 0, two.stderr[-4000:]
    assert "terminate called" not in two.stderr
    one = run_cli(["validate", *common, "--trainer.devices", "1"], tmp_path)
    assert one.returncode == 0, one.stderr[-4000:]
    assert math.isclose(_val_miou(tmp_path, 1), _val_miou(tmp_path, 2), rel_tol=1e-6)


def test_ddp_fit_with_online_labels_labels_once_and_counts(tmp_path: Path) -> None:
    loggers = write_csv_logger_config(tmp_path)
    config = str(DEMO_CONFIG.parent / "demo_online.yaml")
    args = ["fit", "--config", config, "--config", str(loggers), *FAST_OVERRIDES, *DDP,
            "--data.source.init_args.num_train", "10", "--data.source.init_args.num_val", "3"]  # fmt: skip
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    assert "terminate called" not in result.stderr
    assert len(list(tmp_path.glob("runs/demo/wandb/offline-run-*"))) == 1
    assert len(list(tmp_path.glob("runs/demo_online/pseudo_labels/*/*/*.png"))) == 10
    (metrics,) = tmp_path.glob("runs/csv/lightning_logs/version_*/metrics.csv")
    with metrics.open() as handle:
        per_epoch = [
            float(r["labelling/images"])
            for r in csv.DictReader(handle)
            if r.get("labelling/images")
        ]
    assert per_epoch == [10.0, 0.0]  # summed over both ranks: every id once, in epoch 1
