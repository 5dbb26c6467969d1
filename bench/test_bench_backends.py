"""Every backend next to S3, at the same added network latency.

One real Litestream directory replica (the `small_replica` of replicas.py) is
uploaded, file for file, into each backend's layout on its test server
(moto for S3 and OSS, gcp-storage-emulator, Azurite, asyncssh SFTP, wsgidav,
nats-server). Each server sits behind its own `LatencyProxy` adding the same
one-way delay, and lsvfs opens the replica through the proxy. Measured per
backend, on a fresh Replica each round (so nothing is cached):

- open: `lsvfs.connect()` plus the first query (schema read);
- cold_full_scan: one full table scan on a just-opened connection;
- cold_point_lookups: 200 random primary-key lookups on a just-opened connection.

Each benchmark asserts the rows equal the local SQLite copy's. Run:
    python -m pytest bench/test_bench_backends.py --benchmark-enable
(`LSVFS_BENCH_LATENCY_MS`, default 2, sets the one-way delay; `--benchmark-json` for the raw numbers.)
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import pytest
from latency_proxy import LatencyProxy
from replicas import BenchReplica, bench_dir, benchmarks_enabled, small_replica  # noqa: F401

import lsvfs
from lsvfs.storage.base import LAYOUTS, level_dir

_TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

BACKENDS = ("s3", "gcs", "azure", "sftp", "webdav", "nats", "oss")
OPS = ("open", "cold_full_scan", "cold_point_lookups")
DELAY = float(os.environ.get("LSVFS_BENCH_LATENCY_MS", "2")) / 1000
CACHE_SIZE = 64 << 20
LOOKUPS = 200
SCAN_SQL = "SELECT count(*), sum(length(payload)), max(grp) FROM items"
LOOKUP_SQL = "SELECT id, name, grp, payload FROM items WHERE id = ?"


@dataclass
class Served:
    """One backend holding the replica, behind a latency proxy."""

    url: str
    stop: Callable[[], None]


def _files(rep: BenchReplica) -> list[tuple[int, str, bytes]]:
    root = Path(rep.replica_dir) / "ltx"
    return [(int(d.name), f.name, f.read_bytes()) for d in sorted(root.iterdir()) for f in sorted(d.iterdir())
            if f.name.endswith(".ltx")]


def _serve(kind: str, rep: BenchReplica, scratch_dir: Path) -> Served:
    """Start `kind`'s server, upload the replica in its layout, put a proxy in front."""
    import servers
    from replication import MotoS3

    files = _files(rep)
    layout = LAYOUTS[{"gcs": "gs", "azure": "abs"}.get(kind, kind)]

    def names(path: str) -> list[tuple[str, bytes]]:
        return [(level_dir(path, lvl, layout) + name, data) for lvl, name, data in files]

    if kind in ("s3", "oss"):
        moto = MotoS3().start()
        bucket = moto.create_bucket("bench")
        moto.bulk_put(bucket, names("db"))
        if kind == "s3":
            proxy = LatencyProxy(int(moto.endpoint.rsplit(":", 1)[1]), DELAY)
            url = f"s3://{bucket}/db?endpoint=http://127.0.0.1:{proxy.port}&region=us-east-1&force-path-style=true"
            return Served(url, lambda: (proxy.close(), moto.stop()))
        gw = servers.OSSGateway().start()
        proxy = LatencyProxy(gw.port, DELAY)
        url = f"oss://{bucket}/db?endpoint=http://127.0.0.1:{proxy.port}&region=us-east-1"
        return Served(url, lambda: (proxy.close(), gw.stop(), moto.stop()))
    if kind == "gcs":
        g = servers.GCSEmulator().start()
        bucket = g.create_bucket()
        for n, data in names("db"):
            g.put(bucket, n, data)
        proxy = LatencyProxy(g.port, DELAY)
        return Served(f"gs://{bucket}/db?endpoint=http://127.0.0.1:{proxy.port}", lambda: (proxy.close(), g.stop()))
    if kind == "azure":
        a = servers.Azurite().start()
        container = a.create_container()
        for n, data in names("db"):
            a.put(container, n, data)
        proxy = LatencyProxy(a.port, DELAY)
        key = servers.AZURITE_KEY.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
        url = (f"abs://{servers.AZURITE_ACCOUNT}@{container}/db?endpoint=http://127.0.0.1:{proxy.port}/"
               f"{servers.AZURITE_ACCOUNT}&account-key={key}")
        return Served(url, lambda: (proxy.close(), a.stop()))
    if kind == "sftp":
        s = servers.SFTPServer(scratch_dir / "sftp").start()
        d = s.new_dir()
        for n, data in names(""):
            p = s.root / d.lstrip("/") / n
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        proxy = LatencyProxy(s.port, DELAY)
        kh = scratch_dir / "known_hosts"
        kh.write_text(f"[127.0.0.1]:{proxy.port} {s.host_public_key}\n")
        url = f"sftp://{servers.SFTP_USER}:{servers.SFTP_PASSWORD}@127.0.0.1:{proxy.port}{d}?known_hosts={kh}"
        return Served(url, lambda: (proxy.close(), s.stop()))
    if kind == "webdav":
        w = servers.WebDAVServer(scratch_dir / "dav").start()
        d = w.new_dir()
        for n, data in names(""):
            p = w.root / d / n
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        proxy = LatencyProxy(w.port, DELAY)
        url = f"webdav://{servers.WEBDAV_USER}:{servers.WEBDAV_PASSWORD}@127.0.0.1:{proxy.port}/{d}"
        return Served(url, lambda: (proxy.close(), w.stop()))
    if kind == "nats":
        n_ = servers.NATSServer(scratch_dir / "nats").start()
        bucket = n_.create_bucket()
        for n, data in names(""):
            n_.put(bucket, n, data)
        proxy = LatencyProxy(n_.port, DELAY)
        url = f"nats://{servers.NATS_USER}:{servers.NATS_PASSWORD}@127.0.0.1:{proxy.port}/{bucket}"
        return Served(url, lambda: (proxy.close(), n_.stop()))
    raise ValueError(kind)


