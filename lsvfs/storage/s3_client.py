"""A lean S3 client: ranged GETs and ListObjectsV2 over pooled keep-alive connections.

lsvfs needs two S3 calls, so this client is those two calls on http.client,
signed with our own SigV4 (sigv4.py): importing it costs milliseconds where
botocore costs ~0.15 s plus ~0.1 s to build a client, and a request costs
~0.1-0.2 ms of CPU where botocore spends ~2-5 ms (bench/compare_s3_clients.py
has the figures). It speaks to AWS and any S3-compatible endpoint (MinIO,
OSS, R2, ...), path-style or virtual-hosted.

Thread-safe: one pool of connections per host, shared by every thread; a
request takes a connection out of the pool and gives it back when done.
`close()` shuts down the sockets of requests in flight, so a thread blocked
in a read returns within moments (a connect in progress within the connect
timeout), and a retry waiting out its back-off wakes at once. A client is
shared by every storage on its endpoint, so each storage sends its requests
in a `Scope` and `cancel(scope)` does the same for that storage's requests
alone, when it closes while the client lives on.
Retries follow the SDKs' "standard" mode: connection failures, timeouts,
5xx and throttling errors, with jittered exponential back-off.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import random
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from .s3_credentials import CredentialSource
from .sigv4 import EMPTY_SHA256, SigningKeys, canonical_query, sign, uri_encode

log = logging.getLogger(__name__)

USER_AGENT = "lsvfs"
RETRY_STATUS = frozenset((500, 502, 503, 504, 429))
RETRY_CODES = frozenset(("Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "RequestTimeoutException",
                         "InternalError", "ServiceUnavailable", "PriorRequestNotComplete", "RequestLimitExceeded"))
MAX_BACKOFF = 20.0
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class S3Error(Exception):
    """An error response: HTTP status, S3's error code and message (never a secret)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code or 'HTTP ' + str(status)}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class EndpointUnreachable(Exception):
    """No connection could be made (refused, DNS, connect timeout)."""


class ConnectionLost(Exception):
    """A connection broke or timed out mid-request."""


class ClientClosed(Exception):
    """The client was closed: requests in flight end with this, new ones start with it."""


class Scope:
    """The requests of one holder of a shared client (one storage): `S3Client.cancel(scope)`
    ends those in flight and fails later ones, leaving other holders' requests alone."""

    __slots__ = ("cancelled", "conns", "__weakref__")

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.conns: set[http.client.HTTPConnection] = set()


@dataclass(frozen=True)
class S3Config:
    """Everything that makes one client differ from another (never a bucket or path)."""

    region: str
    endpoint: str | None = None
    """`scheme://host[:port]`, or None for AWS (by region)."""
    path_style: bool = False
    skip_verify: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 3
    max_pool_connections: int = 64
    service: str = "s3"
    virtual_hosted: bool = False
    """Virtual-hosted addressing even for bucket names botocore's "auto" would send path-style (OSS)."""


class ListedObject(NamedTuple):
    key: str
    size: int
    modified: datetime | None


@dataclass(frozen=True)
class ListPage:
    objects: list[ListedObject]
    next_token: str | None
    """The continuation token when the listing is truncated, else None."""


