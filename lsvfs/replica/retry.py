"""Storage reads retried with bounded backoff, and the retries counted."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from ..backoff import Backoff, retry
from ..errors import LTXError, MissingFileError, StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_DELAY = 0.02
"""Seconds before the first retry of a read; each next one doubles."""
MOST_DELAY = 1.0
"""Longest wait between two tries of a read."""


class Retry:
    """Runs a read, retrying storage errors and bad bytes up to `attempts`
    times in all. A corrupt frame is refetched too: a truncated or mangled
    response is far likelier than a corrupt object, and a persistent fault
    still fails. A missing file is never retried; nothing is once `stop` is set."""

    def __init__(self, attempts: int, stop: threading.Event) -> None:
        self._attempts = attempts
        self._stop = stop
        self._lock = threading.Lock()  # guards count
        self._count = 0

    @property
    def count(self) -> int:
        """Retries made so far."""
        return self._count

    def __call__(self, fn: Callable[[], T], what: str) -> T:
        return retry(fn, attempts=self._attempts, retry_on=(StorageError, LTXError), never=(MissingFileError,),
                     backoff=Backoff(FIRST_DELAY, MOST_DELAY), what=what, log=log, stopped=self._stop.is_set,
                     on_retry=self._counted)

    def _counted(self) -> None:
        with self._lock:
            self._count += 1
