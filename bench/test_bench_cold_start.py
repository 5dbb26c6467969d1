"""Issue 19: cold start on S3, lsvfs against the Go VFS, on a server that is not the bottleneck.

    python -m pytest bench/test_bench_cold_start.py --benchmark-enable --benchmark-json /tmp/cold.json
    python bench/report_cold_start.py /tmp/cold.json

The same replicas as test_bench_remote.py (the small one reduced to its newest
snapshot; a snapshot followed by 500 L0 files), laid out in Litestream's S3
layout on disk and served by bench/s3_server.py in its own process (moto spends
~5 ms of CPU per request on the same two cores; this server ~0.1 ms), behind a
counting LatencyProxy adding `LSVFS_BENCH_RTT_MS` (20) per round trip. Every
reader is a fresh remote_worker.py process; the open benchmarks run their
systems' rounds interleaved (the first test of each runs them all), so load
from other work on a shared machine falls on all of them alike:

- `lsvfs`: this checkout;
- `lsvfs_before`: another lsvfs tree given by `LSVFS_BENCH_BEFORE` (e.g. main
  exported with `git archive`, with this checkout's built `_core*.so` copied in),
  to set a change against what it replaces; skipped when unset;
- `go`: the Go VFS (`litestream-vfs`).

Benchmarks: `test_cold_open` (spawn to the first query's rows, one snapshot),
`test_cold_open_l0` (the same on the 500-L0 replica), `test_cold_lookups`
(200 cold point lookups then a full scan in a fresh process, prefetch on and
off; with it off, the client CPU per ranged GET). Each
records wall time, the worker's CPU to its first rows (or of the lookups),
the server's CPU, and the requests on the wire.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_bench_remote as remote_bench
from latency_proxy import LatencyProxy
from remote_worker import FIRST_SQL
from replicas import (  # noqa: F401 - fixtures are used by name
    BenchReplica,
    bench_dir,
    benchmarks_enabled,
    l0_after_snapshot,
    l0_replica,
    small_replica,
)
from request_count import RequestCounts
from s3_server import server_process
from test_bench_remote import (
    RTT_S,
    Remote,
    Run,
    _ltx_files,
    _median,
    bench_runs,
    expected_lookups,
    local_rows,
    lookup_args,
    run_worker,
    snapshot_only,
)

from lsvfs.storage.base import LAYOUTS, level_dir

BEFORE = os.environ.get("LSVFS_BENCH_BEFORE")
SYSTEMS = ("lsvfs", "lsvfs_before", "go")
ROUNDS = {"open": 7, "open_l0": 5, "lookups": 3, "lookups_noprefetch": 3}
TARGETS = {"open": 2.5, "open_l0": 20.0}
"""Issue 19: Go time / lsvfs time, with lsvfs's process CPU <= Go's."""
FIGURES: dict[tuple[str, str], dict[str, float]] = {}


@pytest.fixture(scope="module")
def cold_remote(tmp_path_factory: pytest.TempPathFactory, small_replica: BenchReplica,  # noqa: F811
                l0_replica: BenchReplica) -> Iterator[Remote]:  # noqa: F811
    """Both replicas on disk in the S3 layout, the bench S3 server over them, a counting proxy in front."""
    root = tmp_path_factory.mktemp("cold-s3")
    for path, files in (("small", snapshot_only(small_replica)), ("l0", _ltx_files(l0_replica))):
        for level, f in files:
            dest = root / "bench" / (level_dir(path, level, LAYOUTS["s3"]) + f.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    server: Any = server_process(root)
    counts = RequestCounts()
    proxy = LatencyProxy(server.port, RTT_S / 2, tap=lambda: counts.parser().feed)
    r = Remote(server, proxy, counts, "bench", None, root)
    r.uploaded = {"small": r.url("small"), "l0": r.url("l0")}
    try:
        yield r
    finally:
        r.stop()


def _run(remote: Remote, system: str, workload: str, url: str, *args: str,
         options: dict[str, Any] | None = None) -> Run:
    """run_worker, with `lsvfs_before` running the tree at LSVFS_BENCH_BEFORE instead of this checkout."""
    if system != "lsvfs_before":
        return run_worker(remote, system, workload, url, *args, options=options)
    assert BEFORE
    real = remote_bench.worker_env

    def env() -> dict[str, str]:
        e = real()
        e["PYTHONPATH"] = os.pathsep.join([BEFORE, e["PYTHONPATH"]])
        return e

    remote_bench.worker_env = env
    try:
        return run_worker(remote, "lsvfs", workload, url, *args, options=options)
    finally:
        remote_bench.worker_env = real


def _skip_unavailable(system: str) -> None:
    if system == "lsvfs_before" and not BEFORE:
        pytest.skip("LSVFS_BENCH_BEFORE is not set")


def _record(benchmark: Any, name: str, system: str, runs: list[Run], figure: str, cpu: list[float],
            **extra: Any) -> None:
    wall = [r.marks_s["answered"] if "answered" in r.marks_s else r.result["lookups_s"] for r in runs]
    FIGURES[(name, system)] = {"wall": _median(wall), "cpu": _median(cpu)}
    info: dict[str, Any] = {"bench": name, "system": system, "rtt_ms": RTT_S * 1000, "figure": figure,
                            "figures_s": wall, "figure_median_s": _median(wall), "client_cpu_s": cpu,
                            "client_cpu_median_s": _median(cpu), "server_cpu_s": [r.server_cpu_s for r in runs],
                            "requests_per_round": [r.total for r in runs], **extra}
    go = FIGURES.get((name, "go"))
    mine = FIGURES.get((name, "lsvfs"))
    if go and mine:
        info["go_over_lsvfs"] = go["wall"] / mine["wall"]
        info["cpu_lsvfs_over_go"] = mine["cpu"] / go["cpu"]
        if name in TARGETS:
            info["target_go_over_lsvfs"] = TARGETS[name]
    before = FIGURES.get((name, "lsvfs_before"))
    if before and mine:
        info["before_over_lsvfs"] = before["wall"] / mine["wall"]
    benchmark.extra_info.update(info)


def _rounds(config: pytest.Config, name: str) -> int:
    return ROUNDS[name] if benchmarks_enabled(config) else 1


_INTERLEAVED: dict[str, dict[str, list[Run]]] = {}


def _interleaved(name: str, config: pytest.Config, one: Callable[[str], Run]) -> dict[str, list[Run]]:
    """Every available system's rounds of benchmark `name`, run alternately (lsvfs, lsvfs_before,
    go, lsvfs, ...) by the first of its tests, so load from other work on a shared machine falls
    on every system alike; the other tests replay their system's runs."""
    if name not in _INTERLEAVED:
        systems = [s for s in SYSTEMS if s != "lsvfs_before" or BEFORE]
        runs: dict[str, list[Run]] = {s: [] for s in systems}
        for s in systems:
            one(s)  # warm the OS cache (interpreter, modules, extension); untimed
        for _ in range(_rounds(config, name)):
            for s in systems:
                runs[s].append(one(s))
        _INTERLEAVED[name] = runs
    return _INTERLEAVED[name]


