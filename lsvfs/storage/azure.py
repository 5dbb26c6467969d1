"""Azure Blob Storage replicas: blob `<path>/ltx/<level>/<min>-<max>.ltx`.

Uses the official `azure-storage-blob` client (extra `lsvfs[azure]`), one
container client per account, container and credentials, shared by every
storage in that container (lsvfs/storage/shared.py) and every thread, over a
widened pool.
Credentials, in Litestream's order: an account key (`?account-key=` or
LITESTREAM_AZURE_ACCOUNT_KEY), a SAS token (`?sas-token=` or
LITESTREAM_AZURE_SAS_TOKEN), then the Azure default credential chain, which
needs `azure-identity` (extra `lsvfs[azure]` brings it; without it the error
says so). `?endpoint=` points at Azurite or a sovereign cloud.

Listing reads the whole level and filters by TXID here (Litestream #1456).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import ContainerClient, LinearRetry

from ..errors import MissingFileError, StorageError
from .base import FileInfo, check_range, exact, format_filename, infos_from_names, level_dir
from .http import InFlight, pooled_session
from .redact import scrub
from .shared import Lease, SharedClients, fingerprint, lease

if TYPE_CHECKING:
    from . import ReplicaURL

CONNECT_TIMEOUT = 5
READ_TIMEOUT = 30
RETRIES = 2
"""SDK retries per call (the replica retries above it)."""
BODY_CHUNK = 256 << 10
"""Bytes per step when reading a response body. azure-core's default, 4 KiB,
spends much of the client's CPU of a cold scan in Python per-chunk overhead
(bench/README.md)."""


class AzureStorage:
    """Read-only client of a Litestream Azure Blob replica."""

    local = False

    def __init__(self, container: str, path: str = "", *, account: str | None = None,
                 endpoint: str | None = None, account_key: str | None = None,
                 sas_token: str | None = None, credential: Any = None, page_size: int = 1000,
                 clients: SharedClients | None = None) -> None:
        """A `credential` object given is this storage's own (its client is not
        shared); otherwise the container client comes from `clients`, shared per
        account URL, container and credentials, or is this storage's own."""
        self.container = container
        self.path = path.strip("/")
        self.account = account or os.environ.get("LITESTREAM_AZURE_ACCOUNT_NAME") or None
        self.page_size = page_size
        account_key = account_key or os.environ.get("LITESTREAM_AZURE_ACCOUNT_KEY") or None
        sas_token = (sas_token or os.environ.get("LITESTREAM_AZURE_SAS_TOKEN") or "").lstrip("?") or None
        self._secrets = (account_key, sas_token)
        if endpoint:
            self.account_url = endpoint.rstrip("/")
        elif self.account:
            self.account_url = f"https://{self.account}.blob.core.windows.net"
        else:
            raise StorageError(
                f"abs://{container}/{self.path}: no storage account: use abs://ACCOUNT@{container}/path, "
                "LITESTREAM_AZURE_ACCOUNT_NAME or ?endpoint="
            )
        acct = f"{self.account}@" if self.account else ""
        self.url = f"abs://{acct}{container}/{self.path}" + (f"?endpoint={endpoint}" if endpoint else "")
        self._calls = InFlight(self.url)
        self._lease: Lease[Any]
        if credential is not None:
            self._lease = Lease.own(self._make_client(credential), _close_client)
        else:
            # Without a key or token the default chain reads AZURE_* settings.
            key = ("abs", self.account_url, container, self.account,
                   fingerprint(account_key, sas_token, env=("AZURE_",)))
            self._lease = lease(clients, key, lambda: self._make_client(self._credential(account_key, sas_token)),
                                _close_client)
        self._client = self._lease.client

    def _make_client(self, credential: Any) -> ContainerClient:
        transport = RequestsTransport(session=pooled_session(), session_owner=True,
                                      connection_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                                      connection_data_block_size=BODY_CHUNK)
        # The storage SDK's own default waits 15 s, then 45 s, between tries: far too long
        # under a replica that retries above it.
        retry = LinearRetry(backoff=0.3, random_jitter_range=0.1, retry_total=RETRIES)  # type: ignore[arg-type]
        return ContainerClient(self.account_url, self.container, credential=credential, transport=transport,
                               retry_policy=retry, logging_enable=False)

    @classmethod
    def from_url(cls, u: ReplicaURL, clients: SharedClients | None = None) -> AzureStorage:
        assert u.bucket is not None
        return cls(u.bucket, u.path, account=u.user, endpoint=u.endpoint,
                   account_key=u.param("account-key"), sas_token=u.param("sas-token"), clients=clients)

    def _credential(self, account_key: str | None, sas_token: str | None) -> Any:
        if account_key:
            if not self.account:
                raise StorageError(f"{self.url}: an account key needs the account name: abs://ACCOUNT@container/path")
            return AzureNamedKeyCredential(self.account, account_key)
        if sas_token:
            return AzureSasCredential(sas_token)
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise StorageError(
                f"{self.url}: no Azure credentials: set LITESTREAM_AZURE_ACCOUNT_KEY or "
                "LITESTREAM_AZURE_SAS_TOKEN, or pip install azure-identity for the default credential chain"
            ) from None
        return DefaultAzureCredential()

    def __repr__(self) -> str:
        return f"AzureStorage({self.url!r})"

    def blob_name(self, info: FileInfo) -> str:
        return level_dir(self.path, info.level, "ltx") + format_filename(info.min_txid, info.max_txid)

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        """The whole level, filtered to min_txid >= `min_txid` here (Litestream #1456)."""
        prefix = level_dir(self.path, level, "ltx")
        try:
            with self._calls.call():
                blobs = self._client.list_blobs(name_starts_with=prefix, results_per_page=self.page_size)
                entries = [(b.name[len(prefix):], int(b.size or 0), b.last_modified) for b in blobs]
        except Exception as e:  # noqa: BLE001 - translated, never swallowed
            raise self._error(e, "list", prefix) from e
        return infos_from_names(level, entries, min_txid)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset` by one ranged GET."""
        check_range(offset, length)
        if length == 0:
            return b""
        return exact(self._get(info, offset, length), info, self._where(self.blob_name(info)), offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        return exact(self._get(info, None, None), info, self._where(self.blob_name(info)))

    def _get(self, info: FileInfo, offset: int | None, length: int | None) -> bytes:
        name = self.blob_name(info)
        try:
            with self._calls.call():
                stream = self._client.download_blob(name, offset=offset, length=length, max_concurrency=1)
                return bytes(stream.readall())
        except Exception as e:  # noqa: BLE001 - translated, never swallowed
            op = "get" if offset is None else f"get bytes={offset}-{offset + (length or 0) - 1}"
            raise self._error(e, op, name) from e

    def _where(self, name: str) -> str:
        return f"abs://{self.container}/{name}"

    def _error(self, e: BaseException, op: str, name: str) -> StorageError:
        where = self._where(name)
        if isinstance(e, StorageError):
            return e
        if self._calls.closed:  # the cut of close() ended the request
            return StorageError(f"{where}: {op} failed: storage closed")
        if isinstance(e, ResourceNotFoundError):
            code = str(getattr(e, "error_code", "") or "")
            if code == "ContainerNotFound" or op == "list":
                return StorageError(f"{where}: {op} failed: container {self.container!r} does not exist")
            return MissingFileError(f"{where}: {op} failed: blob not found")
        if isinstance(e, ClientAuthenticationError):
            code = str(getattr(e, "error_code", "") or "AuthenticationFailed")
            return StorageError(f"{where}: {op} failed: {code}: access denied (check the account key, "
                                "SAS token or Azure identity)")
        if isinstance(e, HttpResponseError) and e.status_code == 403:
            return StorageError(f"{where}: {op} failed: access denied (check the account key, SAS token "
                                "or Azure identity)")
        if isinstance(e, (ServiceRequestError, ServiceResponseError)):
            return StorageError(f"{where}: {op} failed: endpoint unreachable or connection lost "
                                f"({self.account_url}): {type(e).__name__}")
        if isinstance(e, HttpResponseError):
            code = str(getattr(e, "error_code", "") or f"HTTP {e.status_code}")
            return StorageError(f"{where}: {op} failed: {code}: {scrub(str(e.reason or ''), self._secrets)}")
        return StorageError(f"{where}: {op} failed: {type(e).__name__}: {scrub(str(e), self._secrets)}")

    def close(self) -> None:
        """End this storage's requests in flight (never those of others sharing
        the client), then let go of the client; the last storage on it closes it."""
        self._calls.cut()
        self._lease.close()


def _close_client(client: Any) -> None:
    client.close()
