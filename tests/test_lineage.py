"""Replicas that vanish or are replaced under a live reader.

A real `litestream replicate` writes every replica here, on a directory and
on S3 (moto). Removing the replica must count as failed polls (lag grows, one
WARNING, the last good snapshot keeps serving) until the files come back; a
replica wiped and written again by another primary (TXIDs from 1 again, and
past the TXID the reader holds) must be noticed and followed, with no page of
one lineage ever served for the other.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import apsw
import pytest

import lsvfs
from lsvfs.storage.redact import redact_url
from replication import ReplicatedPrimary, wait_until
from test_prefetch_and_hydration import assert_same_db, hydrated_at, restored

STORAGES = ["file", "s3"]
POLL = 0.1


def _who(conn: Any) -> list[tuple[str, int]]:
    return [tuple(r) for r in conn.execute("SELECT name, count(*) FROM who GROUP BY name ORDER BY name").fetchall()]


def _commit_rows(p: ReplicatedPrimary, name: str, n: int) -> int:
    """`n` commits of one row each on `p`, each replicated before the next
    (so each is a TXID of its own); the last TXID."""
    txid = 0
    for _ in range(n):
        p.execute("INSERT INTO who(name) VALUES (?)", (name,))
        txid = p.wait_replicated()
    return txid


def _primary_with_rows(make: Callable[..., ReplicatedPrimary], storage: str, name: str, n: int,
                       **config: Any) -> tuple[ReplicatedPrimary, int]:
    p = make(storage, **config)
    p.execute("CREATE TABLE who(id INTEGER PRIMARY KEY, name TEXT)")
    return p, _commit_rows(p, name, n)


def _wipe(p: ReplicatedPrimary) -> None:
    """Stop `p`'s replication and remove every file of its replica."""
    p.stop()
    if p.replica_dir is not None:
        shutil.rmtree(p.replica_dir)
        return
    assert p.s3 is not None and p.bucket is not None
    client = p.s3.client()
    for key in p.s3.keys(p.bucket, p.s3_path + "/"):
        client.delete_object(Bucket=p.bucket, Key=key)
    assert not p.s3.keys(p.bucket, p.s3_path + "/")


def _second_primary(make: Callable[..., ReplicatedPrimary], first: ReplicatedPrimary) -> ReplicatedPrimary:
    """Another primary (another database) replicating to `first`'s replica URL."""
    if first.replica_dir is None:
        return make("s3", bucket=first.bucket, s3_path=first.s3_path)
    p = make("file", start=False)
    p.config_path.write_text(p.config_path.read_text().replace(p.replica_url, first.replica_url))
    p.replica_dir, p.replica_url = first.replica_dir, first.replica_url
    p.start()
    return p


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("lsvfs") and r.levelno >= logging.WARNING]


def _reads(conn: Any, want: list[tuple[str, int]]) -> bool:
    """Whether `conn` reads `want` now; a read refused while the replica is
    between lineages (the old one gone, the new one not built yet) is a no."""
    try:
        return _who(conn) == want
    except (sqlite3.Error, apsw.Error):
        return False


def _lag(conn: Any) -> int:
    return int(conn.execute("PRAGMA litestream_lag").fetchall()[0][0])


@pytest.mark.parametrize("storage", STORAGES)
def test_a_removed_replica_fails_its_polls_until_the_files_come_back(
        replicated_primary: Any, tmp_path: Path, storage: str, caplog: pytest.LogCaptureFixture) -> None:
    """Before: a missing directory or an empty listing was a good poll, lag
    stayed 0 for ever. Now: polls fail (counted, one WARNING naming the
    redacted URL), lag grows, the reader keeps its rows; once the same
    files are back, lag is 0 again and new commits arrive."""
    caplog.set_level(logging.INFO, logger="lsvfs")
    p, txid = _primary_with_rows(replicated_primary, storage, "a", 5)
    db = sqlite3.connect(lsvfs.uri(p.replica_url, poll_interval=POLL), uri=True)
    with closing(db):
        assert _who(db) == [("a", 5)]
        saved: Any
        if p.replica_dir is not None:
            saved = tmp_path / "saved"
            shutil.copytree(p.replica_dir, saved)  # copy2: the same names, sizes and times
        else:
            assert p.s3 is not None and p.bucket is not None
            client = p.s3.client()
            saved = {k: client.get_object(Bucket=p.bucket, Key=k)["Body"].read()
                     for k in p.s3.keys(p.bucket, p.s3_path + "/")}
        caplog.clear()
        _wipe(p)
        wait_until(lambda: _lag(db) >= 2, 20, what="lag to grow past 2 s")
        rep = lsvfs.open_replicas()[p.replica_url]
        assert rep.stats()["poll_errors"] >= 3
        assert _who(db) == [("a", 5)]
        warned = [w for w in _warnings(caplog) if "lists no LTX files" in w]
        assert len(warned) == 1 and redact_url(p.replica_url) in warned[0], _warnings(caplog)

        if p.replica_dir is not None:
            shutil.copytree(saved, p.replica_dir)
        else:
            p.s3.bulk_put(p.bucket, saved.items())
        wait_until(lambda: _lag(db) == 0, 20, what="lag back to 0")
        assert _who(db) == [("a", 5)]
        p.start()
        newer = _commit_rows(p, "a", 3)
        assert newer > txid
        wait_until(lambda: _who(db) == [("a", 8)], 20, what="the new commits")
        assert db.execute("PRAGMA litestream_txid").fetchall()[0][0] == f"{newer:016x}"
        if storage == "file":  # the files came back exactly as they were
            assert rep.stats()["lineage_changes"] == 0


