"""Run the CLI with a directory made read-only or full, in a way that also holds for root.

Tests run as root, and root ignores chmod; so the file-system calls that write are patched to fail
for paths under DIR as the kernel would (EROFS or ENOSPC). The patches are inherited by forked
DataLoader workers. Usage: python tests/fault_injection.py readonly|enospc DIR -- CLI ARGS...
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def install(mode: str, directory: str) -> None:
    root = os.path.abspath(directory)
    code = errno.EROFS if mode == "readonly" else errno.ENOSPC

    def under(path: object) -> bool:
        try:
            text = os.fsdecode(os.fspath(path))  # type: ignore[arg-type]
        except TypeError:  # a file descriptor
            return False
        full = os.path.abspath(text)
        return full == root or full.startswith(root + os.sep)

    def fail(path: object) -> OSError:
        return OSError(code, os.strerror(code), os.fsdecode(os.fspath(path)))  # type: ignore[arg-type]

    def guard(function, writes=lambda *a, **k: True, paths=(0,)):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if writes(*args, **kwargs) and any(under(args[i]) for i in paths if i < len(args)):
                raise fail(args[paths[0]])
            return function(*args, **kwargs)

        return wrapper

    os.open = guard(os.open, lambda path, flags, *a, **k: bool(flags & _WRITE_FLAGS))
    for name in ("mkdir", "unlink", "remove", "rmdir", "chmod"):
        setattr(os, name, guard(getattr(os, name)))
    for name in ("replace", "rename", "link"):
        setattr(os, name, guard(getattr(os, name), paths=(0, 1)))

    def opens_for_write(file: object, mode: str = "r", *args: object, **kwargs: object) -> bool:
        return any(c in mode for c in "wax+")

    builtins.open = io.open = guard(io.open, opens_for_write)


if __name__ == "__main__":
    mode, directory, separator, *cli_args = sys.argv[1:]
    assert mode in ("readonly", "enospc") and separator == "--"
    install(mode, directory)
    from wsss_pl.cli import main

    sys.exit(main(cli_args))
