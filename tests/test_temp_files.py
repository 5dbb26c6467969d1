"""Temp files of replica connections: lifecycle under concurrency, same names
in two connections, a vanished temp directory, close mid-query (scenarios 14-17).

Temp files are SQLite's default VFS's: the litestream VFS hands them over
untouched, so these check the outcome (right results, every temp file gone
with its connection) on what SQLite itself opens.
See tests/TEST_PLAN.md for the scenario -> test map and what each proves.
"""

from __future__ import annotations

import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
from drivers import sqlite_temp_fds
from longrun import LongRun
from scenario_support import big_table
from synthetic import (
    STRESS_SECONDS,
    DirTarget,
    SyntheticPrimary,
)

import lsvfs

SPILL = "PRAGMA temp_store=FILE; PRAGMA cache_size=8; PRAGMA temp.cache_size=4"
"""Makes sorts and temp tables go to temp files rather than memory."""


BIG_SORT = "SELECT a.k, a.v FROM t a, t b WHERE b.id <= 4 ORDER BY a.v, b.id"
"""A ~700 KB sort: spills to temp files under SPILL."""


# ---- 14: temp file lifecycle -------------------------------------------------------------

@pytest.mark.stress
def test_s14_temp_file_lifecycle_under_concurrency(tmp_path: Path, long_run: LongRun) -> None:
    """Scenario 14: 8 threads, each with its own connection (reopened as they
    go), spill sorts and build/drop temp tables for LSVFS_STRESS_SECONDS; every
    result is right, temp files were really used, and none is open afterwards."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    big_table(p)
    want_sorted = p.rows(BIG_SORT)
    want_count = p.rows("SELECT count(*) FROM t WHERE k % 3 = 0")
    before = sqlite_temp_fds()
    errors: list[str] = []
    spills = [0] * 8
    deadline = time.monotonic() + STRESS_SECONDS

    def worker(i: int) -> None:
        try:
            while time.monotonic() < deadline:
                with closing(lsvfs.connect(p.url)) as conn:
                    conn.execute(SPILL)
                    for _ in range(3):
                        if conn.execute(BIG_SORT).fetchall() != want_sorted:
                            errors.append("sort")
                        conn.execute(f"CREATE TEMP TABLE s{i} AS SELECT id, k FROM t WHERE k % 3 = 0")
                        if conn.execute(f"SELECT count(*) FROM s{i}").fetchall() != want_count:
                            errors.append("temp table")
                        conn.execute(f"DROP TABLE s{i}")
                        spills[i] += 1
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(repr(exc))

    with closing(lsvfs.connect(p.url, poll_interval=0)):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        peak_fds = 0
        while any(t.is_alive() for t in threads):
            peak_fds = max(peak_fds, sqlite_temp_fds() - before)
            time.sleep(0.005)
        for t in threads:
            t.join(timeout=30)
    long_run.count(reads_checked=2 * sum(spills))
    assert not errors, errors[:5]
    assert min(spills) > 0 and peak_fds > 1
    assert sqlite_temp_fds() == before


# ---- 15: temp name collisions ------------------------------------------------------------

def test_s15_temp_tables_of_the_same_name_in_two_connections(tmp_path: Path) -> None:
    """Scenario 15: two connections each create TEMP TABLE scratch (spilled to
    temp files); each sees only its own rows, and both files go with them."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    big_table(p, rows=300)
    before = sqlite_temp_fds()
    with closing(lsvfs.connect(p.url, poll_interval=0)) as a, closing(lsvfs.connect(p.url)) as b:
        for c in (a, b):
            c.execute(SPILL)
        a.execute("CREATE TEMP TABLE scratch AS SELECT id, v FROM t WHERE id % 2 = 0")
        b.execute("CREATE TEMP TABLE scratch AS SELECT id, v FROM t WHERE id % 2 = 1")
        assert a.execute("SELECT count(*), min(id) FROM scratch").fetchall() == [(150, 2)]
        assert b.execute("SELECT count(*), min(id) FROM scratch").fetchall() == [(150, 1)]
        assert sqlite_temp_fds() - before >= 2
    assert sqlite_temp_fds() == before


# ---- 16: temp directory ------------------------------------------------------------------

def test_s16_temp_directory_gone(tmp_path: Path) -> None:
    """Scenario 16 (temp directory): temp files of a replica connection are
    SQLite's default VFS's, so when the directory chosen for them
    (`PRAGMA temp_store_directory`) is gone, SQLite falls back to another and
    a spilling sort and a temp table still give the right rows."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    big_table(p, rows=600)
    chosen = tmp_path / "tmp"
    chosen.mkdir()
    with closing(lsvfs.connect(p.url, poll_interval=0)) as conn:
        conn.execute(SPILL)
        # temp_store_directory is global to apsw's SQLite: always put it back.
        conn.execute(f"PRAGMA temp_store_directory = '{chosen}'")
        try:
            chosen.rmdir()
            assert conn.execute(BIG_SORT).fetchall() == p.rows(BIG_SORT)
            conn.execute("CREATE TEMP TABLE s AS SELECT * FROM t")
            assert conn.execute("SELECT count(*) FROM s").fetchall() == [(600,)]
        finally:
            conn.execute("PRAGMA temp_store_directory = ''")


# ---- 17: temp file during close ----------------------------------------------------------

def test_s17_closing_a_connection_mid_query_removes_its_temp_files(tmp_path: Path) -> None:
    """Scenario 17: a connection closed while a cursor is in the middle of a
    spilled sort (and with a temp table) removes every temp file it had, at once."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    big_table(p)
    before = sqlite_temp_fds()
    conn = lsvfs.connect(p.url, poll_interval=0)
    conn.execute(SPILL)
    conn.execute("CREATE TEMP TABLE keep AS SELECT id, v FROM t")
    cur = conn.execute(BIG_SORT)
    cur.fetchone()
    assert sqlite_temp_fds() - before >= 2
    conn.close()
    assert sqlite_temp_fds() == before
