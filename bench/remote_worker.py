"""One cold reader of a remote replica, in a fresh process, for test_bench_remote.py.

    python bench/remote_worker.py SYSTEM WORKLOAD [--target URL|PATH] [--options JSON]
                                  [--ids-seed S --ids-count N --rows R] [--passes K] [--seconds T]

SYSTEM is `lsvfs` (`lsvfs.connect(TARGET)`), `go` (the Go VFS; it reads
LITESTREAM_REPLICA_URL from the environment this process started with) or
`local` (apsw on the database file TARGET). Each run is a new process so that
nothing (imports, storage clients, caches) is warm unless the workload warms
it; the parent times the whole process as well.

Workloads:

- `open`: connect, `SELECT count(*) FROM sqlite_master`, then mark `answered`;
- `lookups_scan`: open as above, then N primary-key lookups, then one full scan;
- `l0_check`: open, the ledger aggregate and N lookups (checks the many-L0 replica);
- `hydrate`: connect with hydration on, wait for
  `PRAGMA litestream_hydration_progress` to reach 100, then warm lookups;
- `warm_lookups`: open, the N lookups once untimed, then K timed passes;
- `poll`: open, stay idle T seconds, then one query.

Stdout carries only JSON lines: `{"mark": NAME}` at phase boundaries, after
which the worker waits for one line on stdin (the parent snapshots its request
counters there, so each phase's requests can be told apart), and a last
`{"result": {...}}` with the timings (seconds, measured here) and row checksums.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the imports, which the open figures include

import argparse  # noqa: E402 - after STARTED on purpose
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import IO, Any  # noqa: E402

SYSTEMS = ("lsvfs", "go", "local")
WORKLOADS = ("open", "lookups_scan", "l0_check", "hydrate", "warm_lookups", "poll")
FIRST_SQL = "SELECT count(*) FROM sqlite_master"
LOOKUP_SQL = "SELECT id, name, grp, payload FROM items WHERE id = ?"
SCAN_SQL = "SELECT count(*), sum(length(payload)) FROM items"
LEDGER_SQL = "SELECT count(*), max(seq), sum(v) FROM ledger"
PROGRESS_SQL = "PRAGMA litestream_hydration_progress"
HYDRATE_TIMEOUT = 300.0
CACHE_SIZE = 64 << 20
"""Both VFSs get the same page cache (the Go VFS defaults to 10 MB)."""


def cpu_s() -> float:
    """CPU seconds of this process so far, every thread (Go's and lsvfs's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def lookup_ids(seed: int, count: int, rows: int) -> list[int]:
    """The ids a lookup workload reads: the parent computes the same list for its expected rows."""
    rnd = random.Random(seed)
    return [rnd.randint(1, rows) for _ in range(count)]


class Reader:
    """The connection of one system, and the timed phases run on it."""

    def __init__(self, args: argparse.Namespace, proto: IO[str]) -> None:
        self.args = args
        self.proto = proto
        self.options: dict[str, Any] = json.loads(args.options)
        self.out: dict[str, Any] = {"system": args.system, "workload": args.workload, "pid": os.getpid()}
        t = time.perf_counter()
        import apsw
        from go_worker import checksum, go_uri, load_go_vfs

        self.apsw = apsw
        self.checksum = checksum
        self.go_uri = go_uri
        if args.system == "go":
            load_go_vfs()  # also builds its replica client from the environment
        elif args.system == "lsvfs":
            import lsvfs  # noqa: F401 - timed as part of start-up
        self.out["import_s"] = time.perf_counter() - t
        self.out["startup_s"] = t - STARTED  # interpreter work before the imports (argparse, json, ...)
        self.conn: Any = None

    def connect(self, **extra: Any) -> None:
        apsw = self.apsw
        system, target = self.args.system, self.args.target
        options = {**self.options, **extra}
        t = time.perf_counter()
        if system == "lsvfs":
            import lsvfs

            self.conn = lsvfs.connect(target, **{"cache_size": CACHE_SIZE, **options})
        elif system == "go":
            uri = self.go_uri({"cache_size": CACHE_SIZE, **options})
            self.conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI, vfs="litestream")
        else:
            self.conn = apsw.Connection(target, flags=apsw.SQLITE_OPEN_READONLY)
        self.out["connect_s"] = time.perf_counter() - t

    def timed(self, name: str, fn: Callable[[], list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        """Run `fn`, keep its time as `<name>_s` and its rows' checksum as `<name>_sum`."""
        c, t = cpu_s(), time.perf_counter()
        rows = fn()
        self.out[f"{name}_s"] = time.perf_counter() - t
        self.out[f"{name}_cpu_s"] = cpu_s() - c
        self.out[f"{name}_sum"] = self.checksum(rows)
        self.out[f"{name}_rows"] = len(rows)
        return rows

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql, params).fetchall())

    def lookups(self) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for i in lookup_ids(self.args.ids_seed, self.args.ids_count, self.args.rows):
            rows.extend(self.conn.execute(LOOKUP_SQL, (i,)).fetchall())
        return rows

    def mark(self, name: str) -> None:
        """Tell the parent a phase ended and wait until it has taken its counts."""
        self.proto.write(json.dumps({"mark": name}) + "\n")
        self.proto.flush()
        sys.stdin.readline()

    def open_and_first(self, **extra: Any) -> None:
        self.connect(**extra)
        first = self.timed("first", lambda: self.query(FIRST_SQL))
        self.out["first_value"] = first[0][0]
        self.out["open_s"] = self.out["connect_s"] + self.out["first_s"]

    def stats(self) -> None:
        """lsvfs's own view of its storage requests and cache, to set against the wire counts."""
        if self.args.system == "lsvfs":
            import lsvfs

            s = lsvfs.stats(self.args.target)
            self.out["lsvfs_stats"] = {"storage": s.get("storage"), "cache": s.get("cache")}

    def run(self) -> dict[str, Any]:
        w = self.args.workload
        if w == "open":
            self.open_and_first()
            self.mark("answered")  # the parent's clock: spawn to first rows, without interpreter teardown
        elif w == "lookups_scan":
            self.open_and_first()
            self.mark("opened")
            self.timed("lookups", self.lookups)
            self.mark("looked_up")
            self.timed("scan", lambda: self.query(SCAN_SQL))
            self.mark("scanned")
        elif w == "l0_check":
            self.open_and_first()
            self.timed("ledger", lambda: self.query(LEDGER_SQL))
            self.timed("lookups", self.lookups)
        elif w == "hydrate":
            self.hydrate()
            self.mark("hydrated")
            self.warm_passes()
        elif w == "warm_lookups":
            self.open_and_first()
            self.warm_passes()
        elif w == "poll":
            self.open_and_first()
            self.mark("opened")
            t = time.perf_counter()
            time.sleep(self.args.seconds)
            self.out["idle_s"] = time.perf_counter() - t
            self.mark("idled")
            self.timed("after", lambda: self.query(FIRST_SQL))
        else:
            raise ValueError(f"unknown workload {w!r}")
        self.stats()
        self.out["cpu_s"] = cpu_s()
        return self.out

    def hydrate(self) -> None:
        """From before connect until the progress PRAGMA says 100 (the options come from --options)."""
        c, t = cpu_s(), time.perf_counter()
        self.connect()
        progress, deadline = 0.0, t + HYDRATE_TIMEOUT
        while progress < 100:
            progress = float(str(self.query(PROGRESS_SQL)[0][0]).rstrip("%"))
            if progress < 100:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"hydration at {progress}% after {HYDRATE_TIMEOUT}s")
                time.sleep(0.01)
        self.out["hydrate_s"] = time.perf_counter() - t
        self.out["hydrate_cpu_s"] = cpu_s() - c

    def warm_passes(self) -> None:
        """The lookups once to warm every cache, then `passes` timed passes that must return the same rows."""
        self.timed("warmup", self.lookups)
        times = []
        for _ in range(self.args.passes):
            self.timed("warm", self.lookups)
            if self.out["warm_sum"] != self.out["warmup_sum"]:
                raise AssertionError("a warm pass returned different rows from the warm-up")
            times.append(self.out["warm_s"])
        self.out["warm_passes_s"] = times

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("system", choices=SYSTEMS)
    ap.add_argument("workload", choices=WORKLOADS)
    ap.add_argument("--target", help="replica URL (lsvfs) or database path (local); go reads its environment")
    ap.add_argument("--options", default="{}", help="JSON object of connection options")
    ap.add_argument("--ids-seed", type=int, default=1)
    ap.add_argument("--ids-count", type=int, default=0)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--passes", type=int, default=1, help="timed warm passes")
    ap.add_argument("--seconds", type=float, default=10.0, help="idle time of the poll workload")
    args = ap.parse_args(argv)
    # JSON lines own the real stdout; whatever the Go runtime or SQLite prints goes to stderr.
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    reader = Reader(args, proto)
    try:
        result = reader.run()
    finally:
        reader.close()
    proto.write(json.dumps({"result": result}) + "\n")
    proto.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
