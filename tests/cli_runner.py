"""Run the real CLI in a subprocess (as a user would), with small demo settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"

# The demo config made small enough for a test: 16 train / 4 val images of 64x80, 2 epochs.
FAST_OVERRIDES = [
    "--trainer.max_epochs", "2",
    "--data.source.init_args.num_train", "16",
    "--data.source.init_args.num_val", "4",
    "--data.source.init_args.image_size", "[64, 80]",
    "--data.batch_size", "4",
    "--data.val_batch_size", "2",
    "--data.crop_size", "49",
    "--data.num_workers", "0",
]  # fmt: skip


def write_csv_logger_config(directory: Path) -> Path:
    """A second config that adds a CSV logger beside W&B, so a test can read the logged metrics."""
    config = {
        "trainer": {
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.WandbLogger",
                    "init_args": {
                        "project": "wsss_pl-test",
                        "save_dir": "runs/demo",
                        "offline": True,
                    },
                },
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": "runs/csv"},
                },
            ]
        }
    }
    path = directory / "loggers.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(
    args: list[str],
    cwd: Path,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    unset: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """``python -m wsss_pl ARGS`` in ``cwd``; ``env`` adds to (and ``unset`` removes from) the
    test environment (offline hub, offline W&B)."""
    full_env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    for name in unset:
        full_env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "wsss_pl", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli_in_process(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``wsss_pl.cli.main(ARGS)`` in this process, in ``cwd``: the real CLI path (argument
    parsing, the command, the error handler) without a new interpreter's ~5 s of imports. Exit
    codes and output as ``run_cli``'s; an exception that escapes ``main`` is printed as Python
    would print it (a "Traceback" on stderr, exit code 1), so a test sees it as a user would."""
    import contextlib
    import io
    import traceback

    from wsss_pl.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    old_cwd, old_env = Path.cwd(), dict(os.environ)
    os.environ.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"})
    os.environ.update(env or {})
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(list(args))
            except SystemExit as exit_:
                code = (
                    exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                )
            except Exception:  # noqa: BLE001 - shown as the interpreter would show it
                traceback.print_exc(file=stderr)
                code = 1
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
    return subprocess.CompletedProcess(
        [sys.executable, "-m", "wsss_pl", *args], code, stdout.getvalue(), stderr.getvalue()
    )