class _Pool:
    """Keep-alive connections to one host; in-flight ones are tracked so close() can cut them."""

    def __init__(self, scheme: str, host: str, port: int, cfg: S3Config, ssl_context: Any) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.cfg = cfg
        self.ssl_context = ssl_context
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._busy: set[http.client.HTTPConnection] = set()
        self.closed = False

    def acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection (reused: True if it has served a request before)."""
        with self._lock:
            if self.closed:
                raise ClientClosed()
            if self._idle:
                conn = self._idle.pop()
                self._busy.add(conn)
                return conn, True
            conn = self._new()
            self._busy.add(conn)
        return conn, False

    def _new(self) -> http.client.HTTPConnection:
        timeout = self.cfg.connect_timeout
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.ssl_context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def connect(self, conn: http.client.HTTPConnection) -> None:
        """Open `conn` (connect timeout), then give its socket the read timeout and no Nagle delay."""
        try:
            conn.connect()
        except OSError as e:
            raise EndpointUnreachable(f"{self.scheme}://{self.host}:{self.port}: {e}") from e
        sock = conn.sock
        sock.settimeout(self.cfg.read_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.closed:  # closed while connecting: the close could not see this socket
            raise ClientClosed()

    def release(self, conn: http.client.HTTPConnection, reuse: bool) -> None:
        with self._lock:
            self._busy.discard(conn)
            if reuse and not self.closed and len(self._idle) < self.cfg.max_pool_connections:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for conn in idle:
            conn.close()
        for conn in busy:  # wakes a thread blocked reading it; that thread closes it
            _shutdown(conn)


class S3Client:
    """GET (whole or ranged) and ListObjectsV2 against one endpoint, any bucket."""

    def __init__(self, cfg: S3Config, credentials: CredentialSource) -> None:
        self.config = cfg
        self.region = cfg.region
        self.credentials = credentials
        self._keys = SigningKeys()
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._bucket_regions: dict[str, str] = {}
        self._closed = threading.Event()
        self._scopes: weakref.WeakSet[Scope] = weakref.WeakSet()
        self._ssl_context: Any = None
        if cfg.endpoint:
            parts = urlsplit(cfg.endpoint)
            self._scheme = (parts.scheme or "https").lower()
            self._host = parts.hostname or ""
            self._port = parts.port or (443 if self._scheme == "https" else 80)
            self._base = parts.path.rstrip("/")
        else:
            self._scheme, self._host, self._port, self._base = "https", "", 443, ""

    # -- addressing ---------------------------------------------------------

    def _region_of(self, bucket: str) -> str:
        return self._bucket_regions.get(bucket, self.region)

    def _address(self, bucket: str, key: str) -> tuple[str, str]:
        """(host, encoded path) for an object (or, with key "", the bucket)."""
        host = self._host or f"s3.{self._region_of(bucket)}.amazonaws.com"
        virtual = not self.config.path_style and (self.config.virtual_hosted or _DNS_BUCKET.match(bucket) is not None)
        if virtual:
            return f"{bucket}.{host}", self._base + "/" + uri_encode(key, path=True)
        return host, f"{self._base}/{uri_encode(bucket, path=True)}/{uri_encode(key, path=True)}"

    def _pool(self, host: str) -> _Pool:
        ident = (self._scheme, host, self._port)
        pool = self._pools.get(ident)
        if pool is None:
            with self._lock:
                if self._closed.is_set():
                    raise ClientClosed()
                pool = self._pools.get(ident)
                if pool is None:
                    if self._scheme == "https" and self._ssl_context is None:
                        self._ssl_context = _ssl_context(self.config.skip_verify)
                    pool = self._pools[ident] = _Pool(self._scheme, host, self._port, self.config, self._ssl_context)
        return pool

    # -- the two calls --------------------------------------------------------

    def get_object(self, bucket: str, key: str, range_: tuple[int, int] | None = None, *,
                   scope: Scope | None = None) -> bytes:
        """The object's bytes, or `range_` = (first, last) inclusive of them."""
        headers = {"range": f"bytes={range_[0]}-{range_[1]}"} if range_ is not None else {}
        _, _, body = self.request("GET", bucket, key, [], headers, scope=scope)
        return body

    def list_objects(self, bucket: str, prefix: str, *, start_after: str | None = None,
                     continuation_token: str | None = None, max_keys: int = 1000,
                     scope: Scope | None = None) -> ListPage:
        """One page of ListObjectsV2."""
        params = [("list-type", "2"), ("prefix", prefix), ("max-keys", str(max_keys)), ("encoding-type", "url")]
        if start_after:
            params.append(("start-after", start_after))
        if continuation_token:
            params.append(("continuation-token", continuation_token))
        _, _, body = self.request("GET", bucket, "", params, {}, scope=scope)
        return parse_list(body)

    # -- one request, with retries ----------------------------------------------

    def request(self, method: str, bucket: str, key: str, params: list[tuple[str, str]],
                extra: dict[str, str], *, scope: Scope | None = None) -> tuple[int, dict[str, str], bytes]:
        """Send a signed request; (status, headers, body) of a 2xx answer, else S3Error or a connection error."""
        query = canonical_query(params)
        attempt, redirected = 0, False
        if scope is not None:
            with self._lock:
                self._scopes.add(scope)
                if self._closed.is_set():
                    scope.cancelled.set()
        while True:
            if self._closed.is_set() or (scope is not None and scope.cancelled.is_set()):
                raise ClientClosed()
            attempt += 1
            try:
                status, headers, body = self._once(method, bucket, key, query, extra, scope)
            except (EndpointUnreachable, ConnectionLost) as e:
                if attempt >= self.config.max_attempts:
                    raise
                self._backoff(attempt, e, scope)
                continue
            if status < 300:
                return status, headers, body
            err = _error_of(status, headers, body)
            region = headers.get("x-amz-bucket-region")
            if (not redirected and not self.config.endpoint and region and region != self._region_of(bucket)
                    and status in (301, 307, 400)):
                log.debug("bucket %s is in %s, not %s: asking there", bucket, region, self._region_of(bucket))
                self._bucket_regions[bucket] = region
                redirected = True
                attempt -= 1
                continue
            if attempt < self.config.max_attempts and (status in RETRY_STATUS or err.code in RETRY_CODES):
                self._backoff(attempt, err, scope)
                continue
            raise err

    def _backoff(self, attempt: int, why: BaseException, scope: Scope | None) -> None:
        delay = random.random() * min(MAX_BACKOFF, 2.0 ** (attempt - 1))
        log.debug("S3 request failed (%s); retry %d in %.2f s", why, attempt, delay)
        # close() sets every scope's event too, so waiting on the scope's alone sees both.
        if (scope.cancelled if scope is not None else self._closed).wait(delay):
            raise ClientClosed()

    def _once(self, method: str, bucket: str, key: str, query: str, extra: dict[str, str],
              scope: Scope | None) -> tuple[int, dict[str, str], bytes]:
        host, path = self._address(bucket, key)
        pool = self._pool(host)
        creds = self.credentials.get()
        region = self._region_of(bucket)
        while True:
            conn, reused = pool.acquire()
            ok = False
            if scope is not None:
                with self._lock:
                    scope.conns.add(conn)
            try:
                if scope is not None and scope.cancelled.is_set():
                    raise ClientClosed()
                if conn.sock is None:
                    pool.connect(conn)
                    if scope is not None and scope.cancelled.is_set():  # cancelled while connecting
                        raise ClientClosed()
                amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                name = f"[{host}]" if ":" in host else host  # an IPv6 literal
                host_header = name if self._port == (443 if self._scheme == "https" else 80) else f"{name}:{self._port}"
                headers = {"host": host_header, "x-amz-date": amz_date, "x-amz-content-sha256": EMPTY_SHA256, **extra}
                if creds.token:
                    headers["x-amz-security-token"] = creds.token
                key_bytes = self._keys.get(creds.secret_access_key, amz_date[:8], region, self.config.service)
                headers["authorization"] = sign(method, path, query, headers, access_key_id=creds.access_key_id,
                                                signing_key=key_bytes, amz_date=amz_date, region=region,
                                                service=self.config.service)
                headers["user-agent"] = USER_AGENT
                del headers["host"]  # http.client sends Host itself (the same value)
                conn.putrequest(method, path + ("?" + query if query else ""), skip_accept_encoding=True,
                                skip_host=True)
                conn.putheader("Host", host_header)
                for name, value in headers.items():
                    conn.putheader(name, value)
                conn.endheaders()
                resp = conn.getresponse()
                body = resp.read() if method != "HEAD" else b""
                out = {k.lower(): v for k, v in resp.getheaders()}
                ok = not resp.will_close
                return resp.status, out, body
            except (ClientClosed, EndpointUnreachable):
                raise
            except (http.client.HTTPException, OSError) as e:
                if self._closed.is_set() or (scope is not None and scope.cancelled.is_set()):
                    raise ClientClosed() from None
                if reused and isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError,
                                             ConnectionResetError)):
                    continue  # a kept connection the server had closed: try a fresh one, same attempt
                raise ConnectionLost(f"{self._scheme}://{host}:{self._port}: {type(e).__name__}: {e}") from e
            finally:
                if scope is not None:
                    with self._lock:
                        scope.conns.discard(conn)
                pool.release(conn, ok and not (scope is not None and scope.cancelled.is_set()))

    def cancel(self, scope: Scope) -> None:
        """End `scope`'s requests in flight (their sockets are shut down, so a blocked read returns
        at once) and fail its later ones; the client and other scopes go on."""
        with self._lock:
            scope.cancelled.set()
            conns = list(scope.conns)
        for conn in conns:
            _shutdown(conn)

    def close(self) -> None:
        """End every request in flight and close every connection; later requests fail with ClientClosed."""
        with self._lock:
            self._closed.set()
            pools = list(self._pools.values())
            scopes = list(self._scopes)
        for scope in scopes:
            scope.cancelled.set()
        for pool in pools:
            pool.close()

    def __repr__(self) -> str:
        where = self.config.endpoint or f"AWS {self.region}"
        return f"S3Client({where}, credentials from {self.credentials.name})"


