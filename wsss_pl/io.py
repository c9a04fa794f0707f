"""Reading images and label maps, and writing files atomically (temp file + rename).

A killed process or a full disk never leaves a half-written label behind: every write goes to a
temporary file in the target directory and is renamed over the target only when complete. A temp
file's name carries its writer's host and pid (``.<target>.<host>-<pid>.<random>.tmp``), so the
temp files of a killed writer are recognised and removed at the next start
(``remove_orphan_temp_files``), while a live writer's are left alone.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from wsss_pl.errors import CorruptFileError, DataError


def read_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to uint8 [3, H, W] RGB (grey and RGBA are converted)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {path} does not exist; check the data root and the id list")
    if path.stat().st_size == 0:
        raise CorruptFileError(
            f"image file {path} is empty (0 bytes); replace it or remove its id from the split list"
        )
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except PermissionError as error:  # readable by someone else: not a corrupt file
        raise DataError(
            f"image file {path} is not readable by this user ({error.strerror})"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise CorruptFileError(
            f"image file {path} cannot be decoded ({error}); replace it or remove its id "
            "from the split list"
        ) from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_label(path: str | Path) -> torch.Tensor:
    """Read a label PNG (palette 'P' or greyscale 'L': pixel values are class ids) as uint8 [H, W]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file {path} does not exist")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise CorruptFileError(
                    f"label file {path} has mode {image.mode!r}; expected a palette ('P') or "
                    "greyscale ('L') PNG whose pixel values are class ids"
                )
            array = np.asarray(image)
    except PermissionError as error:
        raise DataError(
            f"label file {path} is not readable by this user ({error.strerror})"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise CorruptFileError(f"label file {path} cannot be decoded ({error})") from error
    return torch.from_numpy(array.astype(np.uint8, copy=True))


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; shared caches and datasets need the usual umask-based permissions.
_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


TEMP_SUFFIX = ".tmp"
# Host names may hold dots; keep the part of the name that the parser below can read back.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_OWNER = re.compile(r"\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")


def temp_prefix(name: str) -> str:
    """Prefix of a temp file for target ``name``, naming this process: ``.<name>.<host>-<pid>.``."""
    return f".{name}.{_HOST}-{os.getpid()}."


def make_temp(directory: Path, name: str) -> tuple[int, str]:
    """``tempfile.mkstemp`` beside target ``name`` in ``directory``, owner in the name."""
    return tempfile.mkstemp(dir=directory, prefix=temp_prefix(name), suffix=TEMP_SUFFIX)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def orphan_temp_file(name: str, older_than_s: float, mtime: float) -> bool:
    """Whether a temp file can have no live writer: its writer (named in it) is a dead process of
    this host, or (other hosts, old-style names) it is older than ``older_than_s``."""
    match = _OWNER.search(name)
    if match is not None and match["host"] == _HOST:
        return not _pid_alive(int(match["pid"]))
    return mtime < time.time() - older_than_s


def remove_orphan_temp_files(directory: Path, older_than_s: float = 3600) -> int:
    """Delete the temp files of killed writers in ``directory`` (see ``orphan_temp_file``).

    A read-only directory is left as it is. Returns the number of files removed.
    """
    removed = 0
    if not directory.is_dir():
        return 0
    for path in directory.glob(f".*{TEMP_SUFFIX}"):
        try:
            if orphan_temp_file(path.name, older_than_s, path.stat().st_mtime):
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another process removed it first
            continue
        except OSError as error:
            if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                break  # read-only: nothing to clean up here
            raise
    return removed


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Run ``write`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = make_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, FILE_MODE)
        os.replace(tmp_name, path)
    except BaseException:
        # Also on KeyboardInterrupt / OSError(ENOSPC): leave neither a temp file nor a partial file.
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_label(path: str | Path, label: torch.Tensor | np.ndarray, palette: Sequence[int]) -> None:
    """Atomically write a uint8 [H, W] label map as a palette PNG (lossless, viewable)."""
    array = label.cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if array.ndim != 2:
        raise ValueError(f"label map for {path} must be 2-D [H, W], got shape {array.shape}")
    image = Image.fromarray(array.astype(np.uint8), mode="P")
    image.putpalette(list(palette))
    _atomic_write(Path(path), lambda handle: image.save(handle, format="PNG"))


def check_output_file(path: str | Path, overwrite: bool, option: str) -> None:
    """Refuse (DataError naming ``option``) an output path that is a folder, or an existing file
    without ``overwrite``: a command must not silently replace a user's file."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise DataError(f"{option} {path} exists; pass --overwrite to replace it, or another name")


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write bytes."""
    _atomic_write(Path(path), lambda handle: handle.write(data))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write JSON (indented, UTF-8)."""
    write_bytes(path, json.dumps(obj, indent=1, sort_keys=False).encode("utf-8"))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"JSON file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"JSON file {path} is malformed: {error}") from error
