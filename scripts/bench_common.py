"""Helpers shared by the benchmark scripts (run as ``python scripts/bench_*.py``)."""

from __future__ import annotations

import os
import resource

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def maxrss_mib() -> float:
    """This process's resident-set high-water mark (Linux reports KiB) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_average() -> str:
    """The 1/5/15-minute load average: CPU timings are only comparable at a similar load."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"
