"""N warm point lookups through lsvfs or local SQLite, for profilers.

    python bench/profile_lookups.py SYSTEM DRIVER N PASSES [REPLICA_DIR]

SYSTEM is lsvfs or local, DRIVER apsw or sqlite3. The script opens one
connection, then runs PASSES passes of the same N random primary-key lookups
(payload returned). Run it under callgrind with PASSES=1 and PASSES=2: the
difference is the cost of one warm pass, free of start-up and of the first
(cold) pass. lsvfs gets a frame cache larger than the database, so a warm
pass never leaves C. REPLICA_DIR is a built bench replica (with replica/ and
local.db), e.g. $LSVFS_BENCH_DIR/big-100mb.
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
    url, local = f"file://{base}/replica", f"{base}/local.db"
    if system == "local":
        conn: object = (apsw.Connection(local, flags=apsw.SQLITE_OPEN_READONLY) if driver == "apsw"
                        else sqlite3.connect(f"file:{local}?mode=ro", uri=True))
    elif driver == "apsw":
        conn = lsvfs.connect(url, cache_size=512 << 20)
    else:
        conn = sqlite3.connect(lsvfs.uri(url, cache_size=512 << 20), uri=True)
    rows = conn.execute("SELECT max(id) FROM items").fetchone()[0]  # type: ignore[attr-defined]
    rnd = random.Random(7)
    ids = [(rnd.randint(1, rows),) for _ in range(n)]
    for p in range(passes):
        t0 = time.perf_counter()
        for i in ids:
            conn.execute(SQL, i).fetchall()  # type: ignore[attr-defined]
        dt = time.perf_counter() - t0
        print(f"{system}/{driver} pass {p}: {n / dt:,.0f} q/s", file=sys.stderr)
    conn.close()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
