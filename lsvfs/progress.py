"""A progress bar for long CLI work (restore, verify): on a terminal only.

Piped or redirected output must stay clean for scripts and logs, so the bar
draws only when its stream is a terminal, and ends its line when done or
when closed early (an error mid-restore must not leave the cursor mid-bar).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
INTERVAL = 0.1
"""Seconds between redraws: a fast local restore calls back thousands of times."""


class ProgressBar:
    """Callable as a `restore`/`verify` progress callback: (bytes done, bytes in total)."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", None) and self.stream.isatty())
        self._last = 0.0
        self._open = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < INTERVAL and done < total):
            return
        self._last = now
        frac = min(done / total, 1.0) if total else 1.0
        bar = "#" * int(frac * WIDTH)
        self.stream.write(f"\r{self.label} [{bar:<{WIDTH}}] {frac:6.1%} {done / 1e6:.1f}/{total / 1e6:.1f} MB")
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
