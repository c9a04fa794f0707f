"""Exceptions whose messages name the file, id or key at fault and say what to do."""


class WsssError(Exception):
    """Base class of every error wsss_pl raises on bad input."""


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
    """A pseudo-label cache disagrees with the configuration that opens it."""