@pytest.mark.parametrize("storage", STORAGES)
def test_a_replica_replaced_by_another_primary_is_followed(
        replicated_primary: Any, storage: str, caplog: pytest.LogCaptureFixture) -> None:
    """Primary A replicates, readers follow it; the replica is wiped and
    primary B replicates to the same place until its TXIDs pass A's. Before:
    the live readers kept A's rows at lag 0 for ever. Now, on both drivers:
    new read transactions read exactly B's rows; a WARNING names both
    TXIDs; stats count one lineage change; a connection pinned to A's TXID
    and a transaction left open on A fail with an error naming the other
    lineage, never with B's rows; a fresh pin to a TXID of B reads B."""
    caplog.set_level(logging.INFO, logger="lsvfs")
    a, a_txid = _primary_with_rows(replicated_primary, storage, "a", 6)
    url = a.replica_url
    s = sqlite3.connect(lsvfs.uri(url, poll_interval=POLL), uri=True, check_same_thread=False)
    w = lsvfs.connect(url, poll_interval=POLL)
    pinned = lsvfs.connect(url, poll_interval=POLL)
    held = lsvfs.connect(url, poll_interval=POLL)
    with closing(s), closing(w), closing(pinned), closing(held):
        assert _who(s) == _who(w) == [("a", 6)]
        pinned.execute(f"PRAGMA litestream_txid = '{a_txid:016x}'")
        assert _who(pinned) == [("a", 6)]
        held.execute("BEGIN")
        assert _who(held) == [("a", 6)]

        _wipe(a)
        b = _second_primary(replicated_primary, a)
        b.execute("CREATE TABLE who(id INTEGER PRIMARY KEY, name TEXT)")
        b_txid = _commit_rows(b, "b", 4)
        while b_txid <= a_txid + 1:  # reach and pass the TXID the readers hold
            b_txid = _commit_rows(b, "b", 2)
        want = b.execute("SELECT name, count(*) FROM who GROUP BY name ORDER BY name")
        wait_until(lambda: _reads(s, want) and _reads(w, want), 30, what="readers on the new lineage")
        assert [int(c.execute("PRAGMA litestream_txid").fetchall()[0][0], 16) for c in (s, w)] == [b_txid] * 2

        # Objects are deleted one by one, so a poll may meet A half deleted
        # first, take that for the new lineage, then meet B: one change or two.
        rep = lsvfs.open_replicas()[url]
        warned = [m for m in _warnings(caplog) if "replaced by another lineage" in m]
        assert 1 <= rep.stats()["lineage_changes"] == len(warned) <= 2, warned
        assert f"not TXID {a_txid:016x} of the old" in warned[0] and redact_url(url) in warned[0], warned

        with pytest.raises(apsw.Error):
            _who(pinned)
        why = pinned.execute("PRAGMA litestream_error").fetchall()[0][0]
        assert "another lineage" in why and f"{a_txid:016x}" in why, why
        pinned.execute(f"PRAGMA litestream_txid = '{b_txid:016x}'")
        assert _who(pinned) == want

        # The open transaction reads what SQLite already holds, or fails: never B's pages.
        try:
            rows = held.execute("SELECT name, count(*), sum(length(name)) FROM who GROUP BY name").fetchall()
        except apsw.Error:
            rows = None
        assert rows in (None, [("a", 6, 6)])
        held.execute("ROLLBACK")
        assert _who(held) == want


