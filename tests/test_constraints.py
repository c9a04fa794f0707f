"""constraints.txt is the compiled closure of pyproject.toml's dependencies, and CI's check
(`python scripts/constraints.py check`) fails when it is older than them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _copy(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "constraints.in", "constraints.txt", "scripts/constraints.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/constraints.py", "check"],
        cwd=root, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_checked_in_constraints_are_current_and_hold_torch_back() -> None:
    result = _check(REPO)
    assert result.returncode == 0, result.stderr
    pins = (REPO / "constraints.txt").read_text().splitlines()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    # The project's closure, not a machine's freeze.
    assert not [p for p in pins if p.split("==")[0] in ("awscli", "boto3", "moto", "flask")]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda r: _replace(r / "pyproject.toml", '"tqdm>=4.66",', '"tqdm>=4.66", "rich>=13",'),
         "older than the dependencies of pyproject.toml"),
        (lambda r: _replace(r / "constraints.in", "torch==2.14.1", "torch==2.15.0"),
         "older than the dependencies"),
        (lambda r: _replace(r / "constraints.txt", "\ntqdm==", "\n# tqdm=="),
         "pins no version of tqdm"),
        (lambda r: (r / "constraints.txt").unlink(), "constraints.txt is missing"),
    ],
)  # fmt: skip
def test_check_fails_with_the_command_to_run(tmp_path: Path, edit, needle: str) -> None:
    root = _copy(tmp_path)
    assert _check(root).returncode == 0
    edit(root)
    result = _check(root)
    assert result.returncode == 1
    assert needle in result.stderr and "python scripts/constraints.py compile" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))
