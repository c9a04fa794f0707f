"""Extracting tar and zip archives safely and atomically.

An archive extracts into a temporary directory beside its destination that is renamed into place
only when every member is written, with a marker file inside: a killed extraction never leaves a
tree that looks complete. Absolute paths, ``..`` and links are refused before anything is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm.auto import tqdm

from wsss_pl.download import CHUNK_SIZE, file_lock
from wsss_pl.errors import CorruptFileError, DataError
from wsss_pl.io import write_json

log = logging.getLogger(__name__)

EXTRACTED_MARKER = ".wsss_pl_extracted"


def is_extracted(destination: str | Path) -> bool:
    """Whether ``destination`` holds a completed :func:`extract_archive` (its marker exists)."""
    return (Path(destination) / EXTRACTED_MARKER).is_file()


def extract_archive(
    archive: str | Path,
    destination: str | Path,
    *,
    member_root: str | None = None,
    include: Callable[[str], bool] | None = None,
    progress: bool = False,
) -> None:
    """Extract a tar (any compression) or zip archive into ``destination``, safely and atomically.

    Args:
        archive: the archive file; its type is detected from its content.
        destination: directory to create; must not exist (or be empty) unless already complete.
        member_root: only members under this archive folder, with the folder stripped
            (e.g. ``"VOCdevkit/VOC2012"``).
        include: keep a member only if ``include(relative_path)`` is true (after stripping).
        progress: show a per-member progress bar.

    Members are written into a temporary directory beside ``destination`` which is renamed into
    place at the end, with a marker file inside, so an interrupted extraction never leaves a
    half tree that looks complete; a completed destination makes this a no-op. Absolute paths,
    ``..`` components and links are refused before anything is written.
    """
    archive, destination = Path(archive), Path(destination)
    if is_extracted(destination):
        return
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(destination):
        if is_extracted(destination):
            return
        if destination.exists():
            if not destination.is_dir() or any(destination.iterdir()):
                raise DataError(
                    f"{destination} exists but is not a completed extraction of {archive.name} "
                    f"(no {EXTRACTED_MARKER} inside); move it away or delete it and run again"
                )
            destination.rmdir()
        for stale in destination.parent.glob(f".{destination.name}.extracting-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed run; we hold the lock
        staging = Path(
            tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.extracting-")
        )
        try:
            count = _extract_into(archive, staging, member_root, include, progress)
            if count == 0:
                raise DataError(
                    f"archive {archive} has no members under {member_root!r} to extract; "
                    "it is not the expected archive"
                )
            write_json(staging / EXTRACTED_MARKER, {"archive": archive.name, "members": count})
            os.replace(staging, destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _relative_member(
    name: str, archive: Path, member_root: str | None, include: Callable[[str], bool] | None
) -> str | None:
    """Member path inside the destination, or None to skip it; raises on an unsafe path."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DataError(
            f"archive {archive} contains the unsafe member path {name!r} (absolute or with '..'); "
            "refusing to extract it"
        )
    parts = path.parts
    if member_root:
        root = PurePosixPath(member_root).parts
        if parts[: len(root)] != root:
            return None
        parts = parts[len(root) :]
    if not parts:
        return None
    relative = "/".join(parts)
    if include is not None and not include(relative):
        return None
    return relative


def _members(
    archive: Path,
) -> Iterator[tuple[str, str, Callable[[], IO[bytes]] | None, int | None]]:
    """(name, kind, opener, total) per member: kind is 'file', 'dir' or 'link'; total on first."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            infos = zipped.infolist()
            for index, info in enumerate(infos):
                is_link = stat.S_ISLNK(info.external_attr >> 16)
                kind = "link" if is_link else "dir" if info.is_dir() else "file"
                opener = (lambda info=info: zipped.open(info)) if kind == "file" else None
                yield info.filename, kind, opener, len(infos) if index == 0 else None
        return
    if not tarfile.is_tarfile(archive):
        raise CorruptFileError(f"{archive} is neither a tar nor a zip archive (or it is truncated)")
    with tarfile.open(archive, "r:*") as tarred:
        for member in tarred:
            if member.isfile():
                yield member.name, "file", (lambda m=member: tarred.extractfile(m)), None
            elif member.isdir():
                yield member.name, "dir", None, None
            elif member.issym() or member.islnk():
                yield member.name, "link", None, None
            else:  # devices, fifos: never part of a dataset
                log.warning("skipping special member %s of %s", member.name, archive)


def _extract_into(
    archive: Path,
    staging: Path,
    member_root: str | None,
    include: Callable[[str], bool] | None,
    progress: bool,
) -> int:
    count = 0
    try:
        with tqdm(desc=f"extracting {archive.name}", unit="file", disable=not progress) as bar:
            for name, kind, opener, total in _members(archive):
                if total is not None:
                    bar.reset(total=total)
                bar.update(1)
                relative = _relative_member(name, archive, member_root, include)
                if relative is None:
                    continue
                if kind == "link":
                    raise DataError(
                        f"archive {archive} contains the link {name!r}; wsss_pl extracts only "
                        "regular files and directories"
                    )
                target = staging / relative
                if kind == "dir":
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                assert opener is not None
                with opener() as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK_SIZE)
                count += 1
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise CorruptFileError(
            f"archive {archive} is corrupt or truncated ({error}); delete it and download it again"
        ) from error
    return count