@pytest.mark.parametrize("storage", STORAGES)
def test_the_new_lineage_at_the_same_txid_is_not_mistaken_for_the_old(
        replicated_primary: Any, storage: str, caplog: pytest.LogCaptureFixture) -> None:
    """A reader that polls only once B has reached A's TXID (the same file
    names, other bytes). Before: it took B's files as the next ones after
    its own or saw nothing new, and served A's rows at lag 0. Now it
    switches to B and reads exactly B's rows."""
    caplog.set_level(logging.INFO, logger="lsvfs")
    a, a_txid = _primary_with_rows(replicated_primary, storage, "a", 5)
    url = a.replica_url
    with closing(lsvfs.connect(url, poll_interval=3600)) as r:
        assert _who(r) == [("a", 5)]
        rep = lsvfs.open_replicas()[url]
        _wipe(a)
        b = _second_primary(replicated_primary, a)
        b.execute("CREATE TABLE who(id INTEGER PRIMARY KEY, name TEXT)")
        b_txid = b.wait_replicated()
        while b_txid < a_txid:  # longer rows: B's files differ from A's in size, not only in time
            b_txid = _commit_rows(b, "b" * 40, 1)
        b.stop()
        want = b.execute("SELECT name, count(*) FROM who GROUP BY name ORDER BY name")
        deadline = time.monotonic() + 10
        while _who(r) != want and time.monotonic() < deadline:
            rep.poll()
        assert _who(r) == want, "A's pages and B's mixed, or A's kept"
        # B's files usually end at A's TXID too (one commit per sync): then it is
        # a lineage change; if B's TXIDs stepped over it, nothing ends at the
        # reader's TXID and B is read afresh, a change that cannot be told apart.
        named_alike = any(f.max_txid == a_txid for files in b.replica_files().values() for f in files)
        assert rep.stats()["lineage_changes"] == (1 if named_alike else 0), b.replica_files()


@pytest.mark.parametrize("storage", STORAGES)
def test_a_hydration_file_is_rebuilt_for_the_new_lineage(
        replicated_primary: Any, tmp_path: Path, storage: str, caplog: pytest.LogCaptureFixture) -> None:
    """A persistent hydration file of A, then the replica replaced by B
    while the reader is open, and again across a restart: before, pages
    tagged by A's file names could pass for B's and a restart adopted A's
    file. Now the file is rebuilt (WARNING, rebuilds counted) and equals
    `litestream restore` of B's TXID byte for byte, live and after restart."""
    caplog.set_level(logging.INFO, logger="lsvfs")
    a, _ = _primary_with_rows(replicated_primary, storage, "a", 4)
    url, hp = a.replica_url, tmp_path / "h.db"
    with closing(lsvfs.connect(url, poll_interval=POLL, hydration_path=str(hp))) as r:
        rep = lsvfs.open_replicas()[url]
        wait_until(lambda: hydrated_at(rep, a.wait_replicated()), 20, what="hydrated on A")
        _wipe(a)
        b = _second_primary(replicated_primary, a)
        b.execute("CREATE TABLE who(id INTEGER PRIMARY KEY, name TEXT)")
        b_txid = _commit_rows(b, "b" * 30, 6)
        wait_until(lambda: _reads(r, [("b" * 30, 6)]) and hydrated_at(rep, b_txid), 30, what="hydrated on B")
        assert rep.stats()["hydration"]["rebuilds"] >= 1
        assert any("rebuilding hydration file" in w and "lineage" in w for w in _warnings(caplog))
        assert_same_db(hp.read_bytes(), restored(b, tmp_path, b_txid), b.page_size, "hydrated across the change")

    # A restart of a reader whose file holds B's TXID while C replaced B.
    b.stop()
    _wipe(b)
    c = _second_primary(replicated_primary, b)
    c.execute("CREATE TABLE who(id INTEGER PRIMARY KEY, name TEXT)")
    c_txid = _commit_rows(c, "c" * 50, b_txid + 1)
    caplog.clear()
    with closing(lsvfs.connect(url, poll_interval=POLL, hydration_path=str(hp))) as r:
        rep = lsvfs.open_replicas()[url]
        wait_until(lambda: hydrated_at(rep, c_txid), 30, what="hydrated on C")
        assert _who(r) == [("c" * 50, b_txid + 1)]
        assert rep.stats()["hydration"]["rebuilds"] == 1
        assert any("rebuilding hydration file" in w for w in _warnings(caplog))
        assert_same_db(hp.read_bytes(), restored(c, tmp_path, c_txid), c.page_size, "resumed across the change")
