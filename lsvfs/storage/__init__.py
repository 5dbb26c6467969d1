"""Replica storage: parse a replica URL and open a client for it.

Accepted forms (the same URLs Litestream takes):

- ``file:///abs/path`` or a plain path (relative paths are made absolute);
- ``s3://bucket/path?endpoint=URL&region=R&force-path-style=true&skip-verify=true``;
- ``gs://bucket/path[?endpoint=URL]``;
- ``abs://[account@]container/path[?endpoint=URL]``;
- ``sftp://user[:password]@host[:port]/path[?key=FILE&known_hosts=FILE]``;
- ``webdav://`` / ``webdavs://[user[:password]@]host[:port]/path[?ca=FILE&skip-verify=true]``;
- ``nats://[user[:password]@]host[:port]/bucket``;
- ``oss://bucket/path[?endpoint=URL&region=R]``.

URL parsing lives here only; each backend module gets a parsed `ReplicaURL`.
Every URL shown in an error goes through `redact_url` first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import MissingExtraError, URLError
from .base import (
    LAYOUTS,
    LEVELS,
    SNAPSHOT_LEVEL,
    FileInfo,
    StorageClient,
    check_level,
    format_filename,
    level_dir,
    parse_filename,
)
from .redact import RedactingFilter, redact_url, scrub
from .shared import SharedClients

__all__ = [
    "LEVELS",
    "SNAPSHOT_LEVEL",
    "LAYOUTS",
    "RedactingFilter",
    "FileInfo",
    "SharedClients",
    "ReplicaURL",
    "StorageClient",
    "check_level",
    "format_filename",
    "level_dir",
    "open_storage",
    "parse_filename",
    "parse_url",
    "redact_url",
    "scrub",
]

SUPPORTED = (
    "file:///absolute/path, a plain directory path, s3://bucket/path, gs://bucket/path, "
    "abs://[account@]container/path, sftp://user@host[:port]/path, webdav[s]://host[:port]/path, "
    "nats://host[:port]/bucket or oss://bucket/path"
)

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
    """A parsed replica URL. `path` is a directory (file, sftp, webdav) or key
    prefix (s3, oss, gs, abs); `bucket` is the bucket, container (abs) or NATS
    object-store bucket. Hashable: the replica registry keys on it. Secrets
    (password, params) are left out of repr()."""

    scheme: str
    path: str
    bucket: str | None = None
    endpoint: str | None = None
    region: str | None = None
    force_path_style: bool | None = None
    skip_verify: bool = False
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    params: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def param(self, name: str, default: str | None = None) -> str | None:
        """A backend-specific URL parameter (e.g. sftp `key`, abs `sas-token`)."""
        return dict(self.params).get(name, default)


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
    if m is None or (m.group(2) == ":" and scheme not in ("file", *_PARSERS)):
        return ReplicaURL("file", os.path.abspath(os.path.expanduser(url)))
    if scheme == "file":
        return _parse_file(url)
    parser = _PARSERS.get(scheme)
    if parser is None:
        raise URLError(
            f"unsupported replica URL scheme {scheme + '://'!r} in {redact_url(url)!r}; use {SUPPORTED}"
        )
    if not url.lower().startswith(scheme + "://"):
        raise URLError(f"malformed {scheme} URL {redact_url(url)!r}; use {SUPPORTED}")
    return parser(url)


def _parse_file(url: str) -> ReplicaURL:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise URLError(
            f"file URL {redact_url(url)!r} has a host ({parts.netloc!r}); use file:///absolute/path "
            "(three slashes) or a plain path"
        )
    if parts.query:
        raise URLError(f"file URL {redact_url(url)!r} takes no query parameters")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise URLError(f"file URL {redact_url(url)!r} needs an absolute path: file:///absolute/path")
    return ReplicaURL("file", os.path.normpath(path))


def _parse_s3(url: str) -> ReplicaURL:
    parts = urlsplit(url)
    if not url.lower().startswith("s3://"):
        raise URLError(f"malformed S3 URL {redact_url(url)!r}; use s3://bucket/path")
    host = parts.netloc
    if "@" in host:
        raise URLError(f"S3 URL {redact_url(url)!r} must not carry credentials; use the environment")
    region: str | None = None
    aws = _AWS_HOST.match(host)
    bucket = aws.group(1) if aws else host
    if aws and aws.group(2):
        region = aws.group(2)
    if not bucket:
        raise URLError(f"S3 URL {redact_url(url)!r} has no bucket; use s3://bucket/path")
    if not _BUCKET.match(bucket):
        raise URLError(f"S3 URL {redact_url(url)!r}: invalid bucket name {bucket!r}")
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
                f"unknown S3 URL parameter {k!r} in {redact_url(url)!r}; accepted: endpoint, region, "
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
    raise URLError(f"URL {redact_url(url)!r}: {key} must be true or false, got {value!r}")


def _endpoint_with_scheme(endpoint: str) -> str:
    """Like Litestream: a bare host gets http:// when local, https:// otherwise."""
    if "://" in endpoint:
        return endpoint.rstrip("/")
    host = endpoint.split("/")[0].rsplit(":", 1)[0].strip("[]")
    local = host in ("localhost", "::1") or host.startswith("127.") or host.endswith(".localhost")
    return ("http://" if local else "https://") + endpoint.rstrip("/")


