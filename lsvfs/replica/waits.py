"""Readers waiting for the replica to reach a TXID: read-your-writes bookmarks.

A bookmark is the TXID a primary's commit was replicated in. A reader that
must see it asks the poller to poll now instead of at its next interval, and
every waiter shares those polls: the poller runs one at a time, at least
ASKED_SPACING apart, so a hundred readers waiting on one bookmark make one
LIST, and a storm of them no more than one in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import LineageError, ReplicaError, WaitTimeout
from .lineage import Lineages
from .poller import ASKED_SPACING, Poller
from .snapshot import Snapshot


class Waits:
    """The waits of one replica, and their counts."""

    def __init__(self, name: str, poller: Poller, lineages: Lineages, current: Callable[[], Snapshot],
                 stop: threading.Event) -> None:
        self._name = name
        self._poller = poller
        self._lineages = lineages
        self._current = current
        self._stop = stop
        self._lock = threading.Lock()  # guards the counts
        self._waiting = 0
        self._waits = 0
        self._timeouts = 0

    def wait(self, txid: int, lineage: int, timeout: float) -> Snapshot:
        """The newest snapshot once it is of `lineage` at `txid` or later.

        WaitTimeout past `timeout` seconds; LineageError when the replica is
        replaced meanwhile (a TXID of the old lineage says nothing of the new).
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiting += 1
            self._waits += 1
        try:
            while True:
                snap = self._current()
                if snap.lineage != lineage or self._lineages.number != lineage:
                    raise LineageError(f"replica {self._name} was replaced by another lineage while TXID "
                                       f"{txid:016x} of the old one was awaited: take a new bookmark, or clear "
                                       "the floor (PRAGMA litestream_min_txid = 0)")
                if snap.txid >= txid:
                    return snap
                if self._stop.is_set():
                    raise ReplicaError(f"replica {self._name} was closed while TXID {txid:016x} was awaited")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    with self._lock:
                        self._timeouts += 1
                    raise WaitTimeout(self._name, txid, snap.txid, timeout)
                seen = self._poller.polls_ended
                self._poller.ask()
                # Without a polling thread, nobody else may poll: look again soon.
                self._poller.wait_poll(seen, remaining if self._poller.thread is not None
                                       else min(remaining, ASKED_SPACING))
        finally:
            with self._lock:
                self._waiting -= 1

    def stats(self) -> dict[str, Any]:
        """The `waits` entry of the replica's stats."""
        with self._lock:
            return {"waiting": self._waiting, "waits": self._waits, "timeouts": self._timeouts}
