"""Every backend next to S3, at the same added network latency.

One real Litestream directory replica (the `small_replica` of replicas.py) is
uploaded, file for file, into each backend's layout on its test server
(moto for S3 and OSS, gcp-storage-emulator, Azurite, asyncssh SFTP, wsgidav,
nats-server), each in its own process so this one runs only the client. NATS
objects get the chunk layout the real `litestream replicate` leaves
(`servers.litestream_chunks`: a snapshot is thousands of tiny chunks). Each
server sits behind its own latency proxy adding the same one-way delay (in a
process of its own too: its CPU would otherwise be charged to the client, and
more to chatty protocols), and lsvfs opens the replica through the proxy. Measured per backend, on a fresh
Replica each round (so nothing is cached):

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
from latency_proxy import proxy_process
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
ROUNDS = 7
"""Rounds per figure: a round takes well under a second, and the median of 3 moved by 1.5x between runs."""
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
    """Start `kind`'s server in its own process (so this process runs only the client),
    upload the replica in its layout, put a proxy in front."""
    import servers
    from replication import MotoS3

    files = _files(rep)
    layout = LAYOUTS[{"gcs": "gs", "azure": "abs"}.get(kind, kind)]

    def names(path: str) -> list[tuple[str, bytes]]:
        return [(level_dir(path, lvl, layout) + name, data) for lvl, name, data in files]

    def to_dir(root: Path) -> None:
        for n, data in names(""):
            (root / n).parent.mkdir(parents=True, exist_ok=True)
            (root / n).write_bytes(data)

    if kind in ("azure", "nats"):  # already their own processes (node, Go)
        if kind == "azure":
            a = servers.Azurite().start()
            container = a.create_container()
            for n, data in names("db"):
                a.put(container, n, data)
            proxy = proxy_process(a.port, DELAY)
            key = servers.AZURITE_KEY.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
            url = (f"abs://{servers.AZURITE_ACCOUNT}@{container}/db?endpoint=http://127.0.0.1:{proxy.port}/"
                   f"{servers.AZURITE_ACCOUNT}&account-key={key}")
            return Served(url, lambda: (proxy.stop(), a.stop()))
        nt = servers.NATSServer(scratch_dir / "nats").start()
        bucket = nt.create_bucket()
        # Chunked as `litestream replicate` (nats.go) writes: L0 files in 128 KiB chunks, compactions
        # and snapshots in thousands of chunks of a few bytes, interleaved (servers.litestream_chunks).
        nt.put_as_litestream(bucket, dict(names("")))
        proxy = proxy_process(nt.port, DELAY)
        url = f"nats://{servers.NATS_USER}:{servers.NATS_PASSWORD}@127.0.0.1:{proxy.port}/{bucket}"
        return Served(url, lambda: (proxy.stop(), nt.stop()))

    sp = servers.ServerProcess(kind, scratch_dir / kind)
    proxy = proxy_process(sp.port, DELAY)

    def stop() -> None:
        proxy.stop()
        sp.stop()

    if kind in ("s3", "oss"):
        moto = MotoS3()
        moto.endpoint = sp.facts["endpoint"]
        bucket = moto.create_bucket("bench")
        client = moto.client()
        for n, data in names("db"):
            client.put_object(Bucket=bucket, Key=n, Body=data)
        ep = f"http://127.0.0.1:{proxy.port}"
        if kind == "s3":
            return Served(f"s3://{bucket}/db?endpoint={ep}&region=us-east-1&force-path-style=true", stop)
        return Served(f"oss://{bucket}/db?endpoint={ep}&region=us-east-1", stop)
    if kind == "gcs":
        g = servers.GCSEmulator()
        g.endpoint = sp.facts["endpoint"]
        bucket = g.create_bucket()
        for n, data in names("db"):
            g.put(bucket, n, data)
        return Served(f"gs://{bucket}/db?endpoint=http://127.0.0.1:{proxy.port}", stop)
    if kind == "sftp":
        d = "replica"
        to_dir(Path(sp.facts["root"]) / d)
        kh = scratch_dir / "known_hosts"
        kh.write_text(f"[127.0.0.1]:{proxy.port} {sp.facts['host_public_key']}\n")
        return Served(f"sftp://{servers.SFTP_USER}:{servers.SFTP_PASSWORD}@127.0.0.1:{proxy.port}/{d}"
                      f"?known_hosts={kh}", stop)
    if kind == "webdav":
        d = "replica"
        to_dir(Path(sp.facts["root"]) / d)
        return Served(f"webdav://{servers.WEBDAV_USER}:{servers.WEBDAV_PASSWORD}@127.0.0.1:{proxy.port}/{d}", stop)
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

    rounds = ROUNDS if benchmarks_enabled(pytestconfig) else 1
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
