"""Downloading files: resumable, checksummed, atomic (archives: ``wsss_pl.archive``).

A file appears at its final path only when complete and verified: bytes stream into
``<destination>.part`` and the part is renamed over the destination once its checksum matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from wsss_pl import __version__
from wsss_pl.errors import WsssError
from wsss_pl.io import write_json

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
_USER_AGENT = f"wsss_pl/{__version__} (python-urllib)"
_HEX = re.compile(r"[0-9a-f]+")


class _Unreachable(Exception):
    """The server could not be reached or the transfer broke off (a ``.part`` may be kept)."""


# --------------------------------------------------------------------------------------- hashing


def file_digests(path: str | Path, algorithms: Sequence[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of a file for several hashlib algorithms in one chunked pass."""
    hashers = [hashlib.new(name, usedforsecurity=False) for name in algorithms]
    _feed(Path(path), hashers)
    return {name: hasher.hexdigest() for name, hasher in zip(algorithms, hashers, strict=True)}


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file, read in chunks (constant memory for multi-GB checkpoints)."""
    return file_digests(path)["sha256"]


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_sha256_sidecar(path: str | Path) -> str | None:
    """The sha256 recorded in ``<path>.sha256`` if the file's size and mtime still match it."""
    path = Path(path)
    try:
        info = path.stat()
        record = json.loads(_sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    digest = record.get("sha256") if isinstance(record, dict) else None
    if (
        isinstance(digest, str)
        and len(digest) == 64
        and record.get("size") == info.st_size
        and record.get("mtime_ns") == info.st_mtime_ns
    ):
        return digest
    return None


def write_sha256_sidecar(path: str | Path, digest: str) -> None:
    """Record ``digest`` in ``<path>.sha256`` keyed by size + mtime; skipped on read-only dirs."""
    path = Path(path)
    try:
        info = path.stat()
        record = {"sha256": digest, "size": info.st_size, "mtime_ns": info.st_mtime_ns}
        write_json(_sidecar_path(path), record)
    except OSError as error:  # a shared read-only checkpoint folder: hash again next time
        log.debug("cannot write sha256 sidecar for %s: %s", path, error)


def _checks(
    sha256: str | None, md5: str | None, sha256_prefix: str | None
) -> list[tuple[str, str]]:
    """(label, expected hex) per requested checksum; labels are 'sha256', 'md5', 'sha256 prefix'."""
    checks: list[tuple[str, str]] = []
    for label, value, sizes in (
        ("sha256", sha256, (64,)),
        ("md5", md5, (32,)),
        ("sha256 prefix", sha256_prefix, tuple(range(1, 65))),
    ):
        if value is None:
            continue
        value = value.strip().lower()
        if len(value) not in sizes or not _HEX.fullmatch(value):
            raise ValueError(f"{label} {value!r} is not a valid hex digest")
        checks.append((label, value))
    return checks


def _mismatches(checks: list[tuple[str, str]], digests: dict[str, str]) -> list[str]:
    """Human-readable 'expected X, got Y' for every failed check."""
    failed = []
    for label, expected in checks:
        actual = digests["md5" if label == "md5" else "sha256"]
        ok = actual.startswith(expected) if label == "sha256 prefix" else actual == expected
        if not ok:
            failed.append(f"expected {label} {expected}, got {actual}")
    return failed


def _algorithms(checks: list[tuple[str, str]]) -> list[str]:
    # sha256 always: it feeds the sidecar, so a verified file is never hashed again.
    return ["sha256", *(["md5"] if any(label == "md5" for label, _ in checks) else [])]


def _existing_mismatches(path: Path, checks: list[tuple[str, str]]) -> list[str]:
    recorded = read_sha256_sidecar(path)
    wanted = [name for name in _algorithms(checks) if not (name == "sha256" and recorded)]
    digests = file_digests(path, wanted) if wanted else {}
    if recorded is None:
        write_sha256_sidecar(path, digests["sha256"])
    else:
        digests["sha256"] = recorded
    return _mismatches(checks, digests)


# ------------------------------------------------------------------------------------- locking


@contextlib.contextmanager
def file_lock(target: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``<target>.lock`` so DDP ranks never share a ``.part``.

    POSIX only (no-op elsewhere). The lock file is removed on release; a waiter that acquired a lock
    on the removed file notices it is no longer the live one and locks again.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; single-process use is still correct.
        yield
        return
    lock_path = target.with_name(target.name + ".lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                live = os.path.samestat(os.fstat(fd), os.stat(lock_path))
            except FileNotFoundError:
                live = False
        except BaseException:
            os.close(fd)
            raise
        if live:
            break
        os.close(fd)
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


# ------------------------------------------------------------------------------------ download


def download_file(
    url: str | Sequence[str],
    destination: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    sha256_prefix: str | None = None,
    progress: bool = True,
    timeout: float = 60,
    error_type: type[WsssError] = WsssError,
) -> Path:
    """Download ``url`` to ``destination`` with resume, progress bar, checksum and atomic rename.

    Args:
        url: the URL, or several mirrors tried in order while the previous one is unreachable.
        destination: final file path; bytes go to ``<destination>.part`` first.
        sha256 / md5 / sha256_prefix: expected digests (any combination; all given are checked).
        progress: show a tqdm byte progress bar.
        timeout: seconds for connecting and for each read.
        error_type: the WsssError subclass to raise (WeightsError, DataError, ...).

    An existing destination is kept without any request when it passes every given checksum (or
    when none is given). A ``.part`` left by an interrupted run is resumed with an HTTP Range
    request; if the server ignores ranges the download restarts. A checksum mismatch deletes the
    part and raises; an unreachable server raises with the URL and the exact path to fill by hand.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("download_file needs at least one URL")
    destination = Path(destination).expanduser()
    checks = _checks(sha256, md5, sha256_prefix)
    if destination.is_file() and not (checks and _existing_mismatches(destination, checks)):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(destination):
        if destination.is_file():  # another process may have finished it while we waited
            failed = _existing_mismatches(destination, checks) if checks else []
            if not failed:
                return destination
            log.warning(
                "%s exists but fails its checksum (%s); downloading it again",
                destination,
                failed[0],
            )
        part = destination.with_name(destination.name + ".part")
        failures: list[str] = []
        for candidate in urls:
            try:
                digests = _fetch_verified(
                    candidate, part, destination, checks, progress, timeout, error_type
                )
            except _Unreachable as error:
                failures.append(f"{candidate}: {error}")
                log.warning("download of %s failed: %s", candidate, error)
                continue
            os.replace(part, destination)
            write_sha256_sidecar(destination, digests["sha256"])
            return destination
        raise error_type(_unreachable_message(urls, destination, part, failures, checks))


def _fetch_verified(
    url: str,
    part: Path,
    destination: Path,
    checks: list[tuple[str, str]],
    progress: bool,
    timeout: float,
    error_type: type[WsssError],
) -> dict[str, str]:
    """Fetch into ``part`` and verify; a resumed part that fails is retried once from scratch."""
    resumed = part.is_file() and part.stat().st_size > 0
    digests = _fetch(url, part, _algorithms(checks), progress, timeout)
    failed = _mismatches(checks, digests)
    if failed and resumed:  # the kept bytes may be from a different file version: start over
        log.warning("resumed download of %s failed its checksum; downloading it from scratch", url)
        part.unlink(missing_ok=True)
        digests = _fetch(url, part, _algorithms(checks), progress, timeout)
        failed = _mismatches(checks, digests)
    if failed:
        part.unlink(missing_ok=True)
        raise error_type(
            f"checksum mismatch for {destination.name} downloaded from {url}: {'; '.join(failed)}. "
            f"The partial file {part} was deleted and {destination} was not written. The server "
            f"may serve a different version or the transfer was corrupted: run again, or download "
            f"{url} by hand, check its checksum, and put it at {destination}."
        )
    return digests


def _fetch(
    url: str, part: Path, algorithms: list[str], progress: bool, timeout: float
) -> dict[str, str]:
    """Stream ``url`` into ``part`` (appending when the server honours a Range); return digests."""
    offset = part.stat().st_size if part.is_file() else 0
    hashers = {name: hashlib.new(name, usedforsecurity=False) for name in algorithms}
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:  # range not satisfiable: the part already holds it all
            _feed(part, hashers.values())
            return {name: hasher.hexdigest() for name, hasher in hashers.items()}
        raise _Unreachable(f"HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise _Unreachable(str(reason) or type(error).__name__) from error
    with response:
        mode = "wb"
        if offset and response.status == 206:
            if _range_start(response.headers.get("Content-Range")) != offset:
                response.close()
                part.unlink()
                return _fetch(url, part, algorithms, progress, timeout)
            mode = "ab"
            _feed(part, hashers.values())
        else:
            offset = 0  # a plain 200: the server ignored the Range, so start over
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        received = 0
        with (
            open(part, mode) as handle,
            tqdm(
                total=None if length is None else offset + length,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            while True:
                try:
                    chunk = response.read(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as error:  # connection dropped
                    raise _Unreachable(
                        f"connection lost after {offset + received} bytes ({error!r}); "
                        "the partial file is kept and the next run resumes it"
                    ) from error
                if not chunk:
                    break
                handle.write(chunk)
                for hasher in hashers.values():
                    hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if length is not None and received < length:
        raise _Unreachable(
            f"connection closed after {offset + received} of {offset + length} bytes; "
            "the partial file is kept and the next run resumes it"
        )
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def _range_start(content_range: str | None) -> int | None:
    """First byte position of a ``Content-Range: bytes a-b/n`` header."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", content_range or "")
    return int(match.group(1)) if match else None


def _feed(path: Path, hashers: Iterable[Any]) -> None:
    """Update ``hashers`` with the bytes already in ``path`` (the resumed prefix)."""
    hashers = list(hashers)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            for hasher in hashers:
                hasher.update(chunk)


def _unreachable_message(
    urls: list[str],
    destination: Path,
    part: Path,
    failures: list[str],
    checks: list[tuple[str, str]],
) -> str:
    expected = "".join(f"\n    expected {label}: {value}" for label, value in checks)
    kept = (
        f"\nThe partial download {part} is kept; the next run resumes it." if part.is_file() else ""
    )
    return (
        f"could not download {destination.name}: " + "; ".join(failures) + ".\n"
        f"If this machine has no internet access, download on a machine that has it:\n"
        f"    {urls[0]}\n"
        f"and put the file at exactly:\n"
        f"    {destination}{expected}{kept}"
    )
