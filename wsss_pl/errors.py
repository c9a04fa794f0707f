"""Exceptions whose messages name the file, id or key at fault and say what to do."""

from __future__ import annotations

import re

# torch's DataLoader re-raises a worker's exception as ``type(error)(msg)`` where ``msg`` is
# "Caught <Type> in DataLoader worker process N.\nOriginal Traceback ...\n<module>.<Type>: <text>".
_WORKER_PREFIX = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def _unwrap_worker_message(cls: type, message: str) -> str:
    """The original message of an error re-raised from a DataLoader worker (else ``message``)."""
    if not _WORKER_PREFIX.match(message):
        return message
    marker = f"\n{cls.__module__}.{cls.__qualname__}: "
    start = message.rfind(marker)
    if start < 0:
        return message
    return message[start + len(marker) :].rstrip("\n")


class WsssError(Exception):
    """Base class of every error wsss_pl raises on bad input.

    Raised in a DataLoader worker, it reaches the main process with the worker's traceback as
    its message; the constructor keeps only the original message, so the CLI prints one line.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_unwrap_worker_message(type(self), args[0]),)
        super().__init__(*args)


class ConfigError(WsssError):
    """A setting has a value it cannot have (e.g. a batch size of 0)."""


class DataError(WsssError):
    """A dataset file, list, labels file or data root is missing or malformed."""


class CorruptFileError(DataError):
    """An image or label file exists but cannot be decoded."""


class UnknownClassError(DataError, KeyError):
    """A class name is not in the vocabulary."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it verbatim.
        return str(self.args[0]) if self.args else ""


class WeightsError(WsssError):
    """A checkpoint is missing, wrong (checksum) or cannot be loaded."""


class CacheError(WsssError):
    """A pseudo-label cache disagrees with the configuration that opens it, or cannot be written."""
