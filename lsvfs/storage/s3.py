"""S3 replicas: key `<path>/<level:04x>/<min:016x>-<max:016x>.ltx`.

The boto3 client is made once per endpoint, region, credentials and options
and shared (lsvfs/storage/shared.py) by every storage on it, whatever its
bucket and path, and by every thread (boto3 clients are thread-safe;
sessions are not, so a session is used only to make its one client).
Every botocore failure becomes a StorageError that names the bucket/key and
the cause, so a user sees "NoSuchBucket" or "endpoint unreachable" rather
than a botocore traceback.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import closing
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

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
from .redact import redact_url
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
    `litestream restore` and to lsvfs. None means "use boto3's own chain".
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
    """What tells one boto3 client from another (never the bucket or path):
    credentials only as a digest, with the environment boto3 reads."""

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
        client: Any = None,
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
        self._lease: Lease[Any]
        if client is not None:
            self._lease = Lease.own(client, _close_client)
            self.region = region or DEFAULT_REGION
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
            self.region = str(self._lease.client.meta.region_name)
        self._client = self._lease.client
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
        """Static keys from the environment, else None (boto3's own chain)."""
        return litestream_credentials()

    def default_region(self, session: Any) -> str:
        """The region when the URL names none: AWS's configuration, else us-east-1."""
        return str(session.get_config_variable("region") or DEFAULT_REGION)

    def client_endpoint(self, region: str) -> str | None:
        """Where the client sends requests (None: AWS, by region)."""
        return self.endpoint

    def client_config(self, key: ClientKey) -> Config:
        return Config(
            connect_timeout=key.connect_timeout,
            read_timeout=key.read_timeout,
            retries={"mode": "standard", "total_max_attempts": key.max_attempts},
            max_pool_connections=key.max_pool_connections,
            s3={"addressing_style": "path" if key.path_style else "auto"},
            user_agent_extra="lsvfs",
        )

    def _make_client(self, key: ClientKey, access_key_id: str | None, secret_access_key: str | None) -> Any:
        # boto3's own core, botocore, without boto3's wrapper: importing boto3
        # also imports s3transfer, a fifth of a second at every cold start.
        session = botocore.session.get_session()
        region = key.region or self.default_region(session)
        log.debug("new %s client for %s (region %s)", self.scheme, self.client_endpoint(region) or "AWS", region)
        return session.create_client(
            "s3",
            region_name=region,
            endpoint_url=self.client_endpoint(region),
            verify=not key.skip_verify,
            config=self.client_config(key),
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
        )

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
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if min_txid > 1:
            kwargs["StartAfter"] = prefix + format_filename(min_txid - 1, 0xFFFFFFFFFFFFFFFF)
        out: list[FileInfo] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                **kwargs, PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    name = obj["Key"][len(prefix):]
                    try:
                        lo, hi = parse_filename(name)
                    except LTXError:
                        continue
                    if lo < min_txid:
                        continue
                    out.append(FileInfo(level, lo, hi, int(obj["Size"]), obj.get("LastModified")))
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
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root, PaginationConfig={"PageSize": self.page_size})
            for page in pages:
                for obj in page.get("Contents", ()):
                    folder, _, name = obj["Key"][len(root):].partition("/")
                    level = int(folder, 16) if _LEVEL_FOLDER.fullmatch(folder) else -1
                    if level not in LEVELS:
                        continue
                    try:
                        lo, hi = parse_filename(name)
                    except LTXError:
                        continue
                    if lo >= min_txid:
                        out.append(FileInfo(level, lo, hi, int(obj["Size"]), obj.get("LastModified")))
        except Exception as e:  # noqa: BLE001 - translated, never swallowed
            raise self._error(e, "list", root or "/") from e
        out.sort(key=lambda f: (f.level, f.min_txid, f.max_txid))
        return out

    # -- reading ----------------------------------------------------------

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset` by one ranged GET, or StorageError."""
        check_range(offset, length)
        if length == 0:
            return b""
        key = self.key_of(info)
        data = self._get(key, f"bytes={offset}-{offset + length - 1}")
        return exact(data, info, f"{self.scheme}://{self.bucket}/{key}", offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        """The whole object; StorageError unless it is exactly `info.size` bytes."""
        key = self.key_of(info)
        return exact(self._get(key, None), info, f"{self.scheme}://{self.bucket}/{key}")

    def _get(self, key: str, range_: str | None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if range_ is not None:
            kwargs["Range"] = range_
        try:
            resp = self._client.get_object(**kwargs)
            with closing(resp["Body"]) as body:
                data: bytes = body.read()
                return data
        except Exception as e:  # noqa: BLE001 - translated, never swallowed
            raise self._error(e, "get" if range_ is None else f"get {range_}", key) from e

    # -- errors -----------------------------------------------------------

    def _error(self, e: BaseException, op: str, key: str) -> StorageError:
        where = f"{self.scheme}://{self.bucket}/{key}"
        if isinstance(e, StorageError):
            return e
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code") or "")
            status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
            hint = _HINTS.get(code) or _STATUS_HINTS.get(code) or _STATUS_HINTS.get(status)
            msg = str(err.get("Message") or "").strip()
            detail = f"{code or 'HTTP ' + status}: {hint or msg or 'error'}"
            if hint and msg and msg not in hint:
                detail += f" ({msg})"
            cls = MissingFileError if code in ("NoSuchKey", "404") and op.startswith("get") else StorageError
            return cls(f"{where}: {op} failed: {detail}")
        if isinstance(e, (EndpointConnectionError, ConnectTimeoutError)):
            return StorageError(
                f"{where}: {op} failed: endpoint unreachable ({self.endpoint or 'AWS'}): {e}"
            )
        if isinstance(e, (ReadTimeoutError, ConnectionClosedError)):
            return StorageError(f"{where}: {op} failed: connection to {self.endpoint or 'AWS'} lost: {e}")
        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                f"{where}: {op} failed: no usable AWS credentials ({e}); set AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or LITESTREAM_ACCESS_KEY_ID/LITESTREAM_SECRET_ACCESS_KEY"
            )
        if isinstance(e, BotoCoreError):
            return StorageError(f"{where}: {op} failed: {e}")
        return StorageError(f"{where}: {op} failed: {type(e).__name__}: {e}")

    def close(self) -> None:
        """Let go of the client; the last storage on it closes its connections."""
        self._lease.close()

    def __enter__(self) -> S3Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_client(client: Any) -> None:
    client.close()
