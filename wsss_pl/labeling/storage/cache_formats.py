"""The pseudo-label cache's small formats: settings as canonical JSON and where two settings
differ (fingerprint checks, the environment notice), file-name-safe sample ids, and pycocotools
RLE masks (``encode_rle``: bool [H, W] -> {"size", "counts"}; ``decode_rle`` back)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from wsss_pl.errors import CacheError


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _normalised(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as they read back from JSON (tuples become lists); raises CacheError if not JSON."""
    try:
        return json.loads(_canonical_json(dict(settings)))
    except (TypeError, ValueError) as error:
        raise CacheError(
            f"pseudo-label cache settings must be JSON-serialisable (str, numbers, bools, lists, "
            f"dicts): {error}"
        ) from error


def _differences(expected: Any, found: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON values differ, as 'key: expected ... vs found ...' lines."""
    if isinstance(expected, dict) and isinstance(found, dict):
        lines: list[str] = []
        for key in sorted(set(expected) | set(found)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in found:
                lines.append(f"{name}: given {expected[key]!r}, manifest has no such key")
            elif key not in expected:
                lines.append(f"{name}: not given, manifest has {found[key]!r}")
            else:
                lines.extend(_differences(expected[key], found[key], name))
        return lines
    if expected != found:
        return [f"{prefix or '<settings>'}: given {expected!r}, manifest has {found!r}"]
    return []


def changed_entries(old: Any, new: Any, prefix: str = "") -> list[str]:
    """'key old -> new' for every dotted key where two JSON values differ (missing: None)."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in sorted(set(old) | set(new)):
            name = f"{prefix}.{key}" if prefix else str(key)
            lines.extend(changed_entries(old.get(key), new.get(key), name))
        return lines
    return [] if old == new else [f"{prefix or '<value>'} {old} -> {new}"]


def encode_id(sample_id: str) -> str:
    """File-name-safe, reversible form of a sample id (percent-encoding; see ``decode_id``)."""
    if not sample_id:
        raise ValueError("sample id must be a non-empty string")
    encoded = urllib.parse.quote(sample_id, safe="-_.~")
    # A leading "." would hide the file and clash with temp files; "." and ".." are not names.
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    return encoded


def decode_id(file_stem: str) -> str:
    """Inverse of ``encode_id``."""
    return urllib.parse.unquote(file_stem)


def encode_rle(mask: torch.Tensor) -> dict[str, Any]:
    """pycocotools RLE of a bool [H, W] mask as a JSON-ready dict {"size": [H, W], "counts": str}."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {tuple(mask.shape)}")
    array = np.asfortranarray(mask.detach().cpu().numpy().astype(np.uint8))
    rle = mask_utils.encode(array)
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Mapping[str, Any]) -> torch.Tensor:
    """Inverse of ``encode_rle``: bool [H, W] tensor from {"size", "counts" (str or bytes)}."""
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    array = mask_utils.decode({"size": list(rle["size"]), "counts": counts})
    return torch.from_numpy(array.astype(bool))
