"""Who leads: whoever holds an exclusive flock on the directory's lock file.

The kernel drops the lock when its holder dies, SIGKILL included, so nothing
else needs electing: every process tries again each poll interval and the
first to get it leads. The lock is taken without blocking, so a try never
stalls a poller.
"""

from __future__ import annotations

import fcntl
import logging
import os
import weakref
from pathlib import Path

from .directory import LOCK

log = logging.getLogger(__name__)


class Election:
    """This process's side of the lock on `<root>/leader.lock`."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK
        self._fd: int | None = None
        # A forked child shares the locked file description but runs no leader
        # thread: it must not keep the lock alive once this process dies.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget(ref))

    @property
    def leading(self) -> bool:
        return self._fd is not None

    def try_lead(self) -> bool:
        """True if this process leads now (kept once taken, until resign())."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        log.info("%s: this process (pid %d) leads", self.path.parent, os.getpid())
        return True

    def resign(self) -> None:
        """Let another process lead (closing the fd drops the lock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _forget(ref: weakref.ref[Election]) -> None:
    """In a forked child: close its copy of the lock fd (the parent keeps the lock)."""
    election = ref()
    if election is not None:
        election.resign()
