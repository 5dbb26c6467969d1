"""Where a test replica lives, per backend: a fresh bucket/container/directory on
the session's server, the URL lsvfs opens, and what `litestream replicate`
needs to write there (its URL, extra YAML keys, environment).

Every backend here is written by the real `litestream replicate` 0.5.17:
tests/test_backends.py::test_litestream_writes_the_documented_layout checks
the object names it produced against `lsvfs.storage.base.level_dir`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from servers import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    NATS_PASSWORD,
    NATS_TOKEN,
    NATS_USER,
    SFTP_PASSWORD,
    SFTP_USER,
    WEBDAV_PASSWORD,
    WEBDAV_USER,
)

BACKENDS = ("gcs", "azure", "sftp", "webdav", "nats", "oss")
"""The backends of issue 9 (file and s3 have their own fixtures)."""

OSS_KEY_ID = "oss-test-key-id"
OSS_KEY_SECRET = "oss-test-key-secret"


@dataclass
class ReplicaTarget:
    """One fresh replica location on a running server."""

    kind: str
    lsvfs_url: str
    litestream_url: str
    layout_root: str
    """Where `ltx/…` (or `0000/…`) starts in `names()`: the path prefix, or ""."""
    names: Callable[[], list[str]]
    """Every object/file name under the location, relative, '/'-separated."""
    put: Callable[[str, bytes], None]
    """Store bytes under a relative name (for hand-made replicas)."""
    litestream_options: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    """Credentials that appear in lsvfs_url and must never be shown."""


def _walk(root: Any) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def make_target(kind: str, server: Any) -> ReplicaTarget:
    """A fresh location on `server` (the session's server of `kind`)."""
    if kind == "gcs":
        bucket = server.create_bucket()
        return ReplicaTarget(
            kind, f"gs://{bucket}/db?endpoint={server.endpoint}", f"gs://{bucket}/db", "db/",
            names=lambda: server.names(bucket), put=lambda n, d: server.put(bucket, "db/" + n, d),
            env={"STORAGE_EMULATOR_HOST": server.endpoint},
        )
    if kind == "azure":
        container = server.create_container()
        return ReplicaTarget(
            kind, f"abs://{AZURITE_ACCOUNT}@{container}/db?endpoint={server.endpoint}&account-key="
                  + AZURITE_KEY.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D"),
            f"abs://{AZURITE_ACCOUNT}@{container}/db", "db/",
            names=lambda: server.names(container), put=lambda n, d: server.put(container, "db/" + n, d),
            litestream_options={"endpoint": server.endpoint},
            env={"LITESTREAM_AZURE_ACCOUNT_KEY": AZURITE_KEY}, secrets=(AZURITE_KEY,),
        )
    if kind == "sftp":
        d = server.new_dir()
        root = server.root / d.lstrip("/")
        base = f"sftp://{SFTP_USER}:{SFTP_PASSWORD}@127.0.0.1:{server.port}{d}"

        def put_sftp(n: str, data: bytes) -> None:
            (root / n).parent.mkdir(parents=True, exist_ok=True)
            (root / n).write_bytes(data)

        return ReplicaTarget(kind, f"{base}?known_hosts={server.known_hosts}", base, "",
                             names=lambda: _walk(root), put=put_sftp, secrets=(SFTP_PASSWORD,),
                             litestream_options={"host-key": server.host_public_key})
    if kind == "webdav":
        d = server.new_dir()
        root = server.root / d
        url = f"webdav://{WEBDAV_USER}:{WEBDAV_PASSWORD}@127.0.0.1:{server.port}/{d}"

        def put_dav(n: str, data: bytes) -> None:
            (root / n).parent.mkdir(parents=True, exist_ok=True)
            (root / n).write_bytes(data)

        return ReplicaTarget(kind, url, url, "", names=lambda: _walk(root), put=put_dav, secrets=(WEBDAV_PASSWORD,))
    if kind == "nats":
        bucket = server.create_bucket()
        return ReplicaTarget(
            kind, f"nats://{NATS_USER}:{NATS_PASSWORD}@127.0.0.1:{server.port}/{bucket}",
            f"nats://127.0.0.1:{server.port}/{bucket}", "",
            names=lambda: server.names(bucket), put=lambda n, d: server.put(bucket, n, d),
            litestream_options={"username": NATS_USER, "password": NATS_PASSWORD}, secrets=(NATS_PASSWORD,),
        )
    if kind == "oss":
        moto, gateway = server
        bucket = moto.create_bucket("lsvfs-oss")
        return ReplicaTarget(
            kind, f"oss://{bucket}/db?endpoint={gateway.endpoint}&region=us-east-1", f"oss://{bucket}/db", "db/",
            names=lambda: moto.keys(bucket), put=lambda n, d: moto.client().put_object(Bucket=bucket, Key="db/" + n, Body=d),
            litestream_options={"endpoint": gateway.endpoint, "region": "us-east-1",
                                "access-key-id": OSS_KEY_ID, "secret-access-key": OSS_KEY_SECRET},
        )
    raise ValueError(f"unknown backend {kind!r}")


def webdavs_target(server: Any) -> ReplicaTarget:
    """A fresh directory on the HTTPS WebDAV server (conftest `webdavs_server`): lsvfs names the
    CA with `?ca=`, Litestream (Go) trusts it through SSL_CERT_FILE."""
    d = server.new_dir()
    root = server.root / d
    url = f"webdavs://{WEBDAV_USER}:{WEBDAV_PASSWORD}@127.0.0.1:{server.port}/{d}"

    def put(n: str, data: bytes) -> None:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(data)

    return ReplicaTarget("webdav", f"{url}?ca={server.tls.ca}", url, "", names=lambda: _walk(root), put=put,
                         env={"SSL_CERT_FILE": str(server.tls.ca)}, secrets=(WEBDAV_PASSWORD,))


def nats_token_target(server: Any) -> ReplicaTarget:
    """A fresh bucket on the token-auth NATS server (conftest `nats_token_server`)."""
    bucket = server.create_bucket()
    return ReplicaTarget(
        "nats", f"nats://127.0.0.1:{server.port}/{bucket}?token={NATS_TOKEN}",
        f"nats://127.0.0.1:{server.port}/{bucket}", "",
        names=lambda: server.names(bucket), put=lambda n, d: server.put(bucket, n, d),
        litestream_options={"token": NATS_TOKEN}, secrets=(NATS_TOKEN,),
    )


def lsvfs_env(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """What the test process needs in its environment for `kind` (OSS keys; no stray Azure/GCS vars)."""
    for var in ("STORAGE_EMULATOR_HOST", "LITESTREAM_AZURE_ACCOUNT_KEY", "LITESTREAM_AZURE_SAS_TOKEN",
                "LITESTREAM_WEBDAV_USERNAME", "LITESTREAM_WEBDAV_PASSWORD", "OSS_ACCESS_KEY_ID",
                "OSS_ACCESS_KEY_SECRET"):
        monkeypatch.delenv(var, raising=False)
    if kind == "oss":
        monkeypatch.setenv("OSS_ACCESS_KEY_ID", OSS_KEY_ID)
        monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", OSS_KEY_SECRET)
    # google-auth must never probe a metadata server off this machine.
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
