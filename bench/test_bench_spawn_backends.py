"""Issue 19: spawn to first rows on every backend, fresh processes, side by side.

    LSVFS_BENCH_DIR=/tmp/cs-bench LSVFS_BENCH_LATENCY_MS=10 \\
        python -m pytest bench/test_bench_spawn_backends.py --benchmark-enable -s -p no:cacheprovider

The backends benchmark's servers (test_bench_backends.py: each test server in
its own process, the small replica uploaded in its layout, a latency proxy in
front adding LSVFS_BENCH_LATENCY_MS each way), and for each backend, rounds
interleaved across backends, a fresh interpreter that imports lsvfs, connects,
and runs `SELECT count(*) FROM sqlite_master`: the time from spawn to its rows,
its CPU, and the SDK it imported. Prints a markdown table (median of ROUNDS).
Not a pytest-benchmark figure: one test that prints, so it runs with `-s`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from replicas import BenchReplica, bench_dir, benchmarks_enabled, small_replica  # noqa: F401
from test_bench_backends import BACKENDS, DELAY, Served, served  # noqa: F401

ROUNDS = 7
PROBE = """
import resource, sys, time, json
import lsvfs
conn = lsvfs.connect(sys.argv[1])
rows = conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
u = resource.getrusage(resource.RUSAGE_SELF)
sdks = sorted({m.split('.')[0] for m in sys.modules} & {"botocore", "boto3", "google", "azure", "paramiko", "nats",
                                                         "requests", "urllib3", "asyncssh"})
print(json.dumps({"rows": rows[0][0], "cpu": u.ru_utime + u.ru_stime, "sdks": sdks}), flush=True)
sys.stdout.flush()
"""


def spawn(url: str) -> tuple[float, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", PROBE, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    wall = time.perf_counter() - t
    _, err = proc.communicate(timeout=120)
    if not line:
        raise AssertionError(f"{url}: {err[-2000:]}")
    return wall, json.loads(line)


def test_spawn_to_rows(served: dict[str, Served], pytestconfig: Any) -> None:  # noqa: F811
    rounds = ROUNDS if benchmarks_enabled(pytestconfig) else 1
    got: dict[str, list[tuple[float, dict[str, Any]]]] = {k: [] for k in BACKENDS}
    for kind in BACKENDS:
        spawn(served[kind].url)  # warm the OS cache and bytecode
    for _ in range(rounds):
        for kind in BACKENDS:
            got[kind].append(spawn(served[kind].url))
    values = {r["rows"] for runs in got.values() for _, r in runs}
    assert len(values) == 1, values
    s3 = statistics.median(w for w, _ in got["s3"])
    print(f"\n\nspawn to first rows, median of {rounds}, +{DELAY * 2000:g} ms round trip\n")
    print("| backend | wall s | ratio to s3 | CPU s | SDK imported |\n|---|---|---|---|---|")
    for kind, runs in got.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(r["cpu"] for _, r in runs)
        print(f"| {kind} | {wall:.3f} | {wall / s3:.2f}x | {cpu:.3f} | {', '.join(runs[0][1]['sdks']) or '—'} |")
