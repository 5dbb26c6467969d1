"""How a process asks the leader to poll now: a datagram to a socket the leader binds.

A reader waiting for a bookmark's TXID (lsvfs/replica/waits.py) must not wait
out the leader's poll interval. The leader binds `poll.sock` in the shared
directory (0700, so only its user rings) and its loop waits on it instead of
sleeping; followers send it a byte. Where the path is too long for a socket
address, Linux's abstract namespace holds a name derived from it. Nothing
depends on a ring arriving: the leader still polls every interval.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
from pathlib import Path

log = logging.getLogger(__name__)

NAME = "poll.sock"
_MAX_PATH = 107  # sun_path holds 108 bytes with the NUL


def address(root: Path) -> str | bytes:
    path = root / NAME
    if len(os.fsencode(path)) <= _MAX_PATH:
        return str(path)
    return b"\0lsvfs-" + hashlib.sha256(os.fsencode(path)).hexdigest()[:32].encode()


def ring(root: Path) -> None:
    """Ask whoever leads `root` to poll now; nothing if nobody listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"p", address(root))
        except OSError as exc:  # no leader bound yet, or its queue is full: it polls on its own soon
            log.debug("%s: no leader to ring: %s", root, exc)


class Doorbell:
    """The leader's end: bound while this process leads."""

    def __init__(self, root: Path) -> None:
        self._address = address(root)
        self._sock: socket.socket | None = None

    def open(self) -> None:
        """Bind (a dead leader's socket file is replaced); a failure is logged and
        leaves followers to the leader's interval."""
        if self._sock is not None:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if isinstance(self._address, str):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._address)
            s.bind(self._address)
            s.setblocking(False)
        except OSError as exc:
            s.close()
            log.warning("cannot bind %r: readers waiting for a bookmark wait for the leader's next poll (%s)",
                        self._address, exc)
            return
        self._sock = s

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` for a ring; True if one came (every pending ring is taken)."""
        s = self._sock
        if s is None:
            return False
        try:
            ready, _, _ = select.select([s], [], [], max(0.0, timeout))
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while True:
                    s.recv(16)
        except (OSError, ValueError):  # closed under us by close(): the loop ends
            return False
        return bool(ready)

    def close(self) -> None:
        s, self._sock = self._sock, None
        if s is None:
            return
        s.close()
        if isinstance(self._address, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._address)
