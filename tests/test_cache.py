"""PseudoLabelCache: fingerprints, manifest checks, round trips, atomicity, concurrency, RLE."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch

from wsss_pl.classes import voc_palette
from wsss_pl.errors import CacheError
from wsss_pl.labeling.storage.cache import (
    LABEL_FORMAT_VERSION,
    PseudoLabelCache,
    decode_rle,
    encode_rle,
)

SETTINGS: dict[str, Any] = {
    "grounding": {"model": "IDEA-Research/grounding-dino-tiny", "sha256": "ab" * 32},
    "sam": {"model": "vit_h", "sha256": "cd" * 32},
    "box_threshold": 0.3,
    "text_threshold": 0.25,
    "vocabulary": ["aeroplane", "bicycle"],
    "assist_words": {"horse": ["halter", "saddle"]},
    "merge": "paper",
}


def _cache(root: Path, settings: dict[str, Any] | None = None) -> PseudoLabelCache:
    return PseudoLabelCache(root, "voc", settings or SETTINGS, voc_palette())


def _label(seed: int, h: int = 17, w: int = 23) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    values = torch.tensor([0, 1, 7, 20, 255], dtype=torch.uint8)
    return values[torch.randint(0, 5, (h, w), generator=gen)]


def _meta(sample_id: str, label: torch.Tensor) -> dict[str, Any]:
    return {
        "id": sample_id,
        "height": label.shape[0],
        "width": label.shape[1],
        "instances": [],
        "missing_classes": [],
        "num_unmatched_boxes": 0,
    }


def test_fingerprint_stable_and_sensitive(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    reordered = dict(reversed(list(SETTINGS.items())))
    assert _cache(tmp_path, reordered).fingerprint == cache.fingerprint  # key order is irrelevant
    assert len(cache.fingerprint) == 16 and int(cache.fingerprint, 16) >= 0
    assert cache.directory == tmp_path / "voc" / cache.fingerprint
    changed = [
        {**SETTINGS, "box_threshold": 0.35},
        {**SETTINGS, "merge": "score"},
        {**SETTINGS, "vocabulary": ["aeroplane", "bird"]},
        {**SETTINGS, "sam": {"model": "vit_h", "sha256": "ce" * 32}},  # nested change
        {**SETTINGS, "assist_words": {}},
        {**SETTINGS, "extra": None},
    ]
    prints = {_cache(tmp_path, s).fingerprint for s in changed}
    assert len(prints) == len(changed) and cache.fingerprint not in prints
    # Tuples and lists serialise alike, so a config read back from YAML hits the same cache.
    assert _cache(tmp_path, {**SETTINGS, "vocabulary": ("aeroplane", "bicycle")}).fingerprint == (
        cache.fingerprint
    )


def test_open_writes_manifest_and_rejects_mismatch(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    cache.open()
    manifest = json.loads(cache.manifest_path.read_text())
    assert manifest["settings"] == json.loads(json.dumps(SETTINGS))
    assert manifest["fingerprint"] == cache.fingerprint
    assert manifest["label_format_version"] == LABEL_FORMAT_VERSION
    assert "created" in manifest and "wsss_pl_version" in manifest
    cache.open()  # re-opening with equal settings is fine
    _cache(tmp_path).open()

    manifest["settings"]["box_threshold"] = 0.35
    manifest["settings"]["sam"]["model"] = "vit_b"
    cache.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CacheError) as info:
        _cache(tmp_path).open()
    message = str(info.value)
    assert "box_threshold" in message and "0.3" in message and "0.35" in message
    assert "sam.model" in message and "vit_h" in message and "vit_b" in message
    assert str(cache.directory) in message
    assert "text_threshold" not in message  # only the differing keys are named


def test_settings_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="JSON"):
        _cache(tmp_path, {"model": object()})


def test_store_load_round_trip(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    cache.open()
    label = _label(0)
    meta = _meta("2007_000032", label)
    assert cache.load("2007_000032") is None and cache.load_metadata("2007_000032") is None
    cache.store("2007_000032", label, meta)
    assert cache.has("2007_000032") and len(cache) == 1 and cache.ids() == ["2007_000032"]
    loaded = cache.load("2007_000032")
    assert loaded is not None and loaded.dtype == torch.uint8 and torch.equal(loaded, label)
    assert cache.load_metadata("2007_000032") == meta
    with PIL.Image.open(cache.path("2007_000032")) as image:  # viewable palette PNG
        assert image.format == "PNG" and image.mode == "P"
        assert image.getpalette()[: 3 * 256] == voc_palette()
        assert np.array_equal(np.asarray(image), label.numpy())  # 255 kept, not remapped


def test_unsafe_ids_are_encoded_reversibly(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    ids = ["train/cat 01", "a%2Fb", ".hidden", "..", "ü-ß_1.x"]
    for i, sample_id in enumerate(ids):
        path = cache.path(sample_id)
        assert path.parent == cache.directory and not path.name.startswith(".")
        cache.store(sample_id, _label(i), _meta(sample_id, _label(i)))
    assert len({cache.path(s) for s in ids}) == len(ids)
    assert cache.ids() == sorted(ids)
    for i, sample_id in enumerate(ids):
        assert torch.equal(cache.load(sample_id), _label(i))


def test_store_rejects_bad_labels(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    with pytest.raises(ValueError, match="uint8"):
        cache.store("x", torch.zeros(4, 4, dtype=torch.long), {})
    with pytest.raises(ValueError, match="height, width"):
        cache.store("x", torch.zeros(4, 4, dtype=torch.uint8), {"height": 5, "width": 4})


def _temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_failed_png_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache(tmp_path)
    cache.open()

    def torn_save(self: PIL.Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        fp.write(b"\x89PNG\r\n\x1a\n half")  # some bytes reach the temp file, then the disk fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PIL.Image.Image, "save", torn_save)
    with pytest.raises(CacheError, match=r"No space left on device.*cache_root"):
        cache.store("a", _label(1), _meta("a", _label(1)))
    assert not cache.path("a").exists() and not cache.has("a")
    assert _temp_files(cache.directory) == []
    assert cache.ids() == [] and cache.load("a") is None


def test_corrupt_png_moved_aside_and_recomputed(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    label = _label(2)
    cache.store("b", label, _meta("b", label))
    data = cache.path("b").read_bytes()
    cache.path("b").write_bytes(data[: len(data) // 2])  # torn file from an old crash
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert cache.load("b") is None
    assert not cache.has("b") and cache.path("b").with_name("b.png.corrupt").is_file()
    assert cache.ids() == []
    cache.store("b", label, _meta("b", label))  # the labeler recomputes it
    assert torch.equal(cache.load("b"), label)


def _writer(root: str, ids: list[str], barrier: Any) -> None:
    cache = _cache(Path(root))
    barrier.wait()  # start together so open() and the stores really race
    cache.open()
    for round_ in range(3):
        for sample_id in ids:
            label = _label(int(sample_id), 40 + int(sample_id), 30)
            cache.store(sample_id, label, {**_meta(sample_id, label), "round": round_})


def test_concurrent_open_and_store(tmp_path: Path) -> None:
    ids = [str(i) for i in range(12)]
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    procs = [
        context.Process(target=_writer, args=(str(tmp_path), order, barrier))
        for order in (ids, ids[::-1])
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    cache = _cache(tmp_path)
    cache.open()
    assert cache.ids() == sorted(ids)
    for sample_id in ids:
        assert torch.equal(cache.load(sample_id), _label(int(sample_id), 40 + int(sample_id), 30))
        assert cache.load_metadata(sample_id)["id"] == sample_id
    assert _temp_files(cache.directory) == []
    assert json.loads(cache.manifest_path.read_text())["fingerprint"] == cache.fingerprint


def test_remove_stale_temp_files(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    cache.open()
    old = cache.directory / ".x.png.abc123.tmp"
    fresh = cache.directory / ".y.png.def456.tmp"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    an_hour_ago = time.time() - 7200
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert cache.remove_stale_temp_files(older_than_s=3600) == 1
    assert not old.exists() and fresh.exists() and cache.manifest_path.exists()


def test_rle_round_trip() -> None:
    gen = torch.Generator().manual_seed(3)
    for mask in (
        torch.rand(31, 47, generator=gen) > 0.5,
        torch.zeros(5, 6, dtype=torch.bool),
        torch.ones(5, 6, dtype=torch.bool),
    ):
        rle = encode_rle(mask)
        assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
        restored = decode_rle(json.loads(json.dumps(rle)))
        assert restored.dtype == torch.bool and torch.equal(restored, mask)
