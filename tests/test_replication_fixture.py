"""The replication fixture itself: real litestream, directory and S3 replicas.

If these fail, every integration test built on `ReplicatedPrimary` is suspect,
so they check the fixture's promises directly against `litestream restore`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from replication import FAST_COMPACTION, MARKER_TABLE, MakePrimary, ReplicatedPrimary, ReplicationError, wait_until

from lsvfs.storage import SNAPSHOT_LEVEL

@pytest.mark.parametrize(
    ("storage", "page_size"),
    [("file", 4096), ("file", 512), pytest.param("s3", 4096, marks=pytest.mark.s3),
     pytest.param("s3", 512, marks=pytest.mark.s3)],
)
def test_restore_equals_image(replicated_primary: MakePrimary, tmp_path: Path, storage: str, page_size: int) -> None:
    p: ReplicatedPrimary = replicated_primary(storage, page_size=page_size)
    p.write_workload(transactions=6, rows=30, size=300, seed=1)
    txid1 = p.wait_replicated()
    img1 = p.image()
    assert txid1 >= 1
    # The TXID restore reported is the end of some file in the replica listing.
    assert txid1 in {f.max_txid for fs in p.replica_files().values() for f in fs}
    assert p.litestream_restore(tmp_path / "r1.db").read_bytes() == img1
    assert p.execute("PRAGMA page_size") == [(page_size,)]
    assert p.execute(f"SELECT seq FROM {MARKER_TABLE}") == [(1,)]

    p.delete_rows("id % 2 = 0")
    p.vacuum()  # the database shrinks
    txid2 = p.wait_replicated()
    img2 = p.image()
    assert txid2 > txid1 and len(img2) < len(img1)
    assert p.litestream_restore(tmp_path / "r2.db").read_bytes() == img2
    # Point-in-time restore at the first TXID gives the first image back.
    assert p.litestream_restore(tmp_path / "r1b.db", txid=txid1).read_bytes() == img1
    assert p.last_txid == txid2


def test_multi_level_replica_with_l0_gap(replicated_primary: MakePrimary, tmp_path: Path) -> None:
    """Within seconds: files in L0, L1 and L9, early L0 files deleted, the gap covered above.
    (On S3, tests/test_restore.py's test of the same name builds such a replica and checks more.)"""
    p: ReplicatedPrimary = replicated_primary("file", page_size=1024, **FAST_COMPACTION)
    p.create_table()
    deadline = time.monotonic() + 25
    i = 0
    while True:
        i += 1
        p.insert_rows(20, 200, seed=i)
        txid = p.wait_replicated(exact=False)
        files = p.replica_files()
        l0 = files[0]
        if l0 and files[1] and files[SNAPSHOT_LEVEL] and l0[0].min_txid > 2:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"no multi-level replica after {i} writes: {files}")
        time.sleep(0.2)
    first_l0 = l0[0].min_txid
    # TXIDs before the first L0 file exist only in higher levels: a real gap in L0.
    assert all(f.min_txid >= first_l0 for f in l0)
    higher = [f for lvl, fs in files.items() if lvl > 0 for f in fs]
    assert any(f.min_txid <= first_l0 - 1 <= f.max_txid for f in higher)
    assert all(f.min_txid == 1 for f in files[SNAPSHOT_LEVEL])
    # litestream itself restores across the gap to exactly the primary's bytes.
    txid = p.wait_replicated()
    assert p.litestream_restore(tmp_path / "r.db").read_bytes() == p.image()
    assert txid >= max(f.max_txid for fs in files.values() for f in fs)


def test_stop_start_and_dead_litestream(file_primary: ReplicatedPrimary, tmp_path: Path) -> None:
    p = file_primary
    p.insert_rows(10, seed=1)
    t1 = p.wait_replicated()
    p.stop()
    assert not p.running
    p.insert_rows(10, seed=2)  # written while litestream is down
    t0 = time.monotonic()
    with pytest.raises(ReplicationError, match="not running"):
        p.wait_replicated(timeout=5)
    assert time.monotonic() - t0 < 1
    p.start()
    t2 = p.wait_replicated()
    assert t2 > t1
    assert p.litestream_restore(tmp_path / "r.db").read_bytes() == p.image()
    assert "litestream" in p.log_text() and "--- start" in p.log_text()


def test_litestream_crash_is_reported(file_primary: ReplicatedPrimary) -> None:
    p = file_primary
    p.wait_replicated()
    assert p._proc is not None
    p._proc.kill()
    wait_until(lambda: not p.running, 5, what="litestream death")
    with pytest.raises(ReplicationError, match="exited with status"):
        p.wait_replicated(timeout=5)


def test_bad_config_fails_fast(replicated_primary: MakePrimary) -> None:
    p: ReplicatedPrimary = replicated_primary("file", sync_interval="0s")  # litestream rejects it
    t0 = time.monotonic()
    with pytest.raises(ReplicationError, match="sync interval"):
        wait_until(lambda: not p.running, 5, what="litestream exit")
        p.wait_replicated(timeout=10)
    assert time.monotonic() - t0 < 6


def test_close_kills_litestream(replicated_primary: MakePrimary) -> None:
    p: ReplicatedPrimary = replicated_primary("file")
    proc = p._proc
    assert proc is not None and proc.poll() is None
    p.close()
    assert proc.poll() is not None
    p.close()  # idempotent
