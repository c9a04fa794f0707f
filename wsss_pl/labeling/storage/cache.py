"""On-disk cache of pseudo-labels: one palette PNG plus one metadata JSON per image.

Layout: ``<root>/<dataset>/<fingerprint>/`` holds ``manifest.json`` and, per sample id,
``<id>.json`` (instance metadata) and ``<id>.png`` (uint8 label map, palette PNG, viewable).
The fingerprint hashes the settings that change labels, so a changed config never reuses stale
labels and an unchanged one never recomputes. Ids with characters unsafe in file names ("/", "%",
a leading ".") are percent-encoded, reversibly.

Writes are atomic (temp file + rename) and ordered: the JSON first, the PNG last, so a PNG on disk
means the entry is complete. A PNG that still fails to decode (e.g. torn by a crash on a filesystem
without atomic rename) is moved aside to ``<id>.png.corrupt`` and reported missing, so it is
recomputed instead of stopping training (a cache opened ``read_only`` only reports it missing).

Shared use: files are written with the umask's permissions (a group-writable umask lets a second
user of the group add labels); a full disk or a read-only cache raises a one-line CacheError naming
the directory and ``cache_root``; a complete cache on a read-only filesystem is read as usual.

Metadata JSON schema (one object per image, written by the labeler):

    {
      "id": str,                     # sample id
      "height": int, "width": int,   # label map size
      "instances": [                 # every detection that was kept, in detection order
        {
          "label": int,              # class id 1..C
          "class": str,              # class name
          "phrase": str,             # caption phrase the detector fired on (class or assist word)
          "score": float,            # detection confidence
          "box": [x0, y0, x1, y1],   # float pixels
          "rle": {"size": [H, W], "counts": str}  # pycocotools RLE of the raw SAM mask
        }, ...
      ],
      "missing_classes": [str],      # image-level classes that got no box
      "num_unmatched_boxes": int     # boxes whose phrase matched no class (dropped)
    }
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import wsss_pl
from wsss_pl.errors import CacheError, CorruptFileError, DataError
from wsss_pl.io import (
    FILE_MODE,
    make_temp,
    read_json,
    read_label,
    remove_orphan_temp_files,
    write_json,
    write_label,
)
from wsss_pl.labeling.storage.cache_formats import (  # noqa: F401  (re-exported: callers import them here)
    _canonical_json,
    _differences,
    _normalised,
    changed_entries,
    decode_id,
    decode_rle,
    encode_id,
    encode_rle,
)
from wsss_pl.palette import voc_palette

LABEL_FORMAT_VERSION = 1
"""Bump when the meaning of a stored label changes; it is part of the fingerprint."""

MANIFEST_NAME = "manifest.json"
# A write that fails for one of these is the disk or the permissions, not the data.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class PseudoLabelCache:
    """Pseudo-labels of one dataset under one settings fingerprint.

    Safe for several processes (DDP ranks, DataLoader workers) sharing one filesystem: ``open`` may
    run concurrently, ``store`` of the same id by two writers leaves one complete entry.

    Args:
        root: cache root directory.
        dataset: dataset name (a path component, e.g. ``"voc"``).
        settings: everything that changes the labels (model ids, checkpoint hashes, thresholds,
            vocabulary, assist words, merge rule...); JSON-serialisable.
        palette: flat [r, g, b, ...] palette of the PNGs (e.g. ``wsss_pl.classes.voc_palette()``).
        read_only: never modify the cache (no manifest, no moving torn files aside, no store);
            for readers such as ``export-labels``.
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        settings: Mapping[str, Any],
        palette: Sequence[int],
        read_only: bool = False,
    ) -> None:
        if not dataset or "/" in dataset or dataset in (".", ".."):
            raise ValueError(f"dataset name {dataset!r} must be a single path component")
        self.root = Path(root)
        self.dataset = dataset
        self.settings = _normalised(settings)
        self.palette = list(palette)
        self.read_only = read_only
        self._opened = False
        # Computed once: path() runs per sample on the loader's hot path.
        payload = _canonical_json(
            {"settings": self.settings, "label_format_version": LABEL_FORMAT_VERSION}
        )
        self._fingerprint = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_directory(
        cls, directory: str | Path, palette: Sequence[int] | None = None, read_only: bool = True
    ) -> PseudoLabelCache:
        """Open an existing cache directory (``<root>/<dataset>/<fingerprint>``) by its manifest;
        read-only unless asked otherwise."""
        directory = Path(directory)
        manifest_path = directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise CacheError(
                f"{directory} is not a pseudo-label cache (no {MANIFEST_NAME}); pass the "
                "<cache_root>/<dataset>/<fingerprint> directory that the labelling run printed"
            )
        manifest = read_json(manifest_path)
        if palette is None:
            palette = voc_palette()
        cache = cls(
            directory.parent.parent,
            directory.parent.name,
            manifest.get("settings", {}),
            palette,
            read_only=read_only,
        )
        if cache.directory.resolve() != directory.resolve():
            raise CacheError(
                f"{directory}: its manifest's settings hash to {cache.fingerprint}, not to the "
                "directory name; the manifest was edited or the directory renamed"
            )
        cache._check_manifest()
        cache._opened = True
        return cache

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of sha256 over the canonical settings JSON + label format version."""
        return self._fingerprint

    @property
    def directory(self) -> Path:
        return self.root / self.dataset / self.fingerprint

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_NAME

    def open(self) -> None:
        """Create the directory and its manifest, or check an existing manifest.

        Raises:
            CacheError: the existing manifest's settings or format version differ from ours, or
                the cache cannot be created (read-only, disk full).
        """
        if self.read_only or self.manifest_path.is_file():
            # Complete caches are opened without writing, so they can live on read-only storage.
            self._check_manifest()
            self._opened = True
            return
        with self._storage_errors("create"):
            self.directory.mkdir(parents=True, exist_ok=True)
        manifest = {
            "settings": self.settings,
            "fingerprint": self.fingerprint,
            "label_format_version": LABEL_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wsss_pl_version": wsss_pl.__version__,
        }
        if not self.manifest_path.exists():
            with self._storage_errors("create"):
                self._publish_manifest(manifest)
        self._check_manifest()
        self._opened = True

    def _publish_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest unless one exists; concurrent callers all succeed.

        os.link publishes the complete temp file only if no manifest exists yet (first writer
        wins, the others then compare); filesystems without hard links fall back to os.replace,
        which is also fine because every writer's settings are then checked to be equal.
        """
        fd, tmp_name = make_temp(self.directory, MANIFEST_NAME)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, FILE_MODE)  # mkstemp's 0600 would lock out the group's other users
            try:
                os.link(tmp_name, self.manifest_path)
            except FileExistsError:
                pass
            except OSError:  # no hard links here (some network / FUSE filesystems)
                os.replace(tmp_name, self.manifest_path)
        finally:
            Path(tmp_name).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _storage_errors(self, action: str) -> Any:
        """Turn a full disk or a read-only / foreign-owned cache into a one-line CacheError."""
        try:
            yield
        except OSError as error:
            if error.errno not in _STORAGE_ERRNOS:
                raise
            reason = error.strerror or os.strerror(error.errno or 0)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                advice = (
                    "free space there, or set cache_root (data.train_labels.init_args.cache_root)"
                )
            elif action == "read":
                advice = (
                    "give this user read access (e.g. chmod -R g+rX), or set cache_root "
                    "(data.train_labels.init_args.cache_root)"
                )
            else:
                advice = (
                    "make it writable for this user, or set cache_root "
                    "(data.train_labels.init_args.cache_root)"
                )
            raise CacheError(
                f"cannot {action} the pseudo-label cache {self.directory} ({reason}): {advice} "
                "to a writable directory with free space"
            ) from None

    def _check_manifest(self) -> None:
        try:
            with self._storage_errors("read"):
                found = read_json(self.manifest_path)
        except CorruptFileError as error:
            raise CacheError(
                f"pseudo-label cache manifest {self.manifest_path} is unreadable ({error}); "
                "delete it to re-create it from the current settings"
            ) from error
        problems = _differences(self.settings, found.get("settings"))
        if found.get("label_format_version") != LABEL_FORMAT_VERSION:
            problems.append(
                f"label_format_version: given {LABEL_FORMAT_VERSION}, manifest has "
                f"{found.get('label_format_version')!r}"
            )
        if problems:
            raise CacheError(
                f"pseudo-label cache {self.directory} was made with different settings:\n  "
                + "\n  ".join(problems)
                + "\nUse another cache root, or delete that directory to relabel."
            )

    def environment_siblings(self, key: str = "environment") -> list[tuple[Path, list[str], int]]:
        """Other caches of this dataset whose settings equal ours except under ``key``.

        Returns (directory, 'name old -> new' differences of ``key``, number of labels) per
        sibling, most labels first: the caches a run with this settings fingerprint could have
        used had its environment (library versions, device, threads) been the same. A sibling
        with an unreadable manifest, another label format or other settings is not listed.
        """
        ours = {k: v for k, v in self.settings.items() if k != key}
        parent = self.root / self.dataset
        if not parent.is_dir():
            return []
        found = []
        for manifest_path in sorted(parent.glob(f"*/{MANIFEST_NAME}")):
            directory = manifest_path.parent
            if directory.name == self.fingerprint:
                continue
            try:
                manifest = read_json(manifest_path)
            except (CorruptFileError, DataError, OSError):
                continue
            settings = manifest.get("settings")
            if (
                not isinstance(settings, dict)
                or manifest.get("label_format_version") != LABEL_FORMAT_VERSION
                or {k: v for k, v in settings.items() if k != key} != ours
            ):
                continue
            count = sum(1 for _ in directory.glob("*.png"))
            found.append(
                (directory, changed_entries(settings.get(key), self.settings.get(key)), count)
            )
        return sorted(found, key=lambda item: -item[2])

    def path(self, sample_id: str) -> Path:
        """Path of the label PNG of ``sample_id`` (which need not exist)."""
        return self.directory / f"{encode_id(sample_id)}.png"

    def metadata_path(self, sample_id: str) -> Path:
        return self.directory / f"{encode_id(sample_id)}.json"

    def has(self, sample_id: str) -> bool:
        """Whether a complete entry (its PNG) exists."""
        return self.path(sample_id).is_file()

    def load(self, sample_id: str) -> torch.Tensor | None:
        """uint8 [H, W] label of ``sample_id``; None when missing or corrupt (moved aside)."""
        path = self.path(sample_id)
        if not path.is_file():
            return None
        try:
            return read_label(path)
        except CorruptFileError as error:
            if not path.is_file():  # another rank moved it aside meanwhile
                return None
            moved = False
            if not self.read_only:
                with contextlib.suppress(OSError):  # gone already, or read-only storage
                    os.replace(path, path.with_name(path.name + ".corrupt"))
                    moved = True
            where = f"moved aside to {path.name}.corrupt" if moved else "left in place"
            warnings.warn(
                f"corrupt cached pseudo-label {path} {where}; it counts as missing ({error})",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        except DataError:  # vanished between the check and the read
            return None

    def load_metadata(self, sample_id: str) -> dict[str, Any] | None:
        """Instance metadata of ``sample_id`` (schema in the module docstring), or None."""
        path = self.metadata_path(sample_id)
        if not path.is_file():
            return None
        try:
            return read_json(path)
        except CorruptFileError as error:
            warnings.warn(str(error), RuntimeWarning, stacklevel=2)
            return None

    def store(self, sample_id: str, label: torch.Tensor, metadata: Mapping[str, Any]) -> None:
        """Atomically write metadata JSON, then the uint8 [H, W] label PNG (the completion mark)."""
        if label.dtype != torch.uint8 or label.ndim != 2:
            raise ValueError(
                f"label of {sample_id!r} must be uint8 [H, W], got {label.dtype} "
                f"{tuple(label.shape)}"
            )
        size = (metadata.get("height"), metadata.get("width"))
        if size != (None, None) and size != tuple(label.shape):
            raise ValueError(
                f"metadata of {sample_id!r} says height, width = {size} but the label is "
                f"{tuple(label.shape)}"
            )
        if self.read_only:
            raise CacheError(f"pseudo-label cache {self.directory} was opened read-only")
        if not self._opened:
            self.open()
        with self._storage_errors("write to"):
            write_json(self.metadata_path(sample_id), dict(metadata))
            write_label(self.path(sample_id), label, self.palette)

    def ids(self) -> list[str]:
        """Sorted ids of complete entries."""
        if not self.directory.is_dir():
            return []
        with os.scandir(self.directory) as entries:
            stems = [
                entry.name[: -len(".png")]
                for entry in entries
                if entry.name.endswith(".png") and not entry.name.startswith(".")
            ]
        return sorted(decode_id(stem) for stem in stems)

    def __len__(self) -> int:
        return len(self.ids())

    def remove_stale_temp_files(self, older_than_s: float = 3600) -> int:
        """Delete the temp files of killed writers; returns how many.

        A temp file names its writer's host and pid: one of a dead process of this host goes at
        once, one of a live process stays, one of another host (or an old-style name) goes when
        older than ``older_than_s``. A read-only cache is left untouched.
        """
        if self.read_only:
            return 0
        return remove_orphan_temp_files(self.directory, older_than_s)

    def __repr__(self) -> str:
        return f"PseudoLabelCache({str(self.directory)!r})"