def _replay(benchmark: Any, runs: list[Run], figure: Callable[[Run], float]) -> None:
    pending = iter(runs)

    def one() -> tuple[float, Run]:
        r = next(pending)
        return figure(r), r

    bench_runs(benchmark, len(runs), one)


def _open(benchmark: Any, remote: Remote, rep: BenchReplica, path: str, system: str, name: str,
          config: pytest.Config) -> None:
    _skip_unavailable(system)
    url = remote.uploaded[path]
    expected = local_rows(rep.local_path, FIRST_SQL)[0][0]
    runs = _interleaved(name, config, lambda s: _run(remote, s, "open", url))[system]
    _replay(benchmark, runs, lambda r: r.marks_s["answered"])
    for r in runs:
        assert r.result["first_value"] == expected, f"{system}: {r.result['first_value']} != local {expected}"
    _record(benchmark, name, system, runs, "spawn to first rows", [r.result["cpu_s"] for r in runs],
            import_s=[r.result["import_s"] for r in runs], connect_s=[r.result["connect_s"] for r in runs],
            first_query_s=[r.result["first_s"] for r in runs], process_wall_s=[r.wall_s for r in runs])


@pytest.mark.parametrize("system", SYSTEMS)
def test_cold_open(benchmark: Any, cold_remote: Remote, small_replica: BenchReplica, system: str,  # noqa: F811
                   pytestconfig: pytest.Config) -> None:
    _open(benchmark, cold_remote, small_replica, "small", system, "open", pytestconfig)


@pytest.mark.parametrize("system", SYSTEMS)
def test_cold_open_l0(benchmark: Any, cold_remote: Remote, l0_replica: BenchReplica, system: str,  # noqa: F811
                      pytestconfig: pytest.Config) -> None:
    _skip_unavailable(system)
    benchmark.extra_info["l0_files"] = l0_after_snapshot(Path(l0_replica.replica_dir))
    _open(benchmark, cold_remote, l0_replica, "l0", system, "open_l0", pytestconfig)


@pytest.mark.parametrize("prefetch", ["on", "off"])
@pytest.mark.parametrize("system", SYSTEMS)
def test_cold_lookups(benchmark: Any, cold_remote: Remote, small_replica: BenchReplica, system: str,  # noqa: F811
                      prefetch: str, pytestconfig: pytest.Config) -> None:
    """200 cold lookups, then a full scan, in a fresh process. With prefetch on (the default) the
    lookups race the background download of the whole database; with it off each lookup misses
    to a ranged GET, so the lookups' CPU over their GETs is the client's CPU per ranged GET
    (SQLite and the VFS included). The Go VFS has no prefetch: it runs once, as "on"."""
    _skip_unavailable(system)
    if system == "go" and prefetch == "off":
        pytest.skip("the Go VFS has no prefetch option")
    n = 200 if benchmarks_enabled(pytestconfig) else 20
    args = lookup_args(small_replica, n)
    options = {"prefetch": "off"} if prefetch == "off" else None

    def one() -> tuple[float, Run]:
        r = _run(cold_remote, system, "lookups_scan", cold_remote.uploaded["small"], *args, options=options)
        return r.result["lookups_s"], r

    runs: list[Run] = bench_runs(benchmark, _rounds(pytestconfig, "lookups"), one)  # 3 rounds either way
    want = expected_lookups(small_replica, n)
    for r in runs:
        assert r.result["lookups_sum"] == want, f"{system}: lookups differ from local SQLite's"
    gets = [r.phases["looked_up"].get("GET", 0) for r in runs]
    cpu = [r.result["lookups_cpu_s"] for r in runs]
    name = "lookups" if prefetch == "on" else "lookups_noprefetch"
    _record(benchmark, name, system, runs, f"worker: {n} cold lookups, prefetch {prefetch}", cpu, gets=gets,
            cpu_ms_per_get=[c * 1000 / g if g else None for c, g in zip(cpu, gets)],
            open_s=[r.result["open_s"] for r in runs],
            open_plus_lookups_s=[r.result["open_s"] + r.result["lookups_s"] for r in runs],
            scan_s=[r.result["scan_s"] for r in runs], scan_cpu_s=[r.result["scan_cpu_s"] for r in runs],
            scan_requests=[r.phases["scanned"] for r in runs])
