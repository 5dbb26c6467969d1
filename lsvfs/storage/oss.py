"""Alibaba Cloud OSS replicas: key `<path>/<level:04x>/<min>-<max>.ltx`, as S3.

OSS speaks the S3 API (V4 signatures, ranged GETs, ListObjectsV2), so an OSS
replica is read by our S3 client (boto3; extra `lsvfs[oss]` adds nothing
beyond the base install) pointed at the OSS endpoint: one client, one set of
error messages, one tested code path, and no extra dependency.

Endpoint: `?endpoint=` or `https://oss-<region>.aliyuncs.com` (region from
`?region=` or a `bucket.oss-<region>.aliyuncs.com` host). Credentials, in
order: OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET, LITESTREAM_ACCESS_KEY_ID /
LITESTREAM_SECRET_ACCESS_KEY, then boto3's chain.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from ..errors import StorageError
from .s3 import CONNECT_TIMEOUT, MAX_ATTEMPTS, MAX_POOL_CONNECTIONS, READ_TIMEOUT, S3Storage, litestream_credentials

if TYPE_CHECKING:
    from . import ReplicaURL

DEFAULT_REGION = "cn-hangzhou"


class OSSStorage(S3Storage):
    """An S3Storage that names itself oss:// and talks to an OSS endpoint."""

    scheme = "oss"


def oss_credentials(env: dict[str, str] | None = None) -> tuple[str, str] | None:
    """OSS_ACCESS_KEY_ID/SECRET, else the LITESTREAM_* pair, else None (boto3's chain)."""
    env = dict(os.environ) if env is None else env
    key_id, secret = env.get("OSS_ACCESS_KEY_ID"), env.get("OSS_ACCESS_KEY_SECRET")
    if key_id or secret:
        if not (key_id and secret):
            raise StorageError("incomplete OSS credentials: set both OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET")
        return key_id, secret
    return litestream_credentials(env)


def open_oss(u: ReplicaURL) -> OSSStorage:
    assert u.bucket is not None
    region = u.region or DEFAULT_REGION
    endpoint = u.endpoint or f"https://oss-{region}.aliyuncs.com"
    # Custom endpoints (tests, proxies) get path style like Litestream's S3; OSS itself wants virtual hosts.
    path_style = (u.endpoint is not None) if u.force_path_style is None else u.force_path_style
    creds = oss_credentials()
    session = boto3.session.Session(aws_access_key_id=creds[0] if creds else None,
                                    aws_secret_access_key=creds[1] if creds else None)
    config = Config(
        connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
        max_pool_connections=MAX_POOL_CONNECTIONS, signature_version="s3v4",
        s3={"addressing_style": "path" if path_style else "virtual"},
        # OSS rejects the flexible-checksum headers newer boto3 adds by default.
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
        user_agent_extra="lsvfs-oss",
    )
    client = session.client("s3", region_name=region, endpoint_url=endpoint, verify=not u.skip_verify,
                            config=config)
    return OSSStorage(u.bucket, u.path, endpoint=u.endpoint, region=u.region, force_path_style=u.force_path_style,
                      skip_verify=u.skip_verify, client=client)
