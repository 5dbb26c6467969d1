"""The connection to a NATS server and its object-store bucket.

nats-py is asyncio-only: each storage runs one event loop on its own daemon
thread, and every call from the replica's threads is submitted to it and
waited for (bounded); close() cancels the calls still waiting, so none
outlives it. Errors come back as StorageError, credentials scrubbed:
a server that refuses the credentials fails the open at once, naming which
were refused, since retrying cannot fix a wrong password.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from typing import Any

import nats
from nats import errors as nerr
from nats.js import errors as jserr
from nats.js.object_store import OBJ_STREAM_TEMPLATE, VALID_BUCKET_RE, ObjectStore

from ...errors import MissingFileError, StorageError
from ..redact import scrub

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
CALL_TIMEOUT = 30.0
CLOSE_WAIT = 2.0
"""Seconds close() gives the client to say goodbye, and then the loop to stop."""


class Connection:
    """One client connection (reconnecting forever once up) and its event loop."""

    def __init__(self, host: str, port: int, bucket: str, *, user: str | None = None,
                 password: str | None = None, token: str | None = None, creds: str | None = None) -> None:
        self.bucket = bucket
        self.server = f"nats://{host}:{port}"
        self.url = f"{self.server}/{bucket}"
        self._secrets = (password, token)
        self._offered = (f"creds file {creds}" if creds else "the token (?token=)" if token
                         else f"user {user!r} and its password" if user is not None else None)
        """What credentials were offered, for an authorization error (never the secret itself)."""
        self._opts: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "max_reconnect_attempts": -1,
                                      "reconnect_time_wait": 0.5, "allow_reconnect": True,
                                      "error_cb": self._on_error, "name": "lsvfs"}
        if user is not None:
            self._opts.update(user=user, password=password or "")
        if token:
            self._opts["token"] = token
        if creds:
            self._opts["user_credentials"] = creds
        self.direct = False
        """Whether the bucket's stream answers direct gets."""
        self.batching = False
        """Whether the server answers batched direct gets."""
        self.nc: Any = None
        self.js: Any = None
        self.obs: Any = None
        self.stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
        self._last_error: BaseException | None = None
        self._refused: asyncio.Future[None] | None = None
        """Set on the loop while the first connect runs; done when the server refuses the credentials."""
        self._calls: set[concurrent.futures.Future[Any]] = set()
        """Calls submitted to the loop and not yet answered: close() cancels them."""
        self._calls_lock = threading.Lock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"lsvfs-nats {self.url}", daemon=True)
        self._thread.start()
        try:
            self.run(self._open(), "connect")
        except BaseException:
            self.close()
            raise

    async def _on_error(self, e: Exception) -> None:
        if self._last_error is None or not _refusal(self._last_error):
            self._last_error = e  # an authorization error explains the resets that follow it
        if _refusal(e) and self._refused is not None and not self._refused.done():
            self._refused.set_result(None)
        log.debug("nats %s: %s", self.server, scrub(str(e) or type(e).__name__, self._secrets))

    async def _open(self) -> None:
        """Connect (reconnecting forever afterwards). The first connect gives up
        as soon as the server refuses the credentials, else after
        CONNECT_TIMEOUT, with the last error the client saw."""
        self._refused = asyncio.get_running_loop().create_future()
        connecting: asyncio.Future[Any] = asyncio.ensure_future(nats.connect(self.server, **self._opts))
        first: set[asyncio.Future[Any]] = {connecting, self._refused}
        try:
            await asyncio.wait(first, timeout=CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._refused = None
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await connecting
            raise (self._last_error or nerr.NoServersError()) from None
        self.nc = connecting.result()
        # What nats-py's js.object_store() does, keeping the stream's config (allow_direct).
        if VALID_BUCKET_RE.match(self.bucket) is None:
            raise jserr.InvalidBucketNameError
        self.js = self.nc.jetstream()
        try:
            si = await self.js.stream_info(self.stream)
        except jserr.NotFoundError:
            raise jserr.BucketNotFoundError from None
        self.direct = bool(si.config.allow_direct)
        # Batched direct gets (`batch`, `next_by_subj`) came with nats-server 2.11.
        self.batching = _version(str(self.nc._server_info.get("version", ""))) >= (2, 11)
        self.obs = ObjectStore(name=self.bucket, stream=self.stream, js=self.js)

    def run(self, coro: Any, op: str, where: str | None = None) -> Any:
        """Run `coro` on the loop and wait for it (CALL_TIMEOUT at most, and no
        longer than until close())."""
        where = where or self.url
        with self._calls_lock:
            if self._closed:
                coro.close()
                raise StorageError(f"{where}: {op} failed: storage closed")
            fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._calls.add(fut)
        try:
            return fut.result(CALL_TIMEOUT)
        except concurrent.futures.CancelledError:
            raise StorageError(f"{where}: {op} failed: storage closed") from None
        except TimeoutError:
            fut.cancel()
            raise StorageError(f"{where}: {op} failed: no answer from {self.server} "
                               f"within {CALL_TIMEOUT:.0f}s") from None
        except Exception as e:  # noqa: BLE001 - translated, never swallowed
            raise self._error(e, op, where) from None
        finally:
            with self._calls_lock:
                self._calls.discard(fut)

    def _error(self, e: BaseException, op: str, where: str) -> StorageError:
        if isinstance(e, StorageError):
            return e
        if isinstance(e, (jserr.BucketNotFoundError,)) or (
            isinstance(e, jserr.NotFoundError) and op == "connect"
        ):
            return StorageError(f"{where}: {op} failed: object-store bucket {self.bucket!r} does not exist")
        if isinstance(e, (jserr.ObjectNotFoundError, jserr.NotFoundError)):
            return MissingFileError(f"{where}: {op} failed: object not found")
        text = scrub(str(e) or type(e).__name__, self._secrets)
        if isinstance(e, (nerr.NoServersError, ConnectionRefusedError, OSError)):
            return StorageError(f"{where}: {op} failed: endpoint unreachable ({self.server}): {text}")
        if _refusal(e):
            why = (f"the server refused {self._offered}" if self._offered else "the server wants credentials and "
                   "none were given (nats://user:password@host/bucket, ?token= or ?creds=FILE)")
            return StorageError(f"{where}: {op} failed: authorization violation: {why}")
        if isinstance(e, (nerr.TimeoutError, asyncio.TimeoutError)):
            return StorageError(f"{where}: {op} failed: timed out talking to {self.server}")
        return StorageError(f"{where}: {op} failed: {type(e).__name__}: {text}")

    def close(self) -> None:
        """Cancel the calls in flight (their callers get StorageError at once),
        close the client and stop the loop, each wait bounded."""
        with self._calls_lock:
            self._closed = True
            calls, self._calls = list(self._calls), set()
        for fut in calls:
            fut.cancel()  # wakes the waiting thread now; the task is cancelled on the loop
        if self.nc is not None:
            nc, self.nc = self.nc, None
            try:
                asyncio.run_coroutine_threadsafe(nc.close(), self._loop).result(CLOSE_WAIT)
            except Exception:  # noqa: BLE001 - best effort
                log.debug("closing NATS connection failed", exc_info=True)
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CLOSE_WAIT)


def _version(text: str) -> tuple[int, ...]:
    """(2, 11, 0) from "2.11.0" or "v2.11.0-beta"; () where unparsable."""
    out: list[int] = []
    for part in text.lstrip("v").split("-")[0].split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def _refusal(e: BaseException) -> bool:
    """Whether `e` is the server refusing our credentials."""
    text = str(e).lower()
    return isinstance(e, nerr.AuthorizationError) or "authorization" in text or "authentication" in text
