"""Polling: how the poller follows the primary: overlapping commits, rapid
commits coalesced, and the poll interval at its edges (scenarios 9, 12, 13).

See tests/TEST_PLAN.md for the scenario -> test map and what each proves.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import closing
from pathlib import Path

import apsw
import pytest
from replication import ReplicatedPrimary, wait_until
from scenario_support import blob_table, txid_of
from synthetic import (
    STRESS_SECONDS,
    DirTarget,
    SyntheticPrimary,
    in_txn,
)
from wrappers import WrappedStorage

import lsvfs
from lsvfs.storage import open_storage

# ---- 9: overlapping commits --------------------------------------------------------------

def test_s09_two_writers_commit_storm(file_primary: ReplicatedPrimary) -> None:
    """Scenario 9: two writer threads run rapid overlapping BEGIN IMMEDIATE /
    COMMIT transfers on the primary (real Litestream); readers on the replica
    always see the ledger balanced, and the replica ends equal to the primary."""
    p = file_primary
    p.execute("CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)")
    p.executemany("INSERT INTO acct(bal) VALUES (?)", [(100,)] * 20)
    p.wait_replicated()
    stop = threading.Event()
    errors: list[str] = []
    commits = [0, 0]

    def writer(w: int) -> None:
        conn = apsw.Connection(str(p.db_path))
        conn.set_busy_timeout(5000)
        rnd = random.Random(w)
        try:
            while not stop.is_set():
                a, b = rnd.sample(range(1, 21), 2)
                amount = rnd.randrange(1, 10)
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE acct SET bal = bal - ? WHERE id = ?", (amount, a))
                conn.execute("UPDATE acct SET bal = bal + ? WHERE id = ?", (amount, b))
                conn.execute("COMMIT")
                commits[w] += 1
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(f"writer {w}: {exc!r}")
        finally:
            conn.close()

    seen: set[int] = set()

    def reader() -> None:
        try:
            with closing(lsvfs.connect(p.replica_url)) as conn:
                while not stop.is_set():
                    txid, [[(total, n)]] = in_txn(conn, "SELECT sum(bal), count(*) FROM acct")
                    seen.add(txid)
                    if (total, n) != (2000, 20):
                        errors.append(f"TXID {txid:x}: sum {total} over {n} accounts")
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(f"reader: {exc!r}")

    with closing(lsvfs.connect(p.replica_url, poll_interval=0.025)) as conn:
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
        threads += [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(max(STRESS_SECONDS, 1.5))
        stop.set()
        for t in threads:
            t.join(timeout=30)
        final = p.wait_replicated()
        wait_until(lambda: txid_of(conn) >= final, 15, what="replica catches up")
        assert conn.execute("SELECT * FROM acct ORDER BY id").fetchall() == p.execute(
            "SELECT * FROM acct ORDER BY id")
    assert not errors, errors[:5]
    assert min(commits) > 10 and len(seen) > 2


# ---- 12: rapid updates -------------------------------------------------------------------

def test_s12_rapid_commits_are_coalesced(tmp_path: Path) -> None:
    """Scenario 12: 200 one-row commits 1 ms apart against a 5 ms poller: the
    replica ends at the final value, what readers see only moves forward, and
    polls coalesce many L0 files into one snapshot (far fewer snapshots than
    commits). A poll after a burst of 50 files applies all 50 at once."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    p.commit("CREATE TABLE c(n INTEGER)")
    p.commit("INSERT INTO c VALUES (0)")
    published: list[int] = []
    with closing(lsvfs.connect(p.url, poll_interval=0.005)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        orig = rep.poller._poll

        def counting() -> bool:
            advanced = orig()
            if advanced:
                published.append(rep.current().txid)
            return advanced

        rep.poller._poll = counting  # type: ignore[method-assign]
        seen: list[int] = []
        for i in range(200):
            p.commit("UPDATE c SET n = ?", (i + 1,))
            if i % 10 == 0:
                seen.append(conn.execute("SELECT n FROM c").fetchall()[0][0])
            time.sleep(0.001)
        wait_until(lambda: conn.execute("SELECT n FROM c").fetchall() == [(200,)], 10, interval=0.01)
        assert seen == sorted(seen)
        assert rep.poll_errors == 0
        jumps = [b - a for a, b in zip([2, *published], published)]
        assert max(jumps) >= 2 and len(published) < 200, f"{len(published)} snapshots for 200 commits"
    with closing(lsvfs.connect(p.url, poll_interval=0)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        start = rep.current().txid
        for i in range(50):
            p.commit("UPDATE c SET n = ?", (1000 + i,))
        assert rep.poll() is True
        assert rep.current().txid == start + 50
        assert conn.execute("SELECT n FROM c").fetchall() == [(1049,)]


# ---- 13: poll interval edges -------------------------------------------------------------

@pytest.mark.parametrize(("interval", "lo", "hi"), [(0.005, 20, 230), (0.2, 3, 7)])
def test_s13_poll_interval_is_honoured_at_both_extremes(tmp_path: Path, interval: float, lo: int, hi: int) -> None:
    """Scenario 13: over one second a 5 ms poller polls often but does not spin,
    a 200 ms poller polls about five times; each poll costs one L0 listing,
    whatever the number of connections."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    blob_table(p, rows=5)
    counting = WrappedStorage(open_storage(p.url))
    with closing(lsvfs.connect(p.url, storage=counting, poll_interval=interval)), \
            closing(lsvfs.connect(p.url)), closing(lsvfs.connect(p.url)):
        rep = lsvfs.open_replicas()[p.url]
        polls0, lists0 = rep.poll_count, counting.calls["list"]
        time.sleep(1.0)
        polls, lists = rep.poll_count - polls0, counting.calls["list"] - lists0
    assert lo <= polls <= hi, polls
    assert lists <= polls + 1, (polls, lists)


def test_s13_poll_interval_zero_and_bad_values(tmp_path: Path) -> None:
    """Scenario 13: poll_interval=0 starts no poller at all (no listing after
    open); '250ms' and '2s' parse; negative or garbage intervals are refused
    with a ValueError naming the option, before anything is opened."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    blob_table(p, rows=5)
    counting = WrappedStorage(open_storage(p.url))
    with closing(lsvfs.connect(p.url, storage=counting, poll_interval=0)):
        rep = lsvfs.open_replicas()[p.url]
        assert rep.poller.thread is None
        lists = counting.calls["list"]
        time.sleep(0.3)
        assert counting.calls["list"] == lists and rep.poll_count == 0
    for text, secs in (("250ms", 0.25), ("2s", 2.0), (".5", 0.5)):
        with closing(lsvfs.connect(p.url, poll_interval=text)):
            assert lsvfs.open_replicas()[p.url].options.poll_interval == secs
    for bad in ("-1", "-5ms", "soon", "1 fortnight"):
        with pytest.raises(ValueError, match="poll_interval"):
            lsvfs.connect(p.url, poll_interval=bad)
    assert lsvfs.open_replicas() == {}


def test_steady_state_poll_is_one_list_on_s3(s3_primary: ReplicatedPrimary) -> None:
    """Real Litestream on S3 (moto): an idle replica costs one LIST per poll,
    never a listing of every level, and a write is still picked up by the
    next poll after it lands."""
    p = s3_primary
    p.create_table()
    p.insert_rows(20)
    p.wait_replicated()
    counting = WrappedStorage(open_storage(p.replica_url))
    with closing(lsvfs.connect(p.replica_url, storage=counting, poll_interval=0)) as conn:
        rep = lsvfs.open_replicas()[p.replica_url]
        for rounds in range(2):
            lists0 = counting.calls["list"]
            for _ in range(25):
                assert not rep.poll()
            assert counting.calls["list"] - lists0 == 25
            if rounds == 0:
                p.insert_rows(5, seed=3)
                p.wait_replicated()
                wait_until(rep.poll, 10, what="the write reached the reader")
                assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 25
