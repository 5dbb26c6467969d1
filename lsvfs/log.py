"""The `lsvfs` logger: silent in a library unless asked, on stderr in the CLI.

A library must not print, so the package logger gets a NullHandler and shows
nothing until the application configures logging. `LITESTREAM_LOG_LEVEL`
(DEBUG, INFO, WARN/WARNING, ERROR; any case) asks for lsvfs's records on
stderr even in a library, as the Go VFS honours it; it is read once, when
lsvfs is imported.
"""

from __future__ import annotations

import logging
import os
import sys

from .storage.redact import RedactingFilter

LOGGER = logging.getLogger("lsvfs")
ENV = "LITESTREAM_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING, "WARNING": logging.WARNING,
          "ERROR": logging.ERROR}


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record comes, so redirection and captured
    output see it (a plain StreamHandler keeps the stream it was built with)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))
        self.addFilter(RedactingFilter())  # no credential from a URL reaches the terminal

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


_handler: _Stderr | None = None


def parse_level(text: str) -> int | None:
    """The logging level a `LITESTREAM_LOG_LEVEL` value names, or None."""
    return LOG_LEVELS.get(text.strip().upper())


def env_level() -> int | None:
    """The level `LITESTREAM_LOG_LEVEL` asks for; None when unset or not a level."""
    raw = os.environ.get(ENV, "")
    return parse_level(raw) if raw.strip() else None


def to_stderr(level: int) -> None:
    """Send lsvfs records at `level` and above to stderr; one handler however often called."""
    global _handler
    if _handler is None:
        _handler = _Stderr()
        LOGGER.addHandler(_handler)
    LOGGER.setLevel(level)


def _apply_env() -> None:
    raw = os.environ.get(ENV, "")
    if not raw.strip():
        return
    level = parse_level(raw)
    to_stderr(logging.WARNING if level is None else level)
    if level is None:
        LOGGER.warning("%s=%r is not a log level (one of %s); ignored", ENV, raw, ", ".join(LOG_LEVELS))


LOGGER.addHandler(logging.NullHandler())
_apply_env()
