"""Google Cloud Storage replicas: object `<path>/ltx/<level>/<min>-<max>.ltx`.

Uses the official `google-cloud-storage` client (extra `lsvfs[gcs]`), one per
endpoint and credentials, shared by every storage on it (lsvfs/storage/shared.py)
and every thread, over a widened connection pool.
Credentials are Google's application default credentials; with
`STORAGE_EMULATOR_HOST` set (or `?endpoint=` in the URL) the client talks to
that emulator anonymously, as Litestream's Go client does.

Listing reads the whole level and filters by TXID here: a listing that seeks
by a TXID prefix matches only a file starting exactly there (Litestream #1456).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import google.cloud.storage as gcs
import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials
from google.cloud.storage.retry import DEFAULT_RETRY

from ..errors import MissingFileError, StorageError
from .base import FileInfo, check_range, exact, format_filename, infos_from_names, level_dir
from .http import InFlight, pooled_session
from .redact import redact_url
from .shared import Lease, SharedClients, fingerprint, lease

if TYPE_CHECKING:
    from . import ReplicaURL

TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds per request."""
RETRY_SECONDS = 5.0
"""Total time the SDK may spend retrying one call (the replica retries above it)."""


class GCSStorage:
    """Read-only client of a Litestream GCS replica."""

    local = False

    def __init__(self, bucket: str, path: str = "", *, endpoint: str | None = None,
                 client: Any = None, page_size: int = 1000, clients: SharedClients | None = None) -> None:
        """`client` is used as given and closed with this storage; otherwise it
        comes from `clients` (shared per endpoint and credentials) or is this
        storage's own."""
        self.bucket_name = bucket
        self.path = path.strip("/")
        self.endpoint = endpoint or _emulator_host()
        self.page_size = page_size
        self._retry = DEFAULT_RETRY.with_timeout(RETRY_SECONDS)
        base = f"gs://{bucket}/{self.path}" if self.path else f"gs://{bucket}"
        self.url = redact_url(base + (f"?endpoint={endpoint}" if endpoint else ""))
        self._calls = InFlight(self.url)
        self._lease: Lease[Any]
        if client is not None:
            self._lease = Lease.own(client, _close_client)
        else:
            # Application default credentials and the project come from GOOGLE_*/CLOUDSDK_* settings.
            key = ("gs", self.endpoint, fingerprint(env=("GOOGLE_", "GCLOUD_", "CLOUDSDK_")))
            self._lease = lease(clients, key, self._make_client, _close_client)
        self._client = self._lease.client
        self._bucket = self._client.bucket(bucket)

    @classmethod
    def from_url(cls, u: ReplicaURL, clients: SharedClients | None = None) -> GCSStorage:
        assert u.bucket is not None
        return cls(u.bucket, u.path, endpoint=u.endpoint, clients=clients)

    def _make_client(self) -> Any:
        try:
            if self.endpoint:
                client = gcs.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or "lsvfs",
                                    credentials=AnonymousCredentials(),
                                    client_options={"api_endpoint": self.endpoint})
            else:
                client = gcs.Client()
        except auth_exc.DefaultCredentialsError as e:
            raise StorageError(
                f"{self.url}: no usable Google credentials (application default credentials: set "
                "GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`): "
                f"{redact_url(str(e).splitlines()[0] if str(e) else type(e).__name__)}"
            ) from e
        except Exception as e:  # noqa: BLE001 - translated
            raise self._error(e, "connect", self.path) from e
        pooled_session(client._http)  # widen the pool of the session the client already owns
        return client

    def __repr__(self) -> str:
        return f"GCSStorage({self.url!r})"

    def object_name(self, info: FileInfo) -> str:
        return level_dir(self.path, info.level, "ltx") + format_filename(info.min_txid, info.max_txid)

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        """The whole level, filtered to min_txid >= `min_txid` here (Litestream #1456)."""
        prefix = level_dir(self.path, level, "ltx")
        try:
            with self._calls.call():
                blobs = self._client.list_blobs(self._bucket, prefix=prefix, page_size=self.page_size,
                                                timeout=TIMEOUT, retry=self._retry)
                entries = [(b.name[len(prefix):], int(b.size or 0), b.updated) for b in blobs]
        except Exception as e:  # noqa: BLE001 - translated, never swallowed
            raise self._error(e, "list", prefix) from e
        return infos_from_names(level, entries, min_txid)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset` by one ranged GET."""
        check_range(offset, length)
        if length == 0:
            return b""
        data = self._get(info, offset, offset + length - 1)
        return exact(data, info, self._where(self.object_name(info)), offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        return exact(self._get(info, None, None), info, self._where(self.object_name(info)))

    def _get(self, info: FileInfo, start: int | None, end: int | None) -> bytes:
        name = self.object_name(info)
        try:
            with self._calls.call():
                blob = self._bucket.blob(name)
                return bytes(blob.download_as_bytes(start=start, end=end, timeout=TIMEOUT, retry=self._retry,
                                                    checksum=None if start is not None else "auto",
                                                    single_shot_download=True))
        except Exception as e:  # noqa: BLE001 - translated, never swallowed
            op = "get" if start is None else f"get bytes={start}-{end}"
            raise self._error(e, op, name) from e

    def _where(self, name: str) -> str:
        return f"gs://{self.bucket_name}/{name}"

    def _error(self, e: BaseException, op: str, name: str) -> StorageError:
        where = self._where(name)
        if isinstance(e, StorageError):
            return e
        if self._calls.closed:  # the cut of close() ended the request
            return StorageError(f"{where}: {op} failed: storage closed")
        if isinstance(e, gexc.NotFound):
            msg = str(getattr(e, "message", "") or e).lower()
            if op == "list" or "bucket does not exist" in msg or "no such bucket" in msg:
                return StorageError(f"{where}: {op} failed: bucket {self.bucket_name!r} does not exist")
            return MissingFileError(f"{where}: {op} failed: object not found")
        if isinstance(e, (gexc.Forbidden, gexc.Unauthorized)):
            return StorageError(f"{where}: {op} failed: access denied (check the Google credentials and "
                                f"the bucket's IAM): {redact_url(str(getattr(e, 'message', e)))}")
        if isinstance(e, (auth_exc.DefaultCredentialsError, auth_exc.RefreshError)):
            return StorageError(f"{where}: {op} failed: Google credentials unusable: {redact_url(str(e))}")
        if isinstance(e, (gexc.RetryError, requests.ConnectionError)):
            cause = e.cause if isinstance(e, gexc.RetryError) and e.cause is not None else e
            return StorageError(f"{where}: {op} failed: endpoint unreachable "
                                f"({self.endpoint or 'storage.googleapis.com'}): {type(cause).__name__}")
        if isinstance(e, requests.Timeout):
            return StorageError(f"{where}: {op} failed: timed out talking to "
                                f"{self.endpoint or 'storage.googleapis.com'}")
        if isinstance(e, gexc.GoogleAPICallError):
            return StorageError(f"{where}: {op} failed: HTTP {e.code}: {redact_url(str(e.message))}")
        return StorageError(f"{where}: {op} failed: {type(e).__name__}: {redact_url(str(e))}")

    def close(self) -> None:
        """End this storage's requests in flight (never those of others sharing
        the client), then let go of the client; the last storage on it closes it."""
        self._calls.cut()
        self._lease.close()


def _close_client(client: Any) -> None:
    client.close()


def _emulator_host() -> str | None:
    """STORAGE_EMULATOR_HOST as an endpoint URL (it may be a bare host:port)."""
    v = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if not v:
        return None
    return v if "://" in v else f"http://{v}"
