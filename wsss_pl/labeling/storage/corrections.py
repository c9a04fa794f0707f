"""The corrections layer: reviewed labels beside the pseudo-label cache.

Layout: ``<cache_root>/<dataset>/corrections/`` holds, per corrected id, ``<id>.png`` (uint8
[H, W] label map, palette PNG, 0 background, 1..C, 255 ignore) and ``<id>.json`` (provenance:
source file, its sha256, import time, tool, the reviewer's annotation id when the tool gives one),
plus ``imports.jsonl`` (one line per import run). It sits outside every fingerprint directory, so
relabelling with new settings never touches it; training (``OnlinePseudoLabels``) reads a
correction before the cache. Writes are atomic (temp file + rename); an id that already has a
correction is replaced only when the import is told to (``--overwrite``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_pl.errors import DataError
from wsss_pl.io import read_json, read_label, write_bytes, write_json, write_label
from wsss_pl.labeling.storage.cache import decode_id, encode_id
from wsss_pl.palette import voc_palette

CORRECTIONS_DIR = "corrections"
LOG_NAME = "imports.jsonl"


def corrections_dir(cache_root: str | Path, dataset: str) -> Path:
    """``<cache_root>/<dataset>/corrections``."""
    return Path(cache_root) / dataset / CORRECTIONS_DIR


class CorrectionsLayer:
    """Reviewed label maps of one dataset (see the module docstring)."""

    def __init__(self, directory: str | Path, palette: Sequence[int] | None = None) -> None:
        self.directory = Path(directory)
        self.palette = list(palette) if palette is not None else voc_palette()

    def _stem(self, sample_id: str) -> str:
        return encode_id(sample_id)

    def path(self, sample_id: str) -> Path:
        return self.directory / f"{self._stem(sample_id)}.png"

    def provenance_path(self, sample_id: str) -> Path:
        return self.directory / f"{self._stem(sample_id)}.json"

    def has(self, sample_id: str) -> bool:
        return self.path(sample_id).is_file()

    def load(self, sample_id: str) -> torch.Tensor | None:
        """uint8 [H, W] corrected label of ``sample_id``, or None."""
        path = self.path(sample_id)
        return read_label(path) if path.is_file() else None

    def provenance(self, sample_id: str) -> dict[str, Any] | None:
        path = self.provenance_path(sample_id)
        return read_json(path) if path.is_file() else None

    def ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(decode_id(p.stem) for p in self.directory.glob("*.png"))

    def store_all(
        self,
        labels: Mapping[str, np.ndarray],
        provenance: Mapping[str, Mapping[str, Any]],
        run: Mapping[str, Any],
        overwrite: bool = False,
    ) -> None:
        """Write every label (uint8 [H, W]) with its provenance; all-or-nothing on existing ids.

        Raises:
            DataError: an id already has a correction and ``overwrite`` is False (nothing is
                written then).
        """
        existing = [i for i in labels if self.has(i)]
        if existing and not overwrite:
            raise DataError(
                f"{self.directory} already has corrections of {len(existing)} of these ids "
                f"(first: {existing[0]!r}); pass --overwrite to replace them with this import"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        for sample_id, label in labels.items():
            write_json(self.provenance_path(sample_id), dict(provenance[sample_id]))
            write_label(self.path(sample_id), label, self.palette)
        log = self.directory / LOG_NAME
        previous = log.read_bytes() if log.is_file() else b""
        line = json.dumps({**run, "ids": sorted(labels)}, sort_keys=True) + "\n"
        write_bytes(log, previous + line.encode("utf-8"))
