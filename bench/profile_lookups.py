"""N warm point lookups through lsvfs or local SQLite, for profilers.

    python bench/profile_lookups.py SYSTEM DRIVER N PASSES [REPLICA_DIR [CACHE_MB]]

SYSTEM is lsvfs or local, DRIVER apsw or sqlite3. The script opens one
connection, then runs PASSES passes of the same N random primary-key lookups
(payload returned). Run it under callgrind with PASSES=1 and PASSES=2: the
difference is the cost of one warm pass, free of start-up and of the first
(cold) pass. lsvfs gets a frame cache larger than the database, so a warm
pass never leaves C, and polls once an hour (the poller's Python would
otherwise land in the profile, the more so the slower the profiler). REPLICA_DIR is a built bench replica (with replica/ and
local.db), e.g. $LSVFS_BENCH_DIR/big-100mb. CACHE_MB (default 512) sets lsvfs's
frame cache: a few MB make most lookups miss, to profile the miss path.
Each pass prints its q/s and, for lsvfs, its frame-cache hits and misses.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import time

import apsw

import lsvfs

SQL = "SELECT id, name, grp, payload FROM items WHERE id = ?"


def main() -> int:
    system, driver, n, passes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    base = sys.argv[5] if len(sys.argv) > 5 else "/tmp/lsbench/big-100mb"
    cache = (int(sys.argv[6]) if len(sys.argv) > 6 else 512) << 20
    url, local = f"file://{base}/replica", f"{base}/local.db"
    if system == "local":
        conn: object = (apsw.Connection(local, flags=apsw.SQLITE_OPEN_READONLY) if driver == "apsw"
                        else sqlite3.connect(f"file:{local}?mode=ro", uri=True))
    elif driver == "apsw":
        conn = lsvfs.connect(url, cache_size=cache, poll_interval=3600)
    else:
        conn = sqlite3.connect(lsvfs.uri(url, cache_size=cache, poll_interval=3600), uri=True)
    rows = conn.execute("SELECT max(id) FROM items").fetchone()[0]  # type: ignore[attr-defined]
    rnd = random.Random(7)
    ids = [(rnd.randint(1, rows),) for _ in range(n)]
    fc = lsvfs.open_replicas()[url].cache if system == "lsvfs" else None
    for p in range(passes):
        h0, m0 = (fc.hits, fc.misses) if fc else (0, 0)
        t0 = time.perf_counter()
        for i in ids:
            conn.execute(SQL, i).fetchall()  # type: ignore[attr-defined]
        dt = time.perf_counter() - t0
        stats = f", frame cache {fc.hits - h0} hits {fc.misses - m0} misses" if fc else ""
        print(f"{system}/{driver} pass {p}: {n / dt:,.0f} q/s{stats}", file=sys.stderr)
    conn.close()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
