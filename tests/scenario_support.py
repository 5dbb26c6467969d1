"""Helpers shared by the scenario test files (tests/test_concurrency.py,
test_faults_and_recovery.py, test_polling.py, test_temp_files.py,
test_sqlite_behaviour.py, test_memory_and_scale.py): the TXID a connection
sees and the tables the scenarios build on a SyntheticPrimary.

See tests/TEST_PLAN.md for the scenario -> test map.
"""

from __future__ import annotations

import random

import apsw
from synthetic import SyntheticPrimary


def txid_of(conn: apsw.Connection) -> int:
    return int(conn.execute("PRAGMA litestream_txid").fetchall()[0][0], 16)


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