def _shutdown(conn: http.client.HTTPConnection) -> None:
    """Shut a connection's socket down under a thread that may be blocked on it (it then sees EOF)."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _ssl_context(skip_verify: bool) -> Any:
    import os
    import ssl

    ctx = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
    if skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


_TAG = re.compile(r"<(Code|Message)>(.*?)</\1>", re.S)


def _error_of(status: int, headers: dict[str, str], body: bytes) -> S3Error:
    """S3's error document (`<Error><Code>…</Code><Message>…</Message></Error>`), or the status alone."""
    found = dict(_TAG.findall(body[:4096].decode("utf-8", "replace"))) if body else {}
    code = _unescape(found.get("Code", "")) or str(status)
    return S3Error(status, code, _unescape(found.get("Message", "")).strip(), headers)


_CONTENTS = re.compile(r"<Contents>(.*?)</Contents>", re.S)
_TRUNCATED = re.compile(r"<IsTruncated>\s*true\s*</IsTruncated>")
_NEXT = re.compile(r"<NextContinuationToken>(.*?)</NextContinuationToken>", re.S)
_URL_ENCODED = re.compile(r"<EncodingType>\s*url\s*</EncodingType>")
_ENTITY = re.compile(r"&(lt|gt|amp|quot|apos|#x[0-9a-fA-F]+|#[0-9]+);")
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


