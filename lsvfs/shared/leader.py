"""One process's part in keeping the shared directory current.

Every process with the directory runs the same loop: try to lead, and while
leading poll storage into the mirror, publish the status, then write what
the shared page file lacks (pages.py). A process that leads keeps leading
until it closes or dies; the others try again each poll interval, so a dead
leader is replaced within two. A failed poll (storage
down, disk full) is logged once per kind and retried with backoff; what the
mirror holds stays complete meanwhile, and followers see the lag grow.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backoff import Backoff, log_failure
from ..errors import LsvfsError
from ..storage.base import StorageClient
from .directory import write_status
from .doorbell import Doorbell, ring
from .election import Election
from .mirror import Mirror, Progress
from .pages import PageWriter

log = logging.getLogger(__name__)

ASKED_SPACING = 0.05
"""Least seconds between the starts of a poll and of one a ring asked for (see doorbell.py)."""
FIRST_DELAY = 0.5
MOST_DELAY = 30.0
"""Bounds of the wait after a failed poll (doubling between them)."""


class Leader:
    """The election and, while this process leads, the mirror it keeps and
    the shared page file (when a process asked for hydration, or `hydration`)."""

    def __init__(self, root: Path, name: str, open_remote: Callable[[], StorageClient],
                 hydration: bool = False) -> None:
        self.root = root
        self.name = name
        self._open_remote = open_remote
        self.election = Election(root)
        self.doorbell = Doorbell(root)
        self.mirror: Mirror | None = None
        self.pages = PageWriter(root, name, hydration)
        self._pages_backoff = Backoff(FIRST_DELAY, MOST_DELAY)
        self._pages_retry_at = 0.0
        self._pages_error: str | None = None
        self.polls = 0
        self.poll_errors = 0
        self._backoff = Backoff(FIRST_DELAY, MOST_DELAY)
        self._last_error: str | None = None
        self._lock = threading.Lock()
        self._closing = False
        self._last_start = 0.0  # time.monotonic() the loop's last step started

    @property
    def leading(self) -> bool:
        return self.election.leading

    def step(self, progress: Progress | None = None) -> bool:
        """Try to lead; when leading, one poll and its status. True if a poll succeeded.
        `progress` sees the poll's downloads (`lsvfs mirror`'s bar for its first fill)."""
        with self._lock:
            if not self.election.try_lead():
                return False
            self.doorbell.open()
            if self.mirror is None:
                mirror = Mirror(self._open_remote(), self.root, self.name, lambda: self._closing)
                try:
                    mirror.take_over()
                except BaseException:
                    mirror.close()
                    raise
                self.mirror = mirror
            self.mirror.poll(progress)
            if self._closing:
                return False  # stopped part way: not a poll to publish
            self.polls += 1
            write_status(self.root, self.status())
            if self._last_error is not None:
                log.info("mirror of %s in %s works again", self.name, self.root)
                self._last_error = None
            self._backoff.reset()
            log.info("%s: mirrored %s at TXID %016x (%d files, %d bytes)", self.root, self.name, self.mirror.txid,
                     self.mirror.files, self.mirror.bytes)
            self._hydrate()  # after the status: followers' lag never waits for it
            return True

    @property
    def pages_error(self) -> str | None:
        """Why the last step of the shared pages failed, while it does."""
        return self._pages_error

    def hydrate(self) -> bool:
        """One step of the shared page file (shared/pages.py) while leading; True
        when it is at the mirror's newest TXID or nobody wants it."""
        with self._lock:
            return self._hydrate()

    def _hydrate(self) -> bool:
        if self.mirror is None or time.monotonic() < self._pages_retry_at:
            return False
        try:
            done = self.pages.step(self.mirror.local, lambda: self._closing)
        except Exception as exc:  # noqa: BLE001 - the page file must never stop the mirror's polls; logged
            delay = self._pages_backoff.next()
            self._pages_retry_at = time.monotonic() + delay
            text = str(exc) if isinstance(exc, (LsvfsError, OSError)) else repr(exc)
            if text != self._pages_error:
                log_failure(log, exc, expected=(LsvfsError, OSError), failed=f"{self.root}: writing the shared pages",
                            unexpectedly=f"{self.root}: writing the shared pages failed unexpectedly",
                            then=f"; readers read the mirror meanwhile; retrying in {delay:.1f}s")
            self._pages_error = text
            return False
        if self._pages_error is not None:
            log.info("%s: writing the shared pages works again", self.root)
            self._pages_error = None
            self._pages_backoff.reset()
        return done

    def status(self) -> dict[str, Any]:
        """What followers read: who leads, for which replica, and when it last polled well."""
        m = self.mirror
        return {"pid": os.getpid(), "url": self.name, "last_poll_ok": time.time(),
                "txid": f"{m.txid:016x}" if m else None, "files": m.files if m else 0,
                "bytes": m.bytes if m else 0}

    def failed(self, exc: BaseException) -> float:
        """Log a failed step (one WARNING per kind) and return how long to wait before the next."""
        self.poll_errors += 1
        delay = self._backoff.next()
        text = str(exc) if isinstance(exc, (LsvfsError, OSError)) else repr(exc)
        if text == self._last_error:
            log.debug("mirror of %s failed again: %s", self.name, text)
        else:
            log_failure(log, exc, expected=(LsvfsError, OSError), failed=f"mirror of {self.name} into {self.root}",
                        unexpectedly=f"mirror of {self.name} failed unexpectedly",
                        then=f"; readers keep the last complete state; retrying in {delay:.1f}s")
        self._last_error = text
        return delay

    def run(self, stop: threading.Event, interval: float, stepped: Callable[[], None] | None = None) -> None:
        """Step every `interval` seconds (longer after failures), or sooner when
        rung while leading and well, until `stop` is set; `stepped` is called
        after each step (`lsvfs mirror`'s status line on a terminal)."""
        delay = interval
        while not stop.is_set():
            if self.leading and delay == interval:
                if self.doorbell.wait(delay):  # rings coming together make one poll
                    stop.wait(self._last_start + ASKED_SPACING - time.monotonic())
                    self.doorbell.wait(0)
            else:
                stop.wait(delay)
            if stop.is_set():
                return
            delay = interval
            self._last_start = time.monotonic()
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any failure; logged
                delay = max(interval, self.failed(exc))
            if stepped is not None:
                stepped()

    def ask(self) -> None:
        """Ask the leader, this process or another, to poll now."""
        ring(self.root)

    def remote_counts(self) -> dict[str, dict[str, int]] | None:
        """Requests this process made to remote storage (None: it never led, so it made none)."""
        m = self.mirror
        return None if m is None else m.remote.counts()

    def close(self) -> None:
        """Stop leading (a poll in progress stops after its current file): the
        next process to try takes over."""
        self._closing = True
        with self._lock:
            if self.mirror is not None:
                self.mirror.close()
                self.mirror = None
            self.pages.close()
            self.doorbell.close()
            self.election.resign()
