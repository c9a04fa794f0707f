"""Background cache writes: RLE, palette PNG and JSON encoding off the labelling thread.

``CacheWriter`` hands each labelled sample (CPU tensors) to a small thread pool that RLE-encodes
its instance masks and writes its JSON and PNG atomically through ``PseudoLabelCache.store`` (PNG
last: it marks the entry complete). The queue is bounded, so a slow disk slows the labeller down
instead of filling memory. A failed write is raised in the labelling thread at the next
``submit`` or ``flush``, as a ``CacheError`` naming the id and the file. A crash loses at most the
entries still in flight: they have no PNG, so they are simply labelled again next time.

``FlushLabelWrites`` is the Lightning callback that flushes before a training epoch ends, before a
checkpoint is saved, and at the end of fit or on an exception.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from wsss_pl.errors import CacheError
from wsss_pl.labeling.storage.cache import PseudoLabelCache, encode_rle


class CacheWriter:
    """Writes pseudo-labels to ``cache`` in ``workers`` background threads.

    Args:
        cache: the pseudo-label cache.
        workers: writer threads (encoding releases the GIL in zlib and pycocotools); 0 writes
            synchronously in the caller's thread.
        max_pending: entries queued or in flight before ``submit`` blocks.
    """

    def __init__(self, cache: PseudoLabelCache, workers: int = 2, max_pending: int = 64) -> None:
        if workers < 0 or max_pending < 1:
            raise ValueError(
                f"need workers >= 0 and max_pending >= 1, got {workers}, {max_pending}"
            )
        self.cache = cache
        self.workers = workers
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="wsss-cache-writer") if workers else None
        )
        self._pending: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._errors: list[CacheError] = []

    def submit(
        self,
        sample_id: str,
        label: Tensor,
        metadata: Mapping[str, Any],
        masks: Tensor | None = None,
    ) -> None:
        """Queue one entry.

        Args:
            sample_id: the sample's id.
            label: uint8 [H, W] on the CPU.
            metadata: the record of ``wsss_pl.labeling.storage.cache`` (copied); when ``masks`` is given
                its instances' ``rle`` is filled from them here, in the writer thread.
            masks: bool [N, H, W] on the CPU, one per instance in ``metadata["instances"]``.
        """
        self._raise_pending()
        if label.device.type != "cpu" or (masks is not None and masks.device.type != "cpu"):
            raise ValueError("CacheWriter.submit takes CPU tensors (move a batch once, not per id)")
        if self._pool is None:
            self._write(sample_id, label, metadata, masks)
            return
        self._slots.acquire()
        try:
            future = self._pool.submit(self._write, sample_id, label, metadata, masks)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
            error = future.exception()
            if isinstance(error, CacheError):
                self._errors.append(error)
            elif error is not None:
                self._errors.append(CacheError(f"pseudo-label cache writer failed: {error!r}"))
        self._slots.release()

    def _write(
        self, sample_id: str, label: Tensor, metadata: Mapping[str, Any], masks: Tensor | None
    ) -> None:
        record = dict(metadata)
        try:
            if masks is not None:
                instances = list(record.get("instances", []))
                if len(instances) != len(masks):
                    raise ValueError(f"{len(masks)} masks for {len(instances)} instances")
                record["instances"] = [
                    {**instance, "rle": encode_rle(mask)}
                    for instance, mask in zip(instances, masks, strict=True)
                ]
            self.cache.store(sample_id, label, record)
        except Exception as error:
            raise CacheError(
                f"could not write pseudo-label {sample_id!r} to {self.cache.path(sample_id)} "
                f"(metadata {self.cache.metadata_path(sample_id)}): {error}; the label will be "
                "made again on the next run"
            ) from error

    def _raise_pending(self) -> None:
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            if len(errors) > 1:
                raise CacheError(f"{errors[0]} (and {len(errors) - 1} more failed writes)")
            raise errors[0]

    def flush(self) -> None:
        """Wait until every queued entry is on disk; raise the first failed write."""
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                break
            for future in pending:
                future.exception()  # waits; errors are collected by _done
        self._raise_pending()

    def close(self) -> None:
        """Flush, then stop the threads."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    @property
    def num_pending(self) -> int:
        with self._lock:
            return len(self._pending)


def to_cpu_once(tensors: list[Tensor]) -> list[Tensor]:
    """Copy ``tensors`` (any shapes, bool or uint8, one device) to the CPU in one transfer.

    Per-tensor ``.cpu()`` calls synchronise the device once each; here they are packed into one
    flat uint8 buffer, copied once and split back into views of their shapes and dtypes.
    """
    if not tensors:
        return []
    if tensors[0].device.type == "cpu":
        return list(tensors)
    flat = torch.cat([t.reshape(-1).view(torch.uint8) for t in tensors]).cpu()
    out, offset = [], 0
    for t in tensors:
        size = t.numel()
        out.append(flat[offset : offset + size].view(t.dtype).view(t.shape))
        offset += size
    return out


class FlushLabelWrites(pl.Callback):
    """Flush the data module's ``train_labels`` background writes (when it has ``flush``) before
    a training epoch ends, before a checkpoint is saved, and at the end of fit or on an error."""

    @staticmethod
    def _flush(trainer: pl.Trainer) -> None:
        labels = getattr(getattr(trainer, "datamodule", None), "train_labels", None)
        flush = getattr(labels, "flush", None)
        if callable(flush):
            flush()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._flush(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        with contextlib.suppress(CacheError):  # the original error is the one to show
            self._flush(trainer)
