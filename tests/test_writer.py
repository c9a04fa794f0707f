"""Background cache writer: entries land complete, failures surface naming the id and file."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from wsss_pl.classes import voc_palette
from wsss_pl.errors import CacheError
from wsss_pl.labeling.storage.cache import PseudoLabelCache, decode_rle
from wsss_pl.labeling.storage.writer import CacheWriter, FlushLabelWrites, to_cpu_once


def _cache(root: Path) -> PseudoLabelCache:
    cache = PseudoLabelCache(root, "voc", {"model": "test"}, voc_palette())
    cache.open()
    return cache


def _entry(index: int, height: int = 12, width: int = 16):
    generator = torch.Generator().manual_seed(index)
    masks = torch.rand(2, height, width, generator=generator) > 0.5
    label = (masks[0] * 12 + masks[1] * 8).to(torch.uint8)
    metadata = {
        "id": f"img {index}/x",
        "height": height,
        "width": width,
        "classes": ["dog", "cat"],
        "instances": [
            {"label": 12, "class": "dog", "score": 0.9, "box": [0, 0, 5, 5], "rle": None},
            {"label": 8, "class": "cat", "score": 0.8, "box": [1, 1, 6, 6], "rle": None},
        ],
    }
    return f"img {index}/x", label, metadata, masks


@pytest.mark.parametrize("workers", [0, 2])
def test_entries_written_with_rle_after_flush(tmp_path: Path, workers: int) -> None:
    cache = _cache(tmp_path)
    writer = CacheWriter(cache, workers=workers, max_pending=3)
    entries = [_entry(i) for i in range(10)]
    for sample_id, label, metadata, masks in entries:
        writer.submit(sample_id, label, metadata, masks)
    writer.flush()
    assert writer.num_pending == 0
    for sample_id, label, metadata, masks in entries:
        assert torch.equal(cache.load(sample_id), label)
        stored = cache.load_metadata(sample_id)
        assert metadata["instances"][0]["rle"] is None  # the caller's record is not modified
        for instance, mask in zip(stored["instances"], masks, strict=True):
            assert torch.equal(decode_rle(instance["rle"]), mask)
    writer.close()


def test_failed_write_is_raised_in_the_caller_naming_id_and_file(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    writer = CacheWriter(cache, workers=2)
    sample_id, label, metadata, masks = _entry(0)
    writer.submit(sample_id, label, {**metadata, "height": 99}, masks)  # size mismatch
    good = _entry(1)
    with pytest.raises(CacheError) as raised:
        writer.flush()
        writer.submit(*good)
    message = str(raised.value)
    assert repr(sample_id) in message and str(cache.path(sample_id)) in message
    assert not cache.has(sample_id)  # no half entry: the PNG marks completion
    writer.submit(*good)  # the error was reported once; the writer keeps working
    writer.close()
    assert cache.has(good[0])


def test_submit_blocks_when_the_queue_is_full(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    gate = threading.Event()
    store = cache.store
    cache.store = lambda *a, **k: (gate.wait(10), store(*a, **k))  # type: ignore[method-assign]
    writer = CacheWriter(cache, workers=1, max_pending=2)
    writer.submit(*_entry(0))
    writer.submit(*_entry(1))
    third = threading.Thread(target=writer.submit, args=_entry(2))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # bounded: waits for a free slot
    gate.set()
    third.join(10)
    writer.close()
    assert len(cache) == 3


def test_cpu_tensors_only_and_to_cpu_once_keeps_values(tmp_path: Path) -> None:
    tensors = [torch.ones(2, 3, dtype=torch.bool), torch.arange(6, dtype=torch.uint8)]
    moved = to_cpu_once(tensors)
    assert all(torch.equal(a, b) for a, b in zip(tensors, moved, strict=True))
    writer = CacheWriter(_cache(tmp_path), workers=0)
    sample_id, label, metadata, masks = _entry(0)
    with pytest.raises(ValueError, match="CPU tensors"):
        writer.submit(sample_id, label.to("meta"), metadata, masks)


def test_flush_callback_flushes_the_label_source() -> None:
    calls: list[str] = []
    labels = SimpleNamespace(flush=lambda: calls.append("flush"))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(train_labels=labels))
    callback = FlushLabelWrites()
    callback.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    callback.on_save_checkpoint(trainer, None, {})  # type: ignore[arg-type]
    callback.on_fit_end(trainer, None)  # type: ignore[arg-type]
    assert calls == ["flush"] * 3
    FlushLabelWrites().on_save_checkpoint(SimpleNamespace(datamodule=None), None, {})  # type: ignore[arg-type]