# -- the other schemes ------------------------------------------------------

_ACCEPTED: dict[str, tuple[str, ...]] = {
    "gs": ("endpoint",),
    "abs": ("endpoint", "account-key", "sas-token"),
    "sftp": ("key", "known_hosts", "insecure_skip_host_key"),
    "webdav": ("skip-verify", "ca"),
    "nats": ("token", "creds"),
    "oss": ("endpoint", "region", "force-path-style", "skip-verify"),
}
"""URL parameters each scheme takes (lsvfs's own, for reading; Litestream
keeps most of these in its YAML instead)."""

_ALIASES = {"accountKey": "account-key", "sasToken": "sas-token", "knownHosts": "known_hosts",
            "known-hosts": "known_hosts", "insecure-skip-host-key": "insecure_skip_host_key",
            "skipVerify": "skip-verify", "forcePathStyle": "force-path-style"}


def _split(url: str, scheme: str) -> tuple[object, dict[str, str]]:
    """urlsplit plus the query as a dict, checked against the scheme's parameters."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise URLError(f"malformed {scheme} URL {redact_url(url)!r}: {e}") from None
    key = "webdav" if scheme == "webdavs" else scheme
    accepted = _ACCEPTED[key]
    query: dict[str, str] = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        k = _ALIASES.get(k, k)
        if k in _IGNORED_PARAMS:
            continue
        if k not in accepted:
            raise URLError(
                f"unknown {scheme} URL parameter {k!r} in {redact_url(url)!r}; accepted: "
                + (", ".join(accepted) or "none")
            )
        query[k] = v
    return parts, query


def _parse_gs(url: str) -> ReplicaURL:
    parts, q = _split(url, "gs")
    bucket = parts.hostname  # type: ignore[attr-defined]
    if not bucket or "@" in parts.netloc:  # type: ignore[attr-defined]
        raise URLError(f"GCS URL {redact_url(url)!r} needs a bucket and no credentials; use gs://bucket/path")
    endpoint = _endpoint_with_scheme(q["endpoint"]) if q.get("endpoint") else None
    return ReplicaURL("gs", unquote(parts.path).strip("/"), bucket=bucket, endpoint=endpoint)  # type: ignore[attr-defined]


def _parse_abs(url: str) -> ReplicaURL:
    parts, q = _split(url, "abs")
    container = parts.hostname  # type: ignore[attr-defined]
    if not container:
        raise URLError(f"Azure URL {redact_url(url)!r} has no container; use abs://[account@]container/path")
    if parts.password:  # type: ignore[attr-defined]
        raise URLError(
            f"Azure URL {redact_url(url)!r} must not carry a password; set LITESTREAM_AZURE_ACCOUNT_KEY "
            "or LITESTREAM_AZURE_SAS_TOKEN"
        )
    endpoint = _endpoint_with_scheme(q["endpoint"]) if q.get("endpoint") else None
    params = tuple(sorted((k, v) for k, v in q.items() if k != "endpoint"))
    return ReplicaURL("abs", unquote(parts.path).strip("/"), bucket=container, endpoint=endpoint,  # type: ignore[attr-defined]
                      user=unquote(parts.username) if parts.username else None,  # type: ignore[attr-defined]
                      params=params)


def _host_parts(url: str, scheme: str, parts: object, default_port: int | None) -> tuple[str, int | None]:
    host = parts.hostname  # type: ignore[attr-defined]
    if not host:
        raise URLError(f"{scheme} URL {redact_url(url)!r} has no host")
    return host, parts.port or default_port  # type: ignore[attr-defined]


def _userinfo(parts: object) -> tuple[str | None, str | None]:
    user = parts.username  # type: ignore[attr-defined]
    pw = parts.password  # type: ignore[attr-defined]
    return (unquote(user) if user else None), (unquote(pw) if pw is not None else None)


def _parse_sftp(url: str) -> ReplicaURL:
    parts, q = _split(url, "sftp")
    host, port = _host_parts(url, "sftp", parts, 22)
    user, pw = _userinfo(parts)
    if not user:
        raise URLError(f"SFTP URL {redact_url(url)!r} needs a user: sftp://user@host/path")
    if "insecure_skip_host_key" in q:
        q["insecure_skip_host_key"] = "true" if _parse_bool(url, "insecure_skip_host_key",
                                                            q["insecure_skip_host_key"]) else "false"
    path = unquote(parts.path) or "/"  # type: ignore[attr-defined]
    return ReplicaURL("sftp", path.rstrip("/") or "/", host=host, port=port, user=user, password=pw,
                      params=tuple(sorted(q.items())))


def _parse_webdav(url: str) -> ReplicaURL:
    scheme = "webdavs" if url.lower().startswith("webdavs:") else "webdav"
    parts, q = _split(url, scheme)
    host, port = _host_parts(url, scheme, parts, None)
    user, pw = _userinfo(parts)
    skip = _parse_bool(url, "skip-verify", q["skip-verify"]) if "skip-verify" in q else False
    params = tuple(sorted((k, v) for k, v in q.items() if k != "skip-verify"))
    return ReplicaURL(scheme, unquote(parts.path).strip("/"), host=host, port=port, user=user,  # type: ignore[attr-defined]
                      password=pw, skip_verify=skip, params=params)


def _parse_nats(url: str) -> ReplicaURL:
    parts, q = _split(url, "nats")
    host, port = _host_parts(url, "nats", parts, 4222)
    user, pw = _userinfo(parts)
    bucket = unquote(parts.path).strip("/")  # type: ignore[attr-defined]
    if not bucket or "/" in bucket:
        raise URLError(f"NATS URL {redact_url(url)!r} needs one object-store bucket: nats://host[:port]/bucket")
    return ReplicaURL("nats", "", bucket=bucket, host=host, port=port, user=user, password=pw,
                      params=tuple(sorted(q.items())))


# bucket.oss-<region>.aliyuncs.com (optionally -internal) names bucket and region.
_OSS_HOST = re.compile(r"^(.+)\.oss-([a-z0-9-]+?)(?:-internal)?\.aliyuncs\.com$")


def _parse_oss(url: str) -> ReplicaURL:
    parts, q = _split(url, "oss")
    if "@" in parts.netloc:  # type: ignore[attr-defined]
        raise URLError(f"OSS URL {redact_url(url)!r} must not carry credentials; use the environment")
    host = parts.hostname or ""  # type: ignore[attr-defined]
    region: str | None = None
    m = _OSS_HOST.match(host)
    bucket = m.group(1) if m else host
    if m:
        region = m.group(2)
    if not bucket or not _BUCKET.match(bucket):
        raise URLError(f"OSS URL {redact_url(url)!r}: invalid or missing bucket; use oss://bucket/path")
    region = q.get("region") or region
    endpoint = _endpoint_with_scheme(q["endpoint"]) if q.get("endpoint") else None
    fps = _parse_bool(url, "force-path-style", q["force-path-style"]) if "force-path-style" in q else None
    skip = _parse_bool(url, "skip-verify", q["skip-verify"]) if "skip-verify" in q else False
    return ReplicaURL("oss", unquote(parts.path).strip("/"), bucket=bucket, endpoint=endpoint,  # type: ignore[attr-defined]
                      region=region, force_path_style=fps, skip_verify=skip)


_PARSERS = {
    "s3": _parse_s3, "gs": _parse_gs, "abs": _parse_abs, "sftp": _parse_sftp,
    "webdav": _parse_webdav, "webdavs": _parse_webdav, "nats": _parse_nats, "oss": _parse_oss,
}

_EXTRAS = {"gs": "gcs", "abs": "azure", "sftp": "sftp", "webdav": "webdav", "webdavs": "webdav",
           "nats": "nats", "oss": "oss"}
"""The pip extra that brings each scheme's client library."""


