"""The storage a replica opened with `shared_dir` reads: the local mirror.

It is a FileStorage on the shared directory, so listings are readdirs and the
C read path preads pages itself (no GIL), and it never touches remote storage
unless this process leads or travels back in time. A thread per process keeps
trying to lead (see leader.py). Lag is the age of the leader's last good poll,
as published in the directory, so every process reports the same staleness.

The mirror holds what the newest state needs, not the replica's history: a
pin or time before its files is planned over the remote listing as well,
and the files the mirror lacks are read from remote storage (RemoteFile).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from ..errors import LsvfsError, ReplicaError
from ..plan import list_all
from ..stats import CountingStorage
from ..storage.base import FileInfo, StorageClient
from ..storage.file import FileStorage
from ..storage.redact import redact_url
from .directory import poll_age, prepare, read_status
from .leader import ASKED_SPACING, Leader

log = logging.getLogger(__name__)

FOLLOWER_WAIT = 120.0
"""Seconds a follower opening an empty directory waits for a leader's first fill
(longer if open_timeout says so); the leader is retried meanwhile."""
CLOSE_WAIT = 1.0
"""Seconds close() waits for a poll in progress."""


@dataclass(frozen=True)
class RemoteFile(FileInfo):
    """A file of the remote replica that the mirror lacks: read remotely, and
    never equal to a mirror file of the same name (a slot of its own)."""


class SharedStorage(FileStorage):
    """A directory replica kept current by whichever process leads."""

    def __init__(self, url: str, directory: str, *, poll_interval: float, open_timeout: float,
                 open_remote: Callable[[], StorageClient]) -> None:
        root = prepare(directory, url)
        super().__init__(root)
        self.name = redact_url(url)
        self.leader = Leader(root, self.name, open_remote)
        self._open_remote = open_remote
        self._history: CountingStorage | None = None  # opened by the first trip into the past
        self._history_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rung = -ASKED_SPACING
        try:
            self._first_fill(poll_interval, open_timeout)
        except BaseException:
            self.leader.close()
            super().close()
            raise
        if poll_interval > 0:
            self._thread = threading.Thread(target=self.leader.run, args=(self._stop, poll_interval),
                                            name=f"lsvfs-shared {self.name}", daemon=True)
            self._thread.start()

    def _first_fill(self, poll_interval: float, open_timeout: float) -> None:
        """Return once the mirror holds a leader's good poll: ours (when we lead)
        or another's; bounded, retrying the lead meanwhile."""
        start = time.monotonic()
        wait = min(max(poll_interval, 0.05), 0.5)
        while True:
            try:
                if self.leader.step():
                    return
            except LsvfsError:
                if time.monotonic() - start >= open_timeout:
                    raise
            if not self.leader.leading and poll_age(read_status(self.root)) is not None:
                return
            if time.monotonic() - start >= max(open_timeout, FOLLOWER_WAIT):
                status = read_status(self.root) or {}
                raise ReplicaError(f"shared_dir {self.root}: no process filled it with {self.name} within "
                                   f"{max(open_timeout, FOLLOWER_WAIT):g}s (leader pid {status.get('pid')})")
            time.sleep(wait)

    def ask_leader(self) -> None:
        """A reader waits for a newer TXID: ask the leader to poll now (at most
        one ring per ASKED_SPACING from this process)."""
        now = time.monotonic()
        if now - self._rung >= ASKED_SPACING:
            self._rung = now
            self.leader.ask()

    def list_past(self) -> list[FileInfo]:
        """Every file a past state may be built from: the mirror's, and the
        remote replica's that the mirror lacks (one remote listing)."""
        mine = list_all(self)
        held = {f.key for f in mine}
        remote = list_all(self._remote())
        return mine + [RemoteFile(**{k.name: getattr(f, k.name) for k in fields(f)})
                       for f in remote if f.key not in held]

    def _remote(self) -> CountingStorage:
        with self._history_lock:
            if self._history is None:
                self._history = CountingStorage(self._open_remote())
            return self._history

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        if isinstance(info, RemoteFile):
            return self._remote().read(info, offset, length)
        return super().read(info, offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        if isinstance(info, RemoteFile):
            return self._remote().read_all(info)
        return super().read_all(info)

    def shared_lag(self) -> float:
        """Seconds since the leader's last good poll, as every process sees it."""
        age = poll_age(read_status(self.root))
        return -1.0 if age is None else age

    def shared_stats(self) -> dict[str, Any]:
        """The `shared` entry of the replica's stats."""
        status = read_status(self.root) or {}
        age = poll_age(status)
        return {"dir": str(self.root), "leader": self.leader.leading, "leader_pid": status.get("pid"),
                "leader_poll_age": None if age is None else round(age, 3), "txid": status.get("txid"),
                "files": status.get("files"), "bytes": status.get("bytes"),
                "remote": self.leader.remote_counts(),
                "history": None if self._history is None else self._history.counts(), "polls": self.leader.polls,
                "poll_errors": self.leader.poll_errors}

    def close(self) -> None:
        self._stop.set()
        if self.leader.leading:
            self.leader.ask()  # ends the loop's wait on the doorbell
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=CLOSE_WAIT)
        self.leader.close()
        with self._history_lock:
            if self._history is not None:
                self._history.close()
        super().close()
