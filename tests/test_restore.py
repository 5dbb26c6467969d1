"""Restore equals the primary: every page size, directory and S3, multi-level
replicas with L0 gaps, and point-in-time restores by TXID and by time.

Every comparison is against two independent oracles: the primary's own bytes
(`image()`, recorded at each state) and `litestream restore` of the same
replica. Both the API (`lsvfs.restore`) and the CLI (`python -m lsvfs
restore`) are checked.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from replication import FAST_COMPACTION, MakePrimary, ReplicatedPrimary, ReplicationError

import lsvfs
from lsvfs.plan import Target, build, list_all
from lsvfs.storage import SNAPSHOT_LEVEL
from lsvfs.timeutil import format_time

PAGE_SIZES = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]


@dataclass(frozen=True)
class State:
    """What the primary held after one replicated step."""

    label: str
    txid: int
    image: bytes
    done_ms: int  # wall clock just after the replica was seen to hold it


def now_ms() -> int:
    return int(time.time() * 1000)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m lsvfs ARGS` with stdin closed and output captured."""
    return subprocess.run([sys.executable, "-m", "lsvfs", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def assert_same_pages(got: bytes, want: bytes, page_size: int, what: str) -> None:
    """Byte-for-byte equality, reported as the list of differing pgnos."""
    if got == want:
        return
    n = max(len(got), len(want)) // page_size
    bad = [i + 1 for i in range(n) if got[i * page_size:(i + 1) * page_size] != want[i * page_size:(i + 1) * page_size]]
    raise AssertionError(f"{what}: {len(got)} bytes vs {len(want)} expected; pages differing: {bad[:20]}"
                         f"{' ...' if len(bad) > 20 else ''}")


def record(p: ReplicatedPrimary, label: str, states: list[State]) -> State:
    """Wait until the replica holds everything committed, then note its TXID, bytes and the time.

    The TXID is the replica's newest: the one `wait_replicated` returns can lag
    the bytes it checked when litestream uploads a file during its verifying
    `litestream restore` (seen on S3: two steps reported with one TXID).
    """
    reported = p.wait_replicated()
    image = p.image()
    txid = p.newest_listed()
    assert txid >= reported
    s = State(label, txid, image, now_ms())
    states.append(s)
    return s


def write_states(p: ReplicatedPrimary, rows: int, size: int, pause: float = 0.0) -> list[State]:
    """Inserts, updates, deletes, more inserts, then a delete + VACUUM that shrinks the file.

    Each step is replicated and recorded; `pause` separates steps in time.
    """
    states: list[State] = []
    steps = [
        ("insert", lambda: p.insert_rows(rows, size, seed=1)),
        ("update", lambda: p.update_rows("id % 3 = 0", size, seed=2)),
        ("delete", lambda: p.delete_rows("id % 4 = 1")),
        ("insert2", lambda: p.insert_rows(rows, size, seed=3)),
        ("vacuum", lambda: (p.delete_rows("id % 2 = 0"), p.vacuum())),
    ]
    for label, step in steps:
        if pause and states:
            time.sleep(pause)
        step()
        record(p, label, states)
    txids = [(s.label, s.txid) for s in states]
    assert len({s.txid for s in states}) == len(states), f"every step must be its own TXID: {txids}"
    assert len(states[-1].image) < max(len(s.image) for s in states[:-1]), "VACUUM did not shrink the file"
    return states


# ---- the page-size matrix -----------------------------------------------------

# Page arithmetic does not depend on the storage: every size on a directory, and
# S3 (seconds per case against moto) at the smallest, the default and the largest.
@pytest.mark.parametrize(("storage", "page_size"), [("file", n) for n in PAGE_SIZES]
                         + [("s3", n) for n in (512, 4096, 65536)])
def test_restore_equals_primary_and_litestream(make_primary: MakePrimary, tmp_path: Path, storage: str,
                                               page_size: int) -> None:
    """API and CLI restores (latest and at earlier TXIDs) equal the primary's bytes and `litestream restore`.

    Directory replicas check every state; S3 (slower per request) checks the
    latest and the largest state, with the CLI at 4096.
    """
    p = make_primary(storage, page_size=page_size)
    size = min(page_size // 3, 700)
    states = write_states(p, rows=max(16, 12 * page_size // size), size=size)  # ~12 pages per insert
    final = states[-1]
    big = max(states[:-1], key=lambda s: len(s.image))  # before the VACUUM shrank the file
    full = storage == "file"
    cli = full or page_size == 4096

    lit = p.litestream_restore(tmp_path / "lit.db").read_bytes()
    assert_same_pages(lit, final.image, page_size, "litestream restore vs primary")

    res = lsvfs.restore(p.replica_url, tmp_path / "api.db")
    assert (res.txid, res.page_size, res.commit) == (final.txid, page_size, len(final.image) // page_size)
    assert_same_pages((tmp_path / "api.db").read_bytes(), final.image, page_size, "lsvfs.restore latest")

    for s in states[:-1] if full else [big]:
        out = tmp_path / f"api-{s.txid}.db"
        assert lsvfs.restore(p.replica_url, out, txid=s.txid).txid == s.txid
        assert_same_pages(out.read_bytes(), s.image, page_size, f"lsvfs.restore txid={s.txid} ({s.label})")
        lit_s = p.litestream_restore(tmp_path / f"lit-{s.txid}.db", txid=s.txid).read_bytes()
        assert_same_pages(lit_s, s.image, page_size, f"litestream restore -txid {s.txid}")

    if cli:
        r = run_cli("restore", p.replica_url, str(tmp_path / "cli.db"))
        assert r.returncode == 0, r.stderr
        assert f"restored TXID {final.txid:016x}" in r.stdout
        assert_same_pages((tmp_path / "cli.db").read_bytes(), final.image, page_size, "CLI restore latest")
        r = run_cli("restore", p.replica_url, str(tmp_path / "cli-txid.db"), "--txid", f"{big.txid:016x}")
        assert r.returncode == 0, r.stderr
        assert_same_pages((tmp_path / "cli-txid.db").read_bytes(), big.image, page_size, "CLI --txid")


# ---- point in time by timestamp ----------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_timestamp_between_states(make_primary: MakePrimary, tmp_path: Path, storage: str) -> None:
    """`--timestamp T` between two states gives exactly what the primary held at T (API, CLI; and
    `litestream restore -timestamp` agrees on a directory replica)."""
    p = make_primary(storage, page_size=4096)
    states = write_states(p, rows=30, size=300, pause=0.4)
    for before, after in zip(states, states[1:]):
        t = before.done_ms + 150  # the next step starts >= 400 ms after before.done_ms
        assert t < after.done_ms
        ts = format_time(t)
        out = tmp_path / f"ts-{before.txid}.db"
        res = lsvfs.restore(p.replica_url, out, timestamp_ms=t)
        assert res.txid == before.txid, f"{ts}: restored {res.txid}, primary held {before.txid} ({before.label})"
        assert_same_pages(out.read_bytes(), before.image, 4096, f"lsvfs.restore timestamp {ts}")
        if storage == "file":
            # litestream judges S3 objects by LastModified, which moto keeps to the second, so only
            # a directory replica gives it the sub-second resolution these states need.
            lit = p.litestream_restore(tmp_path / f"lit-ts-{before.txid}.db", timestamp=ts).read_bytes()
            assert_same_pages(lit, before.image, 4096, f"litestream restore -timestamp {ts}")
    # The CLI, at the time just before the VACUUM.
    before = states[-2]
    ts = format_time(before.done_ms + 150)
    r = run_cli("restore", p.replica_url, str(tmp_path / "cli-ts.db"), "--timestamp", ts)
    assert r.returncode == 0, r.stderr
    assert_same_pages((tmp_path / "cli-ts.db").read_bytes(), before.image, 4096, f"CLI --timestamp {ts}")
    # A time after the last state is the latest state.
    res = lsvfs.restore(p.replica_url, tmp_path / "late.db", timestamp_ms=now_ms() + 1000)
    assert res.txid == states[-1].txid
    assert (tmp_path / "late.db").read_bytes() == states[-1].image
    # A time before the replica existed is a clean ReplicaError, and no file.
    with pytest.raises(lsvfs.ReplicaError, match="no state at or before"):
        lsvfs.restore(p.replica_url, tmp_path / "early.db", timestamp_ms=states[0].done_ms - 60_000)
    assert not (tmp_path / "early.db").exists()


# ---- multi-level replica with L0 gaps ----------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_multi_level_replica_with_l0_gap(make_primary: MakePrimary, tmp_path: Path, storage: str) -> None:
    """Across a real L0 retention gap covered by higher levels, lsvfs restores what litestream restores,
    latest and at every TXID either of them can reach."""
    page_size = 1024
    p = make_primary(storage, page_size=page_size, **FAST_COMPACTION)
    p.create_table()
    deadline = time.monotonic() + 40
    i = 0
    while True:
        i += 1
        p.insert_rows(20, 200, seed=i)
        if i % 3 == 0:
            p.update_rows(f"id % 5 = {i % 5}", 200, seed=i)
        if i % 4 == 0:
            p.delete_rows(f"id % 7 = {i % 7}")
        p.wait_replicated(exact=False)
        files = p.replica_files()
        if files[0] and files[1] and files[SNAPSHOT_LEVEL] and files[0][0].min_txid > 3:
            break
        assert time.monotonic() < deadline, f"no multi-level replica with an L0 gap after {i} writes: {files}"
        time.sleep(0.2)
    p.delete_rows("id % 2 = 0")
    p.vacuum()
    reported = p.wait_replicated()
    image = p.image()
    p.stop()  # freeze the replica: nothing compacts or expires under the restores below
    assert p.image() == image
    txid = p.newest_listed()
    assert txid >= reported

    storage_client = p.open_storage()
    try:
        listing = list_all(storage_client)
    finally:
        storage_client.close()
    l0 = sorted(f for f in listing if f.level == 0)
    higher = [f for f in listing if f.level > 0]
    first_l0 = l0[0].min_txid
    # The gap really exists: L0 starts after TXID 1, and only higher levels hold what came before.
    assert first_l0 > 1
    assert any(f.min_txid <= first_l0 - 1 <= f.max_txid for f in higher)

    lit = p.litestream_restore(tmp_path / "lit.db").read_bytes()
    assert_same_pages(lit, image, page_size, "litestream restore vs primary")
    res = lsvfs.restore(p.replica_url, tmp_path / "api.db")
    assert res.txid == txid
    assert any(f.level > 0 for f in res.files), "the plan must cross the gap through a higher level"
    assert_same_pages((tmp_path / "api.db").read_bytes(), image, page_size, "lsvfs.restore across the L0 gap")
    r = run_cli("restore", p.replica_url, str(tmp_path / "cli.db"))
    assert r.returncode == 0, r.stderr
    assert_same_pages((tmp_path / "cli.db").read_bytes(), image, page_size, "CLI restore across the L0 gap")

    # TXIDs before L0 starts that no file ends at: they exist only inside compacted files.
    ends = {f.max_txid for f in listing}
    inside = sorted({t for f in higher for t in range(f.min_txid, f.max_txid) if t < first_l0} - ends)
    # Every TXID on a directory replica; on S3 every file end and one TXID inside a compacted file.
    candidates = set(range(1, txid + 1)) if storage == "file" else ends | set(inside[-1:])
    restorable = refused = 0
    for t in sorted(candidates):
        try:
            build(listing, Target(txid=t))
        except lsvfs.ReplicaError:
            # Not a point lsvfs can rebuild: a clean ReplicaError naming the TXID, and litestream agrees.
            with pytest.raises(lsvfs.ReplicaError, match=f"{t:016x}") as exc:
                lsvfs.restore(p.replica_url, tmp_path / f"no-{t}.db", txid=t)
            assert not isinstance(exc.value, lsvfs.GapError), exc.value
            assert not (tmp_path / f"no-{t}.db").exists()
            with pytest.raises(ReplicationError):
                p.litestream_restore(tmp_path / f"lit-no-{t}.db", txid=t)
            refused += 1
            continue
        restorable += 1
        got = tmp_path / f"api-{t}.db"
        assert lsvfs.restore(p.replica_url, got, txid=t).txid == t
        want = p.litestream_restore(tmp_path / f"lit-{t}.db", txid=t).read_bytes()
        assert_same_pages(got.read_bytes(), want, page_size, f"lsvfs vs litestream at txid {t}")
    assert restorable >= 2
    assert refused >= len(inside[-1:])