def missing_extra(scheme: str, exc: ImportError) -> MissingExtraError:
    """The one-line error for a scheme whose client library is not installed."""
    extra = _EXTRAS.get(scheme, scheme)
    return MissingExtraError(
        f"{scheme}:// replicas need the {extra!r} extra: pip install \"lsvfs[{extra}]\" "
        f"(missing module {exc.name or exc})"
    )


def open_storage(url: str | os.PathLike[str], clients: SharedClients | None = None) -> StorageClient:
    """A storage client for `url` (see the module docstring for the forms).

    With `clients`, the expensive part (the S3, GCS or Azure client, the
    WebDAV session) is shared with every other storage opened through it on
    the same endpoint and credentials, and closed with the last of them;
    without, it is this storage's own. SFTP and NATS storages always hold
    their own connection.
    """
    u = parse_url(url)
    if u.scheme == "file":
        from .file import FileStorage

        return FileStorage(u.path)
    if u.scheme != "s3":
        return _open_other(u, clients)
    from .s3 import S3Storage

    assert u.bucket is not None
    return S3Storage(
        u.bucket,
        u.path,
        endpoint=u.endpoint,
        region=u.region,
        force_path_style=u.force_path_style,
        skip_verify=u.skip_verify,
        clients=clients,
    )


def _open_other(u: ReplicaURL, clients: SharedClients | None) -> StorageClient:
    """Import the scheme's module (its SDK is an optional extra) and open it."""
    try:
        opener = _opener(u.scheme)
    except ImportError as e:
        raise missing_extra(u.scheme, e) from None
    return opener(u, clients)


def _opener(scheme: str) -> Callable[[ReplicaURL, SharedClients | None], StorageClient]:
    """The scheme's from_url; SFTP and NATS keep a connection of their own per storage."""
    if scheme == "gs":
        from .gcs import GCSStorage

        return GCSStorage.from_url
    if scheme == "abs":
        from .azure import AzureStorage

        return AzureStorage.from_url
    if scheme in ("webdav", "webdavs"):
        from .webdav import WebDAVStorage

        return WebDAVStorage.from_url
    if scheme == "oss":
        from .oss import open_oss

        return open_oss
    if scheme == "sftp":
        from .sftp import SFTPStorage

        return lambda u, _: SFTPStorage.from_url(u)
    if scheme == "nats":
        from .nats import NATSStorage

        return lambda u, _: NATSStorage.from_url(u)
    raise URLError(f"no storage for scheme {scheme!r}")  # pragma: no cover - parse_url knows every scheme
