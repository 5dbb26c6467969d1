"""SFTP replicas: file `<path>/ltx/<level>/<min>-<max>.ltx` on an SSH server.

Uses paramiko (extra `lsvfs[sftp]`): one SSH connection per storage, and a
small pool of SFTP channels over it, because one SFTP channel answers one
request at a time and the replica reads from many threads. A dropped
connection is reopened on the next call. close() ends the calls in flight:
the SSH connection's socket (or the one still in its handshake) is shut
down, so every channel waiting on it fails at once.

Authentication: the URL's password, or a private key file (`?key=FILE`),
else the SSH agent and ~/.ssh default keys. The server's host key must match
~/.ssh/known_hosts (or `?known_hosts=FILE`); `?insecure_skip_host_key=true`
skips the check and says so at WARNING on every connect.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import socket
import stat
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import paramiko

from ..errors import MissingFileError, StorageError
from ..lru import LRU
from .base import FileInfo, check_range, exact, format_filename, infos_from_names, level_dir
from .redact import scrub

if TYPE_CHECKING:
    from . import ReplicaURL

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
"""Seconds any one SFTP request may wait for its answer (then the channel counts as dead)."""
CHANNELS = 8
"""SFTP channels kept open: concurrent requests beyond this wait for one."""
CHANNEL_WAIT = 60.0
WINDOW = 16 << 20
OPEN_FILES = 16
"""Open file handles kept per channel (see `_open_file`)."""
MAX_PACKET = 256 << 10
"""SSH flow-control window and packet size per channel. paramiko's defaults
(2 MiB, 32 KiB) cut the throughput of a 256 KiB ranged read at a few ms of RTT
(bench/README.md)."""
READ_SIZE = 64 << 10
"""Bytes asked for per SFTP read request (paramiko: 32 KiB). Half the requests
cut client and server CPU per MB (bench/README.md); larger ones were slower.
Servers may answer short (OpenSSH caps reads at 255 KiB, some servers at
32 KiB): paramiko asks again for the rest."""


class SFTPStorage:
    """Read-only client of a Litestream SFTP replica."""

    local = False

    def __init__(self, host: str, path: str, user: str, *, port: int = 22, password: str | None = None,
                 key_file: str | None = None, known_hosts: str | None = None,
                 insecure_skip_host_key: bool = False, channels: int = CHANNELS) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.path = path.rstrip("/") or "/"
        self._password = password
        self._key_file = os.path.expanduser(key_file) if key_file else None
        self._known_hosts = os.path.expanduser(known_hosts or "~/.ssh/known_hosts")
        self._insecure = insecure_skip_host_key
        hostport = host if port == 22 else f"{host}:{port}"
        self.url = f"sftp://{user}@{hostport}{self.path}"
        self._lock = threading.Lock()
        self._transport: paramiko.Transport | None = None
        self._idle: queue.LifoQueue[paramiko.SFTPClient] = queue.LifoQueue()
        self._files: dict[int, LRU[str, paramiko.SFTPFile]] = {}
        self._slots = threading.BoundedSemaphore(channels)
        self._closed = False
        self._sockets: set[socket.socket] = set()
        """Sockets of connections in their handshake (under `_lock`), which close() cuts."""
        self._sockets_lock = threading.Lock()

    @classmethod
    def from_url(cls, u: ReplicaURL) -> SFTPStorage:
        assert u.host is not None and u.user is not None
        return cls(u.host, u.path, u.user, port=u.port or 22, password=u.password, key_file=u.param("key"),
                   known_hosts=u.param("known_hosts"),
                   insecure_skip_host_key=u.param("insecure_skip_host_key") == "true")

    def __repr__(self) -> str:
        return f"SFTPStorage({self.url!r})"

    def file_path(self, info: FileInfo) -> str:
        return self._level_path(info.level) + format_filename(info.min_txid, info.max_txid)

    def _level_path(self, level: int) -> str:
        return ("/" if self.path.startswith("/") else "") + level_dir(self.path, level, "ltx")

    # -- connection -------------------------------------------------------

    def _connect(self) -> paramiko.Transport:
        """Open, check the host key, authenticate. Caller holds self._lock."""
        where = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)
        except OSError as e:
            raise StorageError(f"{self.url}: connect failed: endpoint unreachable ({where}): "
                               f"{e.strerror or type(e).__name__}") from None
        with self._sockets_lock:
            if self._closed:
                sock.close()
                raise StorageError(f"{self.url}: storage closed")
            self._sockets.add(sock)
        # Every SFTP call is a small request awaiting its answer: Nagle's algorithm
        # would hold a request back behind an unacknowledged one (paramiko leaves it on).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=MAX_PACKET)
        t.banner_timeout = t.auth_timeout = CONNECT_TIMEOUT
        opts = t.get_security_options()
        aead = tuple(c for c in opts.ciphers if c.endswith("-gcm@openssh.com"))
        opts.ciphers = aead + tuple(c for c in opts.ciphers if c not in aead)  # AEAD first: one pass, no HMAC
        try:
            t.start_client(timeout=CONNECT_TIMEOUT)
            self._check_host_key(t)
            self._authenticate(t)
            if self._closed:  # cut in the handshake, yet it got through
                raise StorageError(f"{self.url}: storage closed")
        except StorageError:
            t.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as e:
            t.close()
            if self._closed:
                raise StorageError(f"{self.url}: storage closed") from None
            raise StorageError(f"{self.url}: SSH handshake with {where} failed: "
                               f"{scrub(str(e) or type(e).__name__, [self._password])}") from None
        finally:
            with self._sockets_lock:
                self._sockets.discard(sock)
        t.set_keepalive(30)
        return t

    def _check_host_key(self, t: paramiko.Transport) -> None:
        key = t.get_remote_server_key()
        if self._insecure:
            log.warning("SFTP %s: host key NOT checked (insecure_skip_host_key=true); %s key %s accepted "
                        "without verification", self.url, key.get_name(), key.fingerprint)
            return
        known = paramiko.HostKeys()
        try:
            known.load(self._known_hosts)
        except FileNotFoundError:
            raise StorageError(f"{self.url}: cannot check the host key: {self._known_hosts} does not exist "
                               "(add the server to it, or pass ?known_hosts=FILE)") from None
        except (OSError, paramiko.SSHException) as e:
            raise StorageError(f"{self.url}: cannot read {self._known_hosts}: {e}") from None
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        entry = known.lookup(name)
        if not entry:
            raise StorageError(f"{self.url}: host {name} is not in {self._known_hosts} (add its key, or "
                               "pass ?known_hosts=FILE)")
        want = entry.get(key.get_name())
        if want is None or want != key:
            raise StorageError(f"{self.url}: HOST KEY MISMATCH for {name}: the server's {key.get_name()} key "
                               f"{key.fingerprint} is not the one in {self._known_hosts}")

    def _authenticate(self, t: paramiko.Transport) -> None:
        try:
            if self._password is not None:
                t.auth_password(self.user, self._password)
            else:
                pkey = self._load_key() if self._key_file else None
                if pkey is not None:
                    t.auth_publickey(self.user, pkey)
                else:
                    self._auth_default_keys(t)
        except paramiko.AuthenticationException:
            how = "password" if self._password is not None else f"key {self._key_file or '(agent/default)'}"
            raise StorageError(f"{self.url}: authentication failed for user {self.user!r} ({how})") from None
        if not t.is_authenticated():
            raise StorageError(f"{self.url}: authentication failed for user {self.user!r}")

    def _load_key(self) -> paramiko.PKey:
        assert self._key_file is not None
        try:
            return paramiko.PKey.from_path(self._key_file)
        except FileNotFoundError:
            raise StorageError(f"{self.url}: key file {self._key_file} does not exist") from None
        except (paramiko.SSHException, ValueError, OSError) as e:
            raise StorageError(f"{self.url}: cannot load key {self._key_file}: {type(e).__name__}") from None

    def _auth_default_keys(self, t: paramiko.Transport) -> None:
        keys: list[paramiko.PKey] = list(paramiko.Agent().get_keys())
        for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
            p = os.path.expanduser(f"~/.ssh/{name}")
            if os.path.exists(p):
                try:
                    keys.append(paramiko.PKey.from_path(p))
                except (paramiko.SSHException, ValueError, OSError):
                    log.debug("skipping unreadable key %s", p)
        for k in keys:
            try:
                t.auth_publickey(self.user, k)
                return
            except paramiko.AuthenticationException:
                continue
        raise paramiko.AuthenticationException("no key accepted")

    def _channel(self) -> paramiko.SFTPClient:
        if not self._slots.acquire(timeout=CHANNEL_WAIT):
            raise StorageError(f"{self.url}: no SFTP channel free within {CHANNEL_WAIT:.0f}s")
        try:
            if self._closed:
                raise StorageError(f"{self.url}: storage closed")
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                pass
            with self._lock:
                if self._closed:
                    raise StorageError(f"{self.url}: storage is closed")
                if self._transport is None or not self._transport.is_active():
                    self._transport = self._connect()
                t = self._transport
            try:
                chan = t.open_session(timeout=CONNECT_TIMEOUT)
                # Every later wait on this channel (subsystem start, each SFTP answer) is bounded too.
                chan.settimeout(READ_TIMEOUT)
                chan.invoke_subsystem("sftp")
                client = paramiko.SFTPClient(chan)
            except (paramiko.SSHException, OSError, EOFError) as e:
                self._drop(t)
                raise StorageError(f"{self.url}: cannot open an SFTP channel: {type(e).__name__}: {e}") from None
            return client
        except BaseException:
            self._slots.release()
            raise

    def _open_file(self, c: paramiko.SFTPClient, path: str) -> paramiko.SFTPFile:
        """An open handle of `path` on channel `c`, kept for the next ranged read.

        Open and close cost two round trips, as much as the read itself; LTX files
        never change, and a handle stays readable even after retention deletes
        the name. Only the thread holding `c` touches its handles."""
        files = self._files.setdefault(id(c), LRU(OPEN_FILES))
        f = files.get(path)
        if f is not None and f._prefetch_extents:  # an earlier read's answers still owed: start afresh
            files.pop(path)
            f.close()
            f = None
        if f is not None:
            return f
        f = _open(c, path)
        for _, old in files.put(path, f):
            old.close()
        return f

    def _forget_files(self, c: paramiko.SFTPClient) -> None:
        files = self._files.pop(id(c), None)
        for f in files.values() if files is not None else ():
            with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
                f.close()

    def _give_back(self, client: paramiko.SFTPClient, broken: bool) -> None:
        try:
            if broken or self._closed:
                self._forget_files(client)
                client.close()
            else:
                self._idle.put(client)
        finally:
            self._slots.release()

    def _drop(self, t: paramiko.Transport | None) -> None:
        """Forget a dead connection and its channels; the next call reconnects."""
        with self._lock:
            if t is not None and self._transport is t:
                self._transport = None
        while True:
            try:
                c = self._idle.get_nowait()
            except queue.Empty:
                break
            self._forget_files(c)
            c.close()
        if t is not None:
            t.close()

    def _call(self, op: str, what: str, fn: Any) -> Any:
        """Run fn(sftp) on a pooled channel; once more on a fresh connection if
        the connection died under it. FileNotFoundError passes through."""
        for attempt in (1, 2):
            client = self._channel()
            t = client.get_channel().get_transport() if client.get_channel() else None
            try:
                return fn(client)
            except FileNotFoundError:
                raise
            except TimeoutError:
                self._give_back(client, broken=True)  # a late answer must not reach the next caller
                client = None
                raise StorageError(f"{what}: {op} failed: no answer from {self.host}:{self.port} within "
                                   f"{READ_TIMEOUT:.0f}s") from None
            except (paramiko.SSHException, EOFError, OSError) as e:
                dead = t is None or not t.is_active() or client.get_channel().closed
                if not dead:  # the server answered with an error status: not worth a retry
                    self._forget_files(client)  # a handle may be what went bad
                    why = e.strerror if isinstance(e, OSError) and e.strerror else e
                    raise StorageError(f"{what}: {op} failed: {why}") from None
                self._give_back(client, broken=True)
                client = None
                self._drop(t)
                if attempt == 2:
                    raise StorageError(f"{what}: {op} failed: connection to {self.host}:{self.port} lost: "
                                       f"{type(e).__name__}") from None
            finally:
                if client is not None:
                    self._give_back(client, broken=False)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the protocol -----------------------------------------------------

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        d = self._level_path(level)

        def run(c: paramiko.SFTPClient) -> list[paramiko.SFTPAttributes]:
            attrs: list[paramiko.SFTPAttributes] = c.listdir_attr(d)
            return attrs

        try:
            attrs = self._call("list", f"sftp://{self.host}{d}", run)
        except FileNotFoundError:
            return []
        entries = [(a.filename, a.st_size or 0,
                    datetime.fromtimestamp(a.st_mtime, tz=timezone.utc) if a.st_mtime else None)
                   for a in attrs if a.st_mode is None or stat.S_ISREG(a.st_mode)]
        return infos_from_names(level, entries, min_txid)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        return exact(self._read(info, offset, length), info, self._where(info), offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        return exact(self._read(info, 0, None), info, self._where(info))

    def _read(self, info: FileInfo, offset: int, length: int | None) -> bytes:
        p = self.file_path(info)

        def run(c: paramiko.SFTPClient) -> bytes:
            if length is None:
                with _open(c, p) as f:
                    f.prefetch()
                    return bytes(f.read())
            return _read_range(self._open_file(c, p), offset, length)

        try:
            return bytes(self._call("get", self._where(info), run))
        except FileNotFoundError:
            raise MissingFileError(f"{info.name}: file not found: {self._where(info)}") from None

    def _where(self, info: FileInfo) -> str:
        return f"sftp://{self.host}{self.file_path(info)}"

    def close(self) -> None:
        """End the calls in flight (each fails with StorageError) and the connection.
        A connection in its handshake is cut first: it holds the lock taken here."""
        with self._sockets_lock:
            self._closed = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            t, self._transport = self._transport, None
        self._drop(t)


# paramiko's readv (and prefetch) send their read requests from a helper thread while
# the caller reads the answers. An answer handled before the next request is recorded
# marks the read done early, and the answers still to come stay on the handle as stray
# buffers; so do answers shorter than asked (servers with a read limit), once paramiko
# falls back to plain reads. A later readv on that kept handle skips asking for any range
# that starts inside a stray buffer, then waits for answers nobody asked for: a stall
# until READ_TIMEOUT (seen in CI). Below, requests are all sent and recorded before any
# answer is read, and a kept handle's strays are dropped before each read.


def _open(c: paramiko.SFTPClient, path: str) -> paramiko.SFTPFile:
    f = c.open(path, "rb")
    f.MAX_REQUEST_SIZE = READ_SIZE  # what readv and prefetch split reads into
    f._start_prefetch = functools.partial(_send_reads, f)
    return f


def _send_reads(f: paramiko.SFTPFile, chunks: list[tuple[int, int]], max_concurrent_requests: Any = None) -> None:
    """paramiko's `_start_prefetch` without its thread: all requests sent (a few dozen
    bytes each, far inside the channel's window) and recorded before the caller reads."""
    f._prefetching = True
    f._prefetch_done = not chunks
    f._prefetch_thread(chunks, max_concurrent_requests)


def _read_range(f: paramiko.SFTPFile, offset: int, length: int) -> bytes:
    f._prefetch_data.clear()
    return b"".join(f.readv([(offset, length)]))
