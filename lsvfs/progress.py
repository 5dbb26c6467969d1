"""Progress for long CLI work on a terminal only: a bar (restore, verify, the
first fill of a mirror) and a status line redrawn in place (a running mirror).

Piped or redirected output must stay clean for scripts and logs, so both draw
only when their stream is a terminal, and end their line when done or when
closed early (an error mid-restore must not leave the cursor mid-bar).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

WIDTH = 30
INTERVAL = 0.1
"""Seconds between redraws: a fast local restore calls back thousands of times."""
UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"))


def amount(done: int, total: int | None = None) -> str:
    """Bytes in the unit that suits the larger figure: "0.4/1.3 kB", "12.0 MB"."""
    scale, unit = next(((s, u) for s, u in UNITS if max(done, total or 0) >= s), (1.0, "B"))
    digits = 1 if scale > 1 else 0
    shown = f"{done / scale:.{digits}f}" if total is None else f"{done / scale:.{digits}f}/{total / scale:.{digits}f}"
    return f"{shown} {unit}"


def _is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class ProgressBar:
    """Callable as a `restore`/`verify` progress callback: (bytes done, bytes in total)."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream)
        self._last = 0.0
        self._open = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < INTERVAL and done < total):
            return
        self._last = now
        frac = min(done / total, 1.0) if total else 1.0
        bar = "#" * int(frac * WIDTH)
        self.stream.write(f"\r{self.label} [{bar:<{WIDTH}}] {frac:6.1%} {amount(done, total)}")
        self._open = done < total
        if not self._open:
            self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        """End a bar left unfinished, so what follows starts on its own line."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StatusLine:
    """One line of state redrawn in place (each call replaces the last), for a
    command that runs until stopped; `close` ends it so what follows has its own line.
    While it is entered, a record lsvfs logs first erases it, so the record starts
    its own line; the next call draws the state again below it."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream)
        self._open = False
        self._logger = logging.getLogger("lsvfs")

    def __call__(self, text: str) -> None:
        if not self.enabled:
            return
        self.stream.write(f"\r{text}\x1b[K")  # erase what a longer previous line left
        self.stream.flush()
        self._open = True

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def _erase(self, record: logging.LogRecord) -> bool:
        """A filter on lsvfs's log handlers that passes every record, erasing the line first."""
        if self._open:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._open = False
        return True

    def __enter__(self) -> StatusLine:
        if self.enabled:
            for handler in self._logger.handlers:
                handler.addFilter(self._erase)
        return self

    def __exit__(self, *exc: object) -> None:
        for handler in self._logger.handlers:
            handler.removeFilter(self._erase)
        self.close()
