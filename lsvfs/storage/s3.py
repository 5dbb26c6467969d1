"""S3 replicas: key `<path>/<level:04x>/<min:016x>-<max:016x>.ltx`.

Requests go through lsvfs's own lean S3 client (s3_client.py: http.client,
our SigV4, pooled keep-alive connections), not botocore: a fresh process
reaches its first rows without the ~0.25 s botocore takes to import and build
a client, and each request costs a fraction of a millisecond of CPU.
Credentials come from s3_credentials.py, which reads the environment and the
~/.aws files itself and leaves everything else to botocore's chain.
The client is made once per endpoint, region, credentials and options and
shared (lsvfs/storage/shared.py) by every storage on it, whatever its bucket
and path, and by every thread. Every failure becomes a StorageError that
names the bucket/key and the cause, so a user sees "NoSuchBucket" or
"endpoint unreachable" rather than a traceback.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

from ..errors import LTXError, MissingFileError, StorageError
from .base import (
    LEVELS,
    PARALLEL_REQUESTS,
    FileInfo,
    check_level,
    check_range,
    exact,
    format_filename,
    level_dir,
    parse_filename,
)
from .redact import redact_url, scrub
from .s3_client import (
    ClientClosed,
    ConnectionLost,
    EndpointUnreachable,
    ListedObject,
    S3Client,
    S3Config,
    S3Error,
    Scope,
)
from .s3_credentials import NO_CREDENTIALS_HINT, profile_region, resolve
from .shared import Lease, SharedClients, fingerprint, lease

log = logging.getLogger(__name__)
_LEVEL_FOLDER = re.compile(r"[0-9a-f]{4}")

DEFAULT_REGION = "us-east-1"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
MAX_ATTEMPTS = 3
"""Total attempts per request (standard retry mode): one try and two retries."""
MAX_POOL_CONNECTIONS = PARALLEL_REQUESTS
"""Keep-alive connections per client: as many as a replica sends requests at once."""

_HINTS = {
    "NoSuchBucket": "bucket does not exist",
    "NoSuchKey": "object not found",
    "AccessDenied": "access denied (check the credentials and the bucket policy)",
    "InvalidAccessKeyId": (
        "access key id not recognised (check AWS_ACCESS_KEY_ID / LITESTREAM_ACCESS_KEY_ID)"
    ),
    "SignatureDoesNotMatch": (
        "signature mismatch: wrong secret key (check AWS_SECRET_ACCESS_KEY / "
        "LITESTREAM_SECRET_ACCESS_KEY)"
    ),
    "InvalidRange": "requested range not satisfiable (object is smaller than expected)",
    "PermanentRedirect": "bucket is in another region (set ?region= in the URL)",
    "AuthorizationHeaderMalformed": "wrong region for this bucket (set ?region= in the URL)",
    "ExpiredToken": "credentials expired",
    "InvalidToken": "session token invalid",
}
_STATUS_HINTS = {
    "403": "access denied (check the credentials)",
    "404": "not found",
    "416": _HINTS["InvalidRange"],
}


def litestream_credentials(env: dict[str, str] | None = None) -> tuple[str, str] | None:
    """Static keys Litestream would use because of LITESTREAM_* variables, else None.

    Litestream 0.5.17 copies LITESTREAM_ACCESS_KEY_ID / LITESTREAM_SECRET_ACCESS_KEY
    into AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY only where the AWS variable is
    *not* set (verified against the binary: with both set, the AWS ones are
    used). We do the same, so one environment gives the same identity to
    `litestream restore` and to lsvfs. None means "the AWS sources" (s3_credentials.resolve).
    """
    env = dict(os.environ) if env is None else env
    lit_id = env.get("LITESTREAM_ACCESS_KEY_ID")
    lit_secret = env.get("LITESTREAM_SECRET_ACCESS_KEY")
    if lit_id is None and lit_secret is None:
        return None
    key_id = env.get("AWS_ACCESS_KEY_ID", lit_id)
    secret = env.get("AWS_SECRET_ACCESS_KEY", lit_secret)
    if not key_id or not secret:
        raise StorageError(
            "incomplete S3 credentials: set both LITESTREAM_ACCESS_KEY_ID and "
            "LITESTREAM_SECRET_ACCESS_KEY (or both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    return key_id, secret


@dataclass(frozen=True)
class ClientKey:
    """What tells one S3 client from another (never the bucket or path):
    credentials only as a digest, with the AWS_* environment they may come from."""

    scheme: str
    endpoint: str | None
    region: str | None
    path_style: bool
    skip_verify: bool
    max_attempts: int
    connect_timeout: float
    read_timeout: float
    max_pool_connections: int
    credentials: str


class S3Storage:
    """Read-only client of a Litestream S3 replica (AWS or any S3-compatible endpoint)."""

    local = False

    scheme = "s3"
    """URL scheme shown in messages (OSS reuses this client under "oss")."""

    def __init__(
        self,
        bucket: str,
        path: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        force_path_style: bool | None = None,
        skip_verify: bool = False,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_pool_connections: int = MAX_POOL_CONNECTIONS,
        page_size: int = 1000,
        client: S3Client | None = None,
        clients: SharedClients | None = None,
    ) -> None:
        """`client` is used as given and closed with this storage; otherwise the
        client comes from `clients` (shared with every storage asking for the
        same key) or, without it, is this storage's own."""
        if not bucket:
            raise StorageError(f"{self.scheme.upper()} replica needs a bucket name")
        self.bucket = bucket
        self.path = path.strip("/")
        self.endpoint = endpoint or None
        # Litestream uses path-style addressing whenever an endpoint is given.
        self.force_path_style = bool(endpoint) if force_path_style is None else force_path_style
        self.skip_verify = skip_verify
        self.page_size = page_size
        self._lease: Lease[S3Client]
        if client is not None:
            self._lease = Lease.own(client, _close_client)
            self.region = region or client.region
        else:
            if access_key_id is None and secret_access_key is None:
                creds = self.env_credentials()
                if creds is not None:
                    access_key_id, secret_access_key = creds
            key = ClientKey(self.scheme, self.endpoint, region, self.force_path_style, skip_verify, max_attempts,
                            connect_timeout, read_timeout, max_pool_connections,
                            fingerprint(access_key_id, secret_access_key, env=("AWS_",)))
            key_id, secret = access_key_id, secret_access_key
            self._lease = lease(clients, key, lambda: self._make_client(key, key_id, secret), _close_client)
            self.region = str(self._lease.client.region)
        self._client = self._lease.client
        self._scope = Scope()
        query: dict[str, str] = {}
        if self.endpoint:
            query["endpoint"] = self.endpoint
        if region:
            query["region"] = region
        if force_path_style is not None:
            query["force-path-style"] = "true" if force_path_style else "false"
        if skip_verify:
            query["skip-verify"] = "true"
        base = f"{self.scheme}://{bucket}/{self.path}" if self.path else f"{self.scheme}://{bucket}"
        self.url = redact_url(base + ("?" + urlencode(query, safe=":/") if query else ""))

    @staticmethod
    def env_credentials() -> tuple[str, str] | None:
        """Static keys from the LITESTREAM_* variables, else None (the AWS sources)."""
        return litestream_credentials()

    def default_region(self) -> str:
        """The region when the URL names none: AWS's configuration, else us-east-1."""
        return profile_region() or DEFAULT_REGION

    def client_endpoint(self, region: str) -> str | None:
        """Where the client sends requests (None: AWS, by region)."""
        return self.endpoint

    def client_config(self, key: ClientKey, region: str) -> S3Config:
        return S3Config(
            region=region, endpoint=self.client_endpoint(region), path_style=key.path_style,
            skip_verify=key.skip_verify, connect_timeout=key.connect_timeout, read_timeout=key.read_timeout,
            max_attempts=key.max_attempts, max_pool_connections=key.max_pool_connections)

    def _make_client(self, key: ClientKey, access_key_id: str | None, secret_access_key: str | None) -> S3Client:
        region = key.region or self.default_region()
        explicit = (access_key_id, secret_access_key) if access_key_id and secret_access_key else None
        client = S3Client(self.client_config(key, region), resolve(explicit=explicit))
        log.debug("new %r", client)
        return client

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- keys -------------------------------------------------------------

    def level_prefix(self, level: int) -> str:
        return level_dir(self.path, level, "hex")

    def key_of(self, info: FileInfo) -> str:
        return self.level_prefix(info.level) + format_filename(info.min_txid, info.max_txid)

    # -- listing ----------------------------------------------------------

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        """Files of `level` with min_txid >= `min_txid`, sorted by (min, max).

        Names are fixed-width hex, so key order is TXID order and StartAfter
        `<min_txid-1>-ffff…` skips every earlier file server-side: polling
        "from a TXID on" costs one small LIST, not the whole level.
        """
        check_level(level)
        prefix = self.level_prefix(level)
        start_after = prefix + format_filename(min_txid - 1, 0xFFFFFFFFFFFFFFFF) if min_txid > 1 else None
        out: list[FileInfo] = []
        try:
            for obj in self._list(prefix, start_after):
                try:
                    lo, hi = parse_filename(obj.key[len(prefix):])
                except LTXError:
                    continue
                if lo >= min_txid:
                    out.append(FileInfo(level, lo, hi, obj.size, obj.modified))
        except Exception as e:  # noqa: BLE001 - translated, never swallowed
            raise self._error(e, "list", prefix) from e
        out.sort(key=lambda f: (f.min_txid, f.max_txid))
        return out

    def list_every_level(self, min_txid: int = 0) -> list[FileInfo]:
        """Every level's files with one LIST of the replica's path (paginated):
        one request at open instead of one per level, most of which are empty."""
        root = self.level_prefix(0)[:-len("0000/")]
        out: list[FileInfo] = []
        try:
            for obj in self._list(root):
                folder, _, name = obj.key[len(root):].partition("/")
                level = int(folder, 16) if _LEVEL_FOLDER.fullmatch(folder) else -1
                if level not in LEVELS:
                    continue
                try:
                    lo, hi = parse_filename(name)
                except LTXError:
                    continue
                if lo >= min_txid:
                    out.append(FileInfo(level, lo, hi, obj.size, obj.modified))
        except Exception as e:  # noqa: BLE001 - translated, never swallowed
            raise self._error(e, "list", root or "/") from e
        out.sort(key=lambda f: f.key)
        return out

    def _list(self, prefix: str, start_after: str | None = None) -> Iterator[ListedObject]:
        """Every object under `prefix` (after `start_after`), page by page."""
        token: str | None = None
        while True:
            page = self._client.list_objects(self.bucket, prefix, start_after=start_after,
                                             continuation_token=token, max_keys=self.page_size, scope=self._scope)
            yield from page.objects
            token = page.next_token
            if token is None:
                return

    # -- reading ----------------------------------------------------------

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset` by one ranged GET, or StorageError."""
        check_range(offset, length)
        if length == 0:
            return b""
        key = self.key_of(info)
        data = self._get(key, (offset, offset + length - 1))
        return exact(data, info, f"{self.scheme}://{self.bucket}/{key}", offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        """The whole object; StorageError unless it is exactly `info.size` bytes."""
        key = self.key_of(info)
        return exact(self._get(key, None), info, f"{self.scheme}://{self.bucket}/{key}")

    def _get(self, key: str, range_: tuple[int, int] | None) -> bytes:
        try:
            return self._client.get_object(self.bucket, key, range_, scope=self._scope)
        except Exception as e:  # noqa: BLE001 - translated, never swallowed
            raise self._error(e, "get" if range_ is None else f"get bytes={range_[0]}-{range_[1]}", key) from e

    # -- errors -----------------------------------------------------------

    def _error(self, e: BaseException, op: str, key: str) -> StorageError:
        where = f"{self.scheme}://{self.bucket}/{key}"
        if isinstance(e, StorageError):
            return e
        response = getattr(e, "response", None)  # botocore's ClientError (fault injection in tests)
        if isinstance(e, S3Error) or isinstance(response, dict):
            if isinstance(e, S3Error):
                code, status, msg = e.code, str(e.status), e.message
            else:
                assert isinstance(response, dict)
                err = response.get("Error", {})
                code, msg = str(err.get("Code") or ""), str(err.get("Message") or "").strip()
                status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
            hint = _HINTS.get(code) or _STATUS_HINTS.get(code) or _STATUS_HINTS.get(status)
            detail = f"{code or 'HTTP ' + status}: {hint or msg or 'error'}"
            if hint and msg and msg not in hint:
                detail += f" ({msg})"
            cls = MissingFileError if code in ("NoSuchKey", "404") and op.startswith("get") else StorageError
            return cls(self._scrub(f"{where}: {op} failed: {detail}"))
        name = type(e).__name__
        if isinstance(e, EndpointUnreachable) or name in ("EndpointConnectionError", "ConnectTimeoutError"):
            return StorageError(self._scrub(
                f"{where}: {op} failed: endpoint unreachable ({self.endpoint or 'AWS'}): {e}"))
        if isinstance(e, ConnectionLost) or name in ("ReadTimeoutError", "ConnectionClosedError"):
            return StorageError(self._scrub(f"{where}: {op} failed: connection to {self.endpoint or 'AWS'} lost: {e}"))
        if isinstance(e, ClientClosed):
            return StorageError(f"{where}: {op} failed: storage client closed")
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            return StorageError(f"{where}: {op} failed: no usable AWS credentials ({e}); {NO_CREDENTIALS_HINT}")
        return StorageError(self._scrub(f"{where}: {op} failed: {name}: {e}"))

    def _scrub(self, text: str) -> str:
        """`text` with no secret of this storage's credentials in it."""
        creds = getattr(self._client, "credentials", None)
        secret = getattr(getattr(creds, "creds", None), "secret_access_key", None)
        return scrub(text, [secret])

    def close(self) -> None:
        """End this storage's requests in flight (another storage may share the client, so not
        theirs), then let go of the client; the last storage on it closes its connections."""
        self._client.cancel(self._scope)
        self._lease.close()

    def __enter__(self) -> S3Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_client(client: S3Client) -> None:
    client.close()
