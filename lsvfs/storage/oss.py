"""Alibaba Cloud OSS replicas: key `<path>/<level:04x>/<min>-<max>.ltx`, as S3.

OSS speaks the S3 API (V4 signatures, ranged GETs, ListObjectsV2), so an OSS
replica is read by our S3 client (s3_client.py; extra `lsvfs[oss]` adds
nothing beyond the base install) pointed at the OSS endpoint: one client, one set of
error messages, one tested code path, and no extra dependency.

Endpoint: `?endpoint=` or `https://oss-<region>.aliyuncs.com` (region from
`?region=` or a `bucket.oss-<region>.aliyuncs.com` host). Credentials, in
order: OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET, LITESTREAM_ACCESS_KEY_ID /
LITESTREAM_SECRET_ACCESS_KEY, then the AWS sources (s3_credentials.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import StorageError
from .s3 import ClientKey, S3Storage, litestream_credentials
from .s3_client import S3Config
from .shared import SharedClients

if TYPE_CHECKING:
    from . import ReplicaURL

DEFAULT_REGION = "cn-hangzhou"


class OSSStorage(S3Storage):
    """An S3Storage that names itself oss:// and talks to an OSS endpoint."""

    scheme = "oss"

    @staticmethod
    def env_credentials() -> tuple[str, str] | None:
        return oss_credentials()

    def default_region(self) -> str:
        return DEFAULT_REGION  # never AWS's configured one

    def client_endpoint(self, region: str) -> str | None:
        return self.endpoint or f"https://oss-{region}.aliyuncs.com"

    def client_config(self, key: ClientKey, region: str) -> S3Config:
        # Custom endpoints (tests, proxies) get path style like Litestream's S3; OSS itself wants virtual hosts.
        # The client sends no flexible-checksum headers, which OSS rejects.
        return S3Config(
            region=region, endpoint=self.client_endpoint(region), path_style=key.path_style,
            virtual_hosted=not key.path_style, skip_verify=key.skip_verify, connect_timeout=key.connect_timeout,
            read_timeout=key.read_timeout, max_attempts=key.max_attempts,
            max_pool_connections=key.max_pool_connections)


def oss_credentials(env: dict[str, str] | None = None) -> tuple[str, str] | None:
    """OSS_ACCESS_KEY_ID/SECRET, else the LITESTREAM_* pair, else None (the AWS sources)."""
    env = dict(os.environ) if env is None else env
    key_id, secret = env.get("OSS_ACCESS_KEY_ID"), env.get("OSS_ACCESS_KEY_SECRET")
    if key_id or secret:
        if not (key_id and secret):
            raise StorageError("incomplete OSS credentials: set both OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET")
        return key_id, secret
    return litestream_credentials(env)


def open_oss(u: ReplicaURL, clients: SharedClients | None = None) -> OSSStorage:
    assert u.bucket is not None
    return OSSStorage(u.bucket, u.path, endpoint=u.endpoint, region=u.region,
                      force_path_style=u.force_path_style, skip_verify=u.skip_verify, clients=clients)
