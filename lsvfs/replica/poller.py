"""The poller: new LTX files found and published as snapshots, and a replaced replica noticed.

In the steady state one poll is one LIST of level 0, starting at the L0 file
that ends at the current TXID. Every level is listed when that file is gone
or changed, when L0 has a gap, or every FULL_SCAN_EVERY polls; such a
listing is also when a replica wiped and written again by another primary
(a new lineage) is told apart from the one we follow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .. import ltx
from ..errors import GapError, LsvfsError, ReplicaError
from ..options import Options
from ..plan import build, extend, list_all
from ..slots import FileSlots
from ..stats import CountingStorage
from ..storage.base import SNAPSHOT_LEVEL, FileInfo
from ..timeutil import format_time
from .lineage import Lineages
from .loader import Loader
from .snapshot import Snapshot
from .twins import Twins

log = logging.getLogger(__name__)

FULL_SCAN_EVERY = 10
"""Polls between listings of every level even when L0 shows nothing new."""
ASKED_SPACING = 0.05
"""Least seconds from the start of one poll to that of a poll waiting readers
asked for: however many wait, one poll is in flight and at most twenty start a second."""


class Poller:
    """The polls of one replica, in a thread of their own or called directly; one at a time."""

    def __init__(self, name: str, options: Options, storage: CountingStorage, pool: ThreadPoolExecutor,
                 loader: Loader, lineages: Lineages, file_slots: FileSlots, twins: Twins, *,
                 current: Callable[[], Snapshot], publish: Callable[[Snapshot], None],
                 begin_lineage: Callable[[list[FileInfo]], None], stop: threading.Event,
                 polled: Callable[[], None] = lambda: None) -> None:
        self._name = name
        self._options = options
        self._storage = storage
        self._pool = pool
        self._loader = loader
        self._lineages = lineages
        self._slots = file_slots
        self._twins = twins
        self._current = current
        self._publish = publish
        self._begin_lineage = begin_lineage
        self._stop = stop
        self._polled = polled  # after every good poll
        self._thread: threading.Thread | None = None
        self._asked = threading.Event()  # a reader waits for a newer TXID: poll now
        self._ended = threading.Condition()  # notified at the end of every poll
        self.polls_ended = 0
        self._last_start = 0.0  # time.monotonic() of the last poll's start
        # A poll holds the lock from start to end: two at once would each build on
        # the same snapshot and the slower could publish an older TXID over a newer
        # one. It guards every field below.
        self._lock = threading.Lock()
        self.last_poll_ok: float | None = None  # time.monotonic() of the last good poll
        self.poll_count = 0
        self.poll_errors = 0
        self._since_full_scan = 0
        self._l0_anchor: FileInfo | None = None  # the L0 file ending at the current TXID, as listed
        self._last_gap: tuple[int, int] | None = None
        self._last_poll_error: str | None = None

    # ---- the thread -------------------------------------------------------

    def start(self) -> None:
        """Poll every poll_interval in a thread until `stop` is set (none if the interval is 0)."""
        if self._thread is None and self._options.poll_interval > 0:
            self._thread = threading.Thread(target=self._loop, name=f"lsvfs-poll {self._name}", daemon=True)
            self._thread.start()

    @property
    def thread(self) -> threading.Thread | None:
        """The polling thread; None if none was started."""
        return self._thread

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` for the thread to end (not when called from it)."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._asked.wait(self._options.poll_interval):
                self._stop.wait(self._last_start + ASKED_SPACING - time.monotonic())
            self._asked.clear()
            if not self._stop.is_set():
                self.poll()

    def wake(self) -> None:
        """End the thread's wait (close() sets `stop` first)."""
        self._asked.set()

    def ask(self) -> None:
        """Poll as soon as may be: a reader waits for a TXID newer than ours.
        The thread polls; without one the caller does, unless a poll is in
        progress or one started less than ASKED_SPACING ago."""
        shared = getattr(self._storage.inner, "ask_leader", None)
        if shared is not None:
            shared()  # with shared_dir the leader polls storage; we read its mirror
        if self._thread is not None:
            self._asked.set()
        elif time.monotonic() - self._last_start >= ASKED_SPACING and self._lock.acquire(blocking=False):
            try:
                self._poll_once()
            finally:
                self._lock.release()

    def wait_poll(self, seen: int, timeout: float) -> None:
        """Wait up to `timeout` for a poll to end after `seen` had (see polls_ended)."""
        with self._ended:
            self._ended.wait_for(lambda: self.polls_ended != seen, timeout)

    # ---- one poll ---------------------------------------------------------

    def opened(self, files: list[FileInfo], txid: int) -> None:
        """The replica opened at `txid` from the listing `files`: a good poll."""
        with self._lock:
            self._set_anchor(files, txid)
            self.last_poll_ok = time.monotonic()

    def lag(self) -> float:
        """Seconds since the last successful poll (or open); -1 before one."""
        return -1.0 if self.last_poll_ok is None else time.monotonic() - self.last_poll_ok

    def poll(self) -> bool:
        """One poll; True if a new snapshot was published. Never raises."""
        with self._lock:
            return self._poll_once()

    def _poll_once(self) -> bool:
        self._last_start = time.monotonic()
        try:
            return self._poll_counted()
        finally:
            with self._ended:
                self.polls_ended += 1
                self._ended.notify_all()

    def _poll_counted(self) -> bool:
        self.poll_count += 1
        if self._stop.is_set():
            return False
        try:
            self._twins.drain()
            self._slots.reclaim()
            advanced = self._poll()
        except LsvfsError as exc:
            if not self._stop.is_set():  # a call cut by close() is no failure to report
                self._poll_failed(str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - a custom client's own errors must not kill the poller; logged in full
            self._poll_failed(repr(exc), unexpected=True)
            return False
        if self._last_poll_error is not None:
            log.info("poll of %s works again (TXID %016x)", self._name, self._current().txid)
            self._last_poll_error = None
        self.last_poll_ok = time.monotonic()
        self._polled()
        return advanced

    def _poll_failed(self, why: str, unexpected: bool = False) -> None:
        """Count a failed poll; one WARNING per kind of failure, not one per poll."""
        self.poll_errors += 1
        if unexpected:
            log.exception("poll of %s failed unexpectedly (staying at TXID %016x)", self._name,
                          self._current().txid)
        elif why != self._last_poll_error:
            log.warning("poll of %s failed (staying at TXID %016x): %s", self._name, self._current().txid, why)
        else:
            log.debug("poll of %s failed again: %s", self._name, why)
        self._last_poll_error = why

    def _poll(self) -> bool:
        """One LIST of L0 in the steady state. It starts at the L0 file that
        ends at our TXID when we know one: while that file is still listed as
        it was, retention cannot have deleted anything newer, so nothing can
        hide in higher levels and they need no listing. When it is gone or
        changed, every level is listed at once: retention compacted it, or
        the replica was removed or replaced."""
        cur = self._current()
        anchor = self._l0_anchor
        if cur.lineage != self._lineages.number:  # the move to a new lineage failed half way: try again
            return self._poll_every_level(cur)
        listed = self._storage.list_files(0, anchor.min_txid if anchor is not None else cur.txid + 1)
        if anchor is not None:
            now = next((f for f in listed if f.key == anchor.key), None)
            if now is None or now.size != anchor.size or (now != anchor and not self._is_tip(now)):
                return self._poll_every_level(cur)
            self._l0_anchor = now
        l0 = [f for f in listed if f.min_txid > cur.txid]
        chain = extend(l0, cur.txid)
        self._since_full_scan += 1
        reached = chain[-1].max_txid if chain else cur.txid
        if any(f.min_txid > reached + 1 for f in l0) or (
                not chain and anchor is None and self._since_full_scan >= FULL_SCAN_EVERY):
            # L0 has a gap (retention deleted files a compaction covers) or we
            # have not looked higher in a while: plan across every level.
            return self._poll_every_level(cur)
        return self._advance(cur, chain, listed)

    def _poll_every_level(self, cur: Snapshot) -> bool:
        self._since_full_scan = 0
        files = list_all(self._storage, pool=self._pool)
        if not files:
            # A missing directory or prefix lists as nothing: never a good poll.
            raise ReplicaError(f"replica {self._name} lists no LTX files (removed, or being replaced?)")
        replaced = "as found before" if cur.lineage != self._lineages.number else self._replaced_by(cur, files)
        if replaced is not None:
            return self._follow_new_lineage(cur, files, replaced)
        if not any(f.max_txid == cur.txid for f in files):
            # Only a compaction straddling our TXID covers it (we fell behind
            # retention, or the replica was replaced): nothing proves the files
            # after it continue what we hold, so the newest state is built afresh.
            new = self._loader.build(None, build(files))
            if self._stop.is_set():
                return False
            log.info("%s: no file ends at TXID %016x any more; read TXID %016x afresh", self._name, cur.txid,
                     new.txid)
            self._publish(new)
            self._set_anchor(files, new.txid)
            self._last_gap = None
            return new.txid != cur.txid
        chain = extend(files, cur.txid)
        reached = chain[-1].max_txid if chain else cur.txid
        beyond = [f.min_txid for f in files if f.min_txid > reached + 1]
        if beyond:
            gap = (reached, min(beyond))
            if gap != self._last_gap:
                log.warning("%s: %s; serving TXID %016x until it is filled", self._name, GapError(*gap), reached)
            self._last_gap = gap
        self._set_anchor(files, reached)
        return self._advance(cur, chain, files)

    def _advance(self, cur: Snapshot, chain: list[FileInfo], listed: list[FileInfo]) -> bool:
        """Publish `cur` plus `chain`, if the chain holds anything."""
        if not chain:
            return False
        new = self._loader.build(cur, chain)
        if self._stop.is_set():
            return False
        self._publish(new)
        self._set_anchor(listed, new.txid)
        self._last_gap = None
        log.debug("%s: TXID %016x -> %016x", self._name, cur.txid, new.txid)
        return True

    def _set_anchor(self, files: list[FileInfo], txid: int) -> None:
        """Remember the L0 file among `files` that ends at `txid`, if any."""
        ends = [f for f in files if f.level == 0 and f.max_txid == txid]
        self._l0_anchor = ends[0] if ends else None

    # ---- lineages ---------------------------------------------------------

    def _replaced_by(self, cur: Snapshot, files: list[FileInfo]) -> str | None:
        """Why `files` are another lineage than `cur`'s, or None if nothing says so.

        LTX names repeat across lineages (TXIDs start again at 1), so names
        alone prove nothing: the newest TXID going back does, a file of ours
        listed with another size or time does, and so does the file that
        ends at our TXID carrying another header time (compactions keep the
        time of the last file they take in; snapshots have their own).
        A replacement whose files match ours in name, size and listed time
        (S3 lists times to the second) shows only once those signals do.
        """
        newest = max(f.max_txid for f in files)
        if newest < cur.txid:
            return f"its newest TXID went back from {cur.txid:016x} to {newest:016x}"
        listed = {f.key: f for f in files}
        tip = self._lineages.tip()
        ours = [self._slots.file(slot) for slot in cur.live]
        for f in ours + ([tip[0]] if tip is not None else []):
            g = listed.get(f.key)
            if g is not None and g.size != f.size:
                return f"{f.name} was rewritten ({g.size} bytes, was {f.size})"
        if tip is None:
            return None
        g = listed.get(tip[0].key)
        if g is not None and g != tip[0] and not self._is_tip(g):
            return f"{g.name} was rewritten (its header time is not {format_time(tip[1])} any more)"
        if g is not None or tip[0].max_txid != cur.txid:
            return None
        snapshots = tip[0].level == SNAPSHOT_LEVEL
        ends = [f for f in files if f.max_txid == cur.txid and (f.level == SNAPSHOT_LEVEL) == snapshots]
        if not ends:
            return None  # nothing tells; _poll_every_level builds afresh rather than extend
        other = max(ends, key=lambda f: f.level)
        stamp = ltx.Header.decode(self._storage.read(other, 0, ltx.HEADER_SIZE), other.name).timestamp
        if stamp != tip[1]:
            return (f"{other.name}, which ends at TXID {cur.txid:016x}, was written at {format_time(stamp)}, "
                    f"not {format_time(tip[1])}")
        self._lineages.confirm_tip(other, stamp)  # the same lineage: the next listing need not read it again
        return None

    def _is_tip(self, f: FileInfo) -> bool:
        """Whether `f`, listed under our tip's name with another time (a file
        replica's time is set after it is written), still is our tip: its
        header time says."""
        tip = self._lineages.tip()
        if tip is None or f.key != tip[0].key:
            return False
        stamp = ltx.Header.decode(self._storage.read(f, 0, ltx.HEADER_SIZE), f.name).timestamp
        if stamp != tip[1]:
            return False
        self._lineages.confirm_tip(f, stamp)
        return True

    def _follow_new_lineage(self, cur: Snapshot, files: list[FileInfo], why: str) -> bool:
        """Read the replica's new lineage from scratch, sharing nothing with the old one.

        The old lineage ends here, before the new one is built: from now on
        its snapshots read only what is cached or still listed as it was, and
        no file of the new lineage gets an old slot."""
        if cur.lineage == self._lineages.number:
            self._begin_lineage(files)
        self._lineages.listed(files)
        new = self._loader.build(None, build(files))
        if self._stop.is_set():
            return False
        self._lineages.followed()
        log.warning("%s was replaced by another lineage (%s): new read transactions read TXID %016x of "
                    "the new one, not TXID %016x of the old", self._name, why, new.txid, cur.txid)
        self._publish(new)
        self._set_anchor(files, new.txid)
        self._last_gap = None
        return True
