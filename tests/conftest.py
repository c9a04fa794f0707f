"""Shared fixtures. Tests never touch the network: the hub is offline and W&B runs offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before any test module imports torch: wsss_pl pins MKL_CBWR (read once, when MKL loads), so
# in-process labels share the fingerprint of the CLI subprocesses' labels.
import wsss_pl  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The real VOC/COCO samples (../shared/data); the test is skipped when WSSS_PL_SAMPLE_DATA is unset."""
    root = os.environ.get("WSSS_PL_SAMPLE_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("real sample data not available: set WSSS_PL_SAMPLE_DATA to shared/data")
    return Path(root)
