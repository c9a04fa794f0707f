"""Numerics settings that must be in the environment before torch loads (no torch import here).

``MKL_CBWR`` pins MKL's code path, so a GEMM's bits do not depend on memory alignment or on where a
row sits in a batch (measured: SAM decoder rows 60/124 bit-identical without it, 124/124 with it);
``CUBLAS_WORKSPACE_CONFIG`` makes cuBLAS reductions deterministic. Both are set with
``setdefault``: a user's own value wins, and ``wsss_pl.labeling.invariance.environment`` records
the value in the cache fingerprint.
"""

from __future__ import annotations

import os
import sys

CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's documented setting for deterministic GEMM reductions


def mkl_cbwr_branch() -> str:
    """The MKL code path to pin (``MKL_CBWR``) for this CPU: its widest supported vector ISA."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return "COMPATIBLE"
    if "avx512f" in flags:
        return "AVX512"
    if "avx2" in flags:
        return "AVX2"
    return "COMPATIBLE"


def pin_numerics_env() -> bool:
    """Set ``MKL_CBWR`` and ``CUBLAS_WORKSPACE_CONFIG`` unless the user did; True when MKL can
    still see it (torch not imported yet). Called by ``wsss_pl/__init__.py``."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    before_torch = "torch" not in sys.modules
    if before_torch:
        os.environ.setdefault("MKL_CBWR", mkl_cbwr_branch())
    return before_torch or "MKL_CBWR" in os.environ
