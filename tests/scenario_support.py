"""Helpers shared by the scenario test files (tests/test_concurrency.py,
test_faults_and_recovery.py, test_polling.py, test_temp_files.py,
test_sqlite_behaviour.py, test_memory_and_scale.py) and tests/test_vfs.py:
the TXID a connection sees, rows of a query, page 1 as stored, the tables
the scenarios build on a SyntheticPrimary and the workload run on a real
Litestream primary.

See tests/TEST_PLAN.md for the scenario -> test map.
"""

from __future__ import annotations

import random
from typing import Any

import apsw
from replication import ReplicatedPrimary
from synthetic import SyntheticPrimary

FAST = {"poll_interval": 0.05}


def txid_of(conn: apsw.Connection) -> int:
    return int(conn.execute("PRAGMA litestream_txid").fetchall()[0][0], 16)


def rows(conn: apsw.Connection, sql: str = "SELECT * FROM t ORDER BY id") -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()


def unshim(page1: bytes, original: bytes) -> bytes:
    """Page 1 as stored, given the bytes the VFS rewrites."""
    b = bytearray(page1)
    for lo, hi in ((18, 20), (24, 32), (92, 96)):
        b[lo:hi] = original[lo:hi]
    return bytes(b)


def blob_table(p: SyntheticPrimary, rows: int = 200) -> None:
    """t(id, v): `rows` random 200-byte blobs (seed 3)."""
    rnd = random.Random(3)
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    p.commit("INSERT INTO t(v) VALUES (?)", many=[(rnd.randbytes(200),) for _ in range(rows)])


def indexed_table(p: SyntheticPrimary, rows: int, size: int = 200, seed: int = 8) -> None:
    """t(id, k, v) with an index on k: `rows` rows of k < 1000 and `size`-byte blobs."""
    rnd = random.Random(seed)
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    p.commit("CREATE INDEX t_k ON t(k)")
    p.commit("INSERT INTO t(k, v) VALUES (?, ?)", many=[(rnd.randrange(1000), rnd.randbytes(size))
                                                          for _ in range(rows)])


def big_table(p: SyntheticPrimary, rows: int = 1500) -> None:
    """t(id, k, v): `rows` rows of 120-byte blobs (seed 4), enough to spill sorts."""
    rnd = random.Random(4)
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    p.commit("INSERT INTO t(k, v) VALUES (?, ?)", many=[(rnd.randrange(1 << 20), rnd.randbytes(120))
                                                          for _ in range(rows)])


def workload(p: ReplicatedPrimary, rounds: int = 3) -> None:
    p.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
    for r in range(rounds):
        with p.transaction():
            p.executemany("INSERT INTO t(v, b) VALUES (?, randomblob(?))",
                          [(f"r{r}-{i}", 50 + i % 700) for i in range(300)])
        p.execute("UPDATE t SET v = v || '!' WHERE id % 7 = ?", (r,))
        p.execute("DELETE FROM t WHERE id % 11 = ?", (r,))
