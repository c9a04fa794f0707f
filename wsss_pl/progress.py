"""Progress that stays readable in a log file: a tqdm bar on a terminal, plain lines otherwise.

A tqdm or rich bar redraws one line with carriage returns; written to a file (``> run.log``,
a batch scheduler's log) it shows nothing useful until the end. Off a terminal, ``Progress``
prints one line every ``interval_s`` seconds with the rate and the ETA, and one at the end.

Imports only the standard library at the top (evaluation workers and the CLI import it).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """'0:01:05' style; '?' for an unknown (NaN or infinite) duration."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def rate_and_eta(done: float, total: float | None, elapsed: float) -> tuple[float, float]:
    """(items per second, seconds left; NaN when unknown)."""
    rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
    left = (total - done) / rate if total and rate == rate and rate > 0 else float("nan")
    return rate, left


def progress_line(
    desc: str, done: float, total: float | None, elapsed: float, unit: str = "it", **extra: Any
) -> str:
    """'labelling: 40/80 img (50%), 2.31 img/s, ETA 0:00:17, cached=3' (one line, no bar)."""
    rate, left = rate_and_eta(done, total, elapsed)
    count = (
        f"{done:g}/{total:g} {unit} ({100 * done / total:.0f}%)" if total else f"{done:g} {unit}"
    )
    parts = [f"{desc}: {count}"]
    parts.append(f"{rate:.2f} {unit}/s" if rate == rate else f"? {unit}/s")
    if total and done >= total:
        parts.append(f"took {format_duration(elapsed)}")
    else:
        parts.append(f"ETA {format_duration(left)}")
    parts.extend(f"{key}={value}" for key, value in extra.items())
    return ", ".join(parts)


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


class Progress:
    """Counts ``done`` of ``total`` items.

    On a terminal: a tqdm bar on ``file``. Otherwise: a plain line on ``file`` at most every
    ``interval_s`` seconds, and one at ``close()``. ``enabled=False`` prints nothing.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        file: TextIO | None = None,
        interval_s: float = 30.0,
        enabled: bool = True,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.file = file if file is not None else sys.stderr
        self.interval_s = interval_s
        self.enabled = enabled
        self.done = 0
        self.extra: dict[str, Any] = {}
        self.start = time.perf_counter()
        self._last_line = self.start
        self._bar: Any = None
        if enabled and is_terminal(self.file):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=self.file)

    def update(self, n: int = 1, **extra: Any) -> None:
        self.done += n
        self.extra.update(extra)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if extra:
                self._bar.set_postfix(self.extra)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.interval_s:
            self._last_line = now
            self._print(now)

    def _print(self, now: float) -> None:
        line = progress_line(
            self.desc, self.done, self.total, now - self.start, self.unit, **self.extra
        )
        print(line, file=self.file, flush=True)
        self._printed = (self.done, dict(self.extra))

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif getattr(self, "_printed", None) != (self.done, self.extra):
            self._print(time.perf_counter())  # the final line, unless it was just printed
        self.enabled = False