@pytest.fixture(scope="module")
def served(small_replica: BenchReplica, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:  # noqa: F811
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true",
                 "OSS_ACCESS_KEY_ID": "test", "OSS_ACCESS_KEY_SECRET": "test", "NO_GCE_CHECK": "true",
                 "GCE_METADATA_HOST": "127.0.0.1:9"}.items():
        os.environ[k] = v
    out: dict[str, Served] = {}
    try:
        for kind in BACKENDS:
            out[kind] = _serve(kind, small_replica, tmp_path_factory.mktemp(kind))
        yield out
    finally:
        for s in out.values():
            s.stop()


@pytest.fixture(scope="module")
def expected(small_replica: BenchReplica) -> dict[str, Any]:  # noqa: F811
    local = apsw.Connection(small_replica.local_path, flags=apsw.SQLITE_OPEN_READONLY)
    ids = random.Random(9).sample(range(1, small_replica.rows + 1), LOOKUPS)
    try:
        return {"scan": local.execute(SCAN_SQL).fetchall(), "ids": ids,
                "lookups": [local.execute(LOOKUP_SQL, (i,)).fetchall() for i in ids]}
    finally:
        local.close()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", BACKENDS)
def test_backend(benchmark: Any, served: dict[str, Served], expected: dict[str, Any], kind: str, op: str,
                 pytestconfig: pytest.Config) -> None:
    url = served[kind].url
    state: dict[str, Any] = {}

    def fresh() -> None:
        old = state.pop("conn", None)
        if old is not None:
            old.close()
        assert url not in lsvfs.open_replicas(), "the previous round's Replica is still open"
        if op != "open":
            state["conn"] = lsvfs.connect(url, cache_size=CACHE_SIZE)

    def run() -> Any:
        if op == "open":
            conn = state["conn"] = lsvfs.connect(url, cache_size=CACHE_SIZE)
            return conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        conn = state["conn"]
        if op == "cold_full_scan":
            return conn.execute(SCAN_SQL).fetchall()
        return [conn.execute(LOOKUP_SQL, (i,)).fetchall() for i in expected["ids"]]

    rounds = 3 if benchmarks_enabled(pytestconfig) else 1
    try:
        got = benchmark.pedantic(run, setup=fresh, rounds=rounds, iterations=1)
    finally:
        with closing(state.pop("conn", None) or _Nothing()):
            pass
    if op == "cold_full_scan":
        assert got == expected["scan"]
    elif op == "cold_point_lookups":
        assert got == expected["lookups"]
    else:
        assert got[0][0] >= 2  # the table and its index
    benchmark.extra_info.update(backend=kind, op=op, one_way_delay_ms=DELAY * 1000)


class _Nothing:
    def close(self) -> None:
        pass
