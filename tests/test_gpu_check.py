"""scripts/gpu_check.sh runs on a machine without CUDA: a report with a clear skip line per step."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from cli_runner import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the script runs it all")
def test_gpu_check_without_cuda_writes_report_with_skips(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "unused")}
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "CUDA device: none" in report
    assert report.count("SKIPPED (no CUDA device)") == 5
    assert report.rstrip().endswith("Overall: OK")
    assert not (tmp_path / "unused").exists()  # the argument wins over $OUT
