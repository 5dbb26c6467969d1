"""Read your writes: bookmarks taken on the primary, awaited on replicas.

A bookmark is the TXID a replica must reach to hold your commits.

After a commit on the primary, `bookmark()` asks the `litestream replicate` that manages the
database, over its control socket (Litestream 0.5.17: `POST /sync` with `wait`), to sync and wait
until the replica has everything committed so far. The TXID it answers covers every commit made
before the call, so a reader that has reached it sees them. The socket is off by default;
`enable_hint` is the one place that says how to turn it on.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import math
import os
import socket as socketlib
import time
from typing import Any, TypeGuard, cast

from . import registry
from .errors import BookmarkError
from .ltx import parse_txid
from .options import resolve
from .storage.redact import redact_url

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/litestream.sock"
"""Where Litestream listens when litestream.yml enables the socket without a `path`."""

DEFAULT_TIMEOUT = 30.0
"""Seconds `bookmark` waits at most, as `litestream sync -timeout` does by default."""

MAX_RESPONSE = 1 << 20
"""Bytes of answer read at most: Litestream's are a few hundred."""


def enable_hint(socket_path: str) -> str:
    """The litestream.yml line that enables the control socket at `socket_path` (YAML flow
    style, so it stays one line in a one-line error)."""
    return f"socket: {{enabled: true, path: {json.dumps(socket_path)}}}"


def bookmark(db_path: str | os.PathLike[str], *, socket: str | os.PathLike[str] = DEFAULT_SOCKET,
             timeout: float = DEFAULT_TIMEOUT) -> str:
    """The TXID (16 hex digits) the replica of `db_path` holds once it has every commit made before
    this call; waits for Litestream to upload them, `timeout` seconds at most in all.

    `db_path` is made absolute here (Litestream resolves a relative one against its own working
    directory) and must name the database as litestream.yml lists it. BookmarkError says what went
    wrong: no socket, a database Litestream does not manage, a failed sync, or the timeout.
    """
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    path = os.path.abspath(os.fspath(db_path))
    sock_path = os.fspath(socket)
    deadline = time.monotonic() + timeout
    body = json.dumps({"path": path, "wait": True, "timeout": max(1, math.ceil(timeout))}).encode()
    request = (b"POST /sync HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body
    try:
        raw = _exchange(sock_path, request, deadline)
    except TimeoutError:
        raise BookmarkError(f"Litestream did not confirm that the replica of {path} holds its commits "
                            f"within {timeout:g}s (control socket {sock_path})") from None
    status, answer = _parse(raw, sock_path)
    txid = _replicated_txid(status, answer, path, sock_path, timeout)
    log.debug("bookmark of %s: TXID %016x (%s)", path, txid, answer.get("status"))
    return f"{txid:016x}"


def wait_for(url: str, txid: int | str, timeout: float | None = None, **options: Any) -> str:
    """Wait until this process's replica of `url` reaches `txid` (a bookmark),
    polling now; the TXID reached (16 hex digits).

    For code that holds no connection (a pool's): every connection to `url`
    reads at least that TXID from its next read transaction. The replica is
    opened with `options` if no connection has it open. WaitTimeout after
    `timeout` seconds (the replica's wait_timeout if None); LineageError if the
    replica is replaced meanwhile.
    """
    want = parse_txid(txid) if isinstance(txid, str) else txid
    rep = registry.acquire(url, resolve({k: v for k, v in options.items() if v is not None}))
    try:
        return f"{rep.wait_for(want, timeout=timeout).txid:016x}"
    finally:
        registry.release(rep)


def _exchange(sock_path: str, request: bytes, deadline: float) -> bytes:
    """Send `request` and read the whole answer (the server closes after it), each step bounded by
    `deadline`; TimeoutError past it."""
    conn = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    try:
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            conn.connect(sock_path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            what = "no such socket" if isinstance(exc, FileNotFoundError) else "nothing listens on it"
            raise BookmarkError(f"no Litestream control socket at {sock_path} ({what}): run `litestream "
                                f"replicate` with the socket enabled; add to litestream.yml: "
                                f"{enable_hint(sock_path)}") from None
        except PermissionError:
            raise BookmarkError(f"permission denied on Litestream's control socket {sock_path}: Litestream "
                                f"makes it owner-only (0600); set `permissions: 0660` under `socket:` in "
                                f"litestream.yml and share its group, or run as its owner") from None
        except TimeoutError:
            raise
        except OSError as exc:
            raise BookmarkError(f"cannot connect to Litestream's control socket {sock_path}: "
                                f"{exc.strerror or exc}") from None
        chunks: list[bytes] = []
        size = 0
        try:
            conn.sendall(request)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                conn.settimeout(left)
                chunk = conn.recv(65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RESPONSE:
                    raise BookmarkError(f"{sock_path} answered more than {MAX_RESPONSE} bytes: "
                                        "not Litestream's control socket?")
        except TimeoutError:
            raise
        except OSError as exc:
            raise BookmarkError(f"Litestream's control socket {sock_path} dropped the request: "
                                f"{exc.strerror or exc}") from None
    finally:
        conn.close()


class _Received:
    """A whole answer, offered the way http.client reads a socket (it only asks for a file)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


def _parse(raw: bytes, sock_path: str) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON object of an answer; BookmarkError if it is neither HTTP nor Litestream's."""
    response = http.client.HTTPResponse(cast(socketlib.socket, _Received(raw)), method="POST")
    try:
        response.begin()
        body = response.read()
    except http.client.HTTPException as exc:
        raise BookmarkError(f"{sock_path} did not answer in HTTP ({type(exc).__name__}): "
                            "not Litestream's control socket?") from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        text = body[:200].decode("utf-8", "replace").strip()
        raise BookmarkError(f"{sock_path} answered HTTP {response.status} ({text!r}), not Litestream's JSON: "
                            "is it the control socket of Litestream 0.5.17 or newer (which has `sync`)?")
    return response.status, answer


def _replicated_txid(status: int, answer: dict[str, Any], path: str, sock_path: str, timeout: float) -> int:
    """The replica's TXID from a /sync answer, once it covers the database's; BookmarkError otherwise."""
    if status != 200:
        error = redact_url(str(answer.get("error") or f"HTTP {status}"))
        details = answer.get("details")
        if details:
            error += f" ({redact_url(str(details))})"
        if status == 404 and error.startswith("database not found"):
            raise BookmarkError(f"the Litestream at {sock_path} does not manage {path} ({error}); give the "
                                "database's path as litestream.yml's dbs list it")
        if "deadline exceeded" in error:
            raise BookmarkError(f"Litestream did not confirm that the replica of {path} holds its commits "
                                f"within {timeout:g}s: {error}")
        raise BookmarkError(f"Litestream could not sync {path}: {error}")
    local, replicated = answer.get("txid"), answer.get("replicated_txid")
    if not (_is_txid(local) and _is_txid(replicated)):
        raise BookmarkError(f"unexpected answer from {sock_path}: {json.dumps(answer)[:300]}")
    if replicated < local:
        raise BookmarkError(f"Litestream synced {path} to TXID {local:016x} but its replica has only "
                            f"{replicated:016x}")
    return replicated


def _is_txid(value: object) -> TypeGuard[int]:
    """A TXID as the JSON of /sync carries it: a number (not a hex string), 64 bits."""
    return type(value) is int and 0 <= value < 1 << 64