def _unescape(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("#x"):
            return chr(int(name[2:], 16))
        if name.startswith("#"):
            return chr(int(name[1:]))
        return _ENTITIES[name]

    return _ENTITY.sub(one, text) if "&" in text else text


def _field(block: str, name: str) -> str | None:
    start = block.find(f"<{name}>")
    if start < 0:
        return None
    start += len(name) + 2
    end = block.find("</", start)
    return block[start:end] if end >= 0 else None


def _url_key(text: str) -> str:
    key = _unescape(text)
    plain = key.replace("%2F", "/")
    return unquote(plain) if "%" in plain else plain


def parse_list(body: bytes) -> ListPage:
    """A ListObjectsV2 result: its objects (keys decoded), and the continuation token if truncated.

    The document is flat and regular, so string searches read it in a
    fraction of an XML parser's time (a 1000-key page is ~2 ms)."""
    text = body.decode("utf-8")
    decode: Callable[[str], str] = _url_key if _URL_ENCODED.search(text) else _unescape
    objects: list[ListedObject] = []
    for block in _CONTENTS.findall(text):
        key = _field(block, "Key")
        if key is None:
            continue
        objects.append(ListedObject(decode(key), int(_field(block, "Size") or 0),
                                    _timestamp(_field(block, "LastModified"))))
    token = None
    if _TRUNCATED.search(text):
        nxt = _NEXT.search(text)
        token = _unescape(nxt.group(1)) if nxt else None
        if token is None and objects:
            raise S3Error(200, "MalformedListing", "truncated listing without a continuation token")
    return ListPage(objects, token)


def _timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
