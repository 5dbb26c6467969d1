"""Replica storage: parse a replica URL and open a client for it.

Accepted forms (the same URLs Litestream takes):

- ``file:///abs/path`` or a plain path (relative paths are made absolute);
- ``s3://bucket/path?endpoint=URL&region=R&force-path-style=true&skip-verify=true``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import URLError
from .base import LEVELS, SNAPSHOT_LEVEL, FileInfo, StorageClient, check_level, format_filename, parse_filename

__all__ = [
    "LEVELS",
    "SNAPSHOT_LEVEL",
    "FileInfo",
    "ReplicaURL",
    "StorageClient",
    "check_level",
    "format_filename",
    "open_storage",
    "parse_filename",
    "parse_url",
]

SUPPORTED = "file:///absolute/path, s3://bucket/path, or a plain directory path"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)(://|:)")
# Litestream reads both spellings of these (kebab in YAML, camelCase in URLs).
_BOOL_PARAMS = {
    "force-path-style": "force_path_style",
    "forcePathStyle": "force_path_style",
    "skip-verify": "skip_verify",
    "skipVerify": "skip_verify",
}
# Write-side options a copied Litestream URL may carry; meaningless for reading.
_IGNORED_PARAMS = {"sign-payload", "signPayload", "require-content-md5", "requireContentMD5"}
# Virtual-hosted AWS names: bucket.s3.amazonaws.com, bucket.s3.<region>.amazonaws.com,
# bucket.s3-<region>.amazonaws.com.
_AWS_HOST = re.compile(r"^(.+)\.s3(?:[.-]([a-z0-9-]+))?\.amazonaws\.com$")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,254}$")


@dataclass(frozen=True)
class ReplicaURL:
    """A parsed replica URL. `path` is a directory (file) or key prefix (s3)."""

    scheme: str
    path: str
    bucket: str | None = None
    endpoint: str | None = None
    region: str | None = None
    force_path_style: bool | None = None
    skip_verify: bool = False


def parse_url(url: str | os.PathLike[str]) -> ReplicaURL:
    """Parse a replica URL or plain path; URLError names the supported forms."""
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url.strip():
        raise URLError(f"empty replica URL; use {SUPPORTED}")
    url = url.strip()
    m = _SCHEME.match(url)
    scheme = m.group(1).lower() if m else ""
    # A colon alone ("dir:v2", "C:\\x") is part of a path unless it is file: or s3:.
    if m is None or (m.group(2) == ":" and scheme not in ("file", "s3")):
        return ReplicaURL("file", os.path.abspath(os.path.expanduser(url)))
    if scheme == "file":
        return _parse_file(url)
    if scheme == "s3":
        return _parse_s3(url)
    raise URLError(f"unsupported replica URL scheme {scheme + '://'!r} in {url!r}; use {SUPPORTED}")


def _parse_file(url: str) -> ReplicaURL:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise URLError(
            f"file URL {url!r} has a host ({parts.netloc!r}); use file:///absolute/path "
            "(three slashes) or a plain path"
        )
    if parts.query:
        raise URLError(f"file URL {url!r} takes no query parameters")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise URLError(f"file URL {url!r} needs an absolute path: file:///absolute/path")
    return ReplicaURL("file", os.path.normpath(path))


def _parse_s3(url: str) -> ReplicaURL:
    parts = urlsplit(url)
    if not url.lower().startswith("s3://"):
        raise URLError(f"malformed S3 URL {url!r}; use s3://bucket/path")
    host = parts.netloc
    if "@" in host:
        raise URLError(f"S3 URL {url!r} must not carry credentials; use the environment")
    region: str | None = None
    aws = _AWS_HOST.match(host)
    bucket = aws.group(1) if aws else host
    if aws and aws.group(2):
        region = aws.group(2)
    if not bucket:
        raise URLError(f"S3 URL {url!r} has no bucket; use s3://bucket/path")
    if not _BUCKET.match(bucket):
        raise URLError(f"S3 URL {url!r}: invalid bucket name {bucket!r}")
    endpoint: str | None = None
    flags: dict[str, bool] = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k == "endpoint":
            endpoint = _endpoint_with_scheme(v) if v else None
        elif k == "region":
            region = v or region
        elif k in _BOOL_PARAMS:
            flags[_BOOL_PARAMS[k]] = _parse_bool(url, k, v)
        elif k in _IGNORED_PARAMS:
            continue
        else:
            raise URLError(
                f"unknown S3 URL parameter {k!r} in {url!r}; accepted: endpoint, region, "
                "force-path-style, skip-verify"
            )
    return ReplicaURL(
        "s3",
        unquote(parts.path).strip("/"),
        bucket=bucket,
        endpoint=endpoint,
        region=region,
        force_path_style=flags.get("force_path_style"),
        skip_verify=flags.get("skip_verify", False),
    )


def _parse_bool(url: str, key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("", "true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise URLError(f"S3 URL {url!r}: {key} must be true or false, got {value!r}")


def _endpoint_with_scheme(endpoint: str) -> str:
    """Like Litestream: a bare host gets http:// when local, https:// otherwise."""
    if "://" in endpoint:
        return endpoint.rstrip("/")
    host = endpoint.split("/")[0].rsplit(":", 1)[0].strip("[]")
    local = host in ("localhost", "::1") or host.startswith("127.") or host.endswith(".localhost")
    return ("http://" if local else "https://") + endpoint.rstrip("/")


def open_storage(url: str | os.PathLike[str]) -> StorageClient:
    """A storage client for `url` (see the module docstring for the forms)."""
    u = parse_url(url)
    if u.scheme == "file":
        from .file import FileStorage

        return FileStorage(u.path)
    from .s3 import S3Storage

    assert u.bucket is not None
    return S3Storage(
        u.bucket,
        u.path,
        endpoint=u.endpoint,
        region=u.region,
        force_path_style=u.force_path_style,
        skip_verify=u.skip_verify,
    )
