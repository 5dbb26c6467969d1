"""Retrying with bounded exponential backoff, and logging a failed background step.

Reads retry storage errors a few times before a query fails; the poller and
the hydrator keep going after any failure, waiting longer each time. Both are
the same doubling delay, and the same split between errors we expect (logged
as one line) and anything else a custom storage client raises (logged with
its traceback, and still never allowed to kill the thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Backoff:
    """Delays doubling from `first` up to `most`; `reset` after a success."""

    def __init__(self, first: float, most: float) -> None:
        self.first = first
        self.most = most
        self._delay = first

    def next(self) -> float:
        """The delay to wait now; the next one doubles."""
        delay = self._delay
        self._delay = min(delay * 2, self.most)
        return delay

    def reset(self) -> None:
        self._delay = self.first


def retry(fn: Callable[[], T], *, attempts: int, retry_on: tuple[type[BaseException], ...],
          never: tuple[type[BaseException], ...] = (), backoff: Backoff, what: str,
          log: logging.Logger, stopped: Callable[[], bool] = lambda: False,
          on_retry: Callable[[], None] | None = None, sleep: Callable[[float], None] = time.sleep) -> T:
    """`fn()`, tried up to `attempts` times while it raises `retry_on` (but not
    `never`: a missing file stays missing), each retry logged at INFO and
    counted by `on_retry`; the last error, or the first once `stopped`, is raised."""
    for attempt in range(attempts):
        try:
            return fn()
        except never:
            raise
        except retry_on as exc:
            if attempt == attempts - 1 or stopped():
                raise
            delay = backoff.next()
            log.info("%s: %s; retry %d in %.2fs", what, exc, attempt + 1, delay)
            if on_retry is not None:
                on_retry()
            sleep(delay)
    raise ValueError(f"{what}: attempts must be at least 1, not {attempts}")


def log_failure(log: logging.Logger, exc: BaseException, *, expected: tuple[type[BaseException], ...],
                failed: str, unexpectedly: str, then: str = "") -> str:
    """Log a failed background step and return what to show for it: an
    `expected` error as a WARNING, `failed: <its text><then>`; anything else
    with its traceback under `unexpectedly` (and its repr, which names the type)."""
    if isinstance(exc, expected):
        log.warning("%s: %s%s", failed, exc, then)
        return str(exc)
    log.error("%s", unexpectedly, exc_info=exc)
    return repr(exc)
