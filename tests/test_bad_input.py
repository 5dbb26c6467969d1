"""Bad input never becomes a database: corrupt, truncated or missing LTX files
in a real litestream replica, empty replicas, unreachable S3.

For each case: the API raises a typed lsvfs exception whose message names the
file (or the TXIDs around a gap) and the reason; the CLI prints exactly one
`lsvfs CMD: error: ...` line on stderr, no traceback, and exits 1; no output
or temp file is left; `lsvfs.connect` fails with a typed error (at connect)
or an apsw error (at query), never with wrong rows.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import pytest
import ltx_writer
from cli_support import one_error_line
from replication import ReplicatedPrimary, free_port

import lsvfs
from lsvfs import ltx
from lsvfs.plan import list_all, plan_for
from lsvfs.storage import SNAPSHOT_LEVEL
from lsvfs.storage.base import FileInfo
from lsvfs.storage.file import FileStorage

QUERY = "SELECT id, k, v FROM t ORDER BY id"
SMALL_FILE = 64 * 1024  # files up to this size are always read whole (and CRC-checked) by the VFS


@dataclass(frozen=True)
class Frozen:
    """A real litestream directory replica, no longer written to, and what it must hold."""

    replica: Path
    plan: tuple[FileInfo, ...]  # the latest restore plan, oldest first
    big: FileInfo  # an L0 file larger than SMALL_FILE, in the plan
    rows: list[tuple[Any, ...]]


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frozen]:
    """Transactions until litestream's first snapshot, then a small, a large (> 64 KiB) and two small ones.

    The latest plan is therefore the snapshot followed by four L0 files that
    nothing else covers.
    """
    # No L1 compaction while the fixture writes (Litestream's default runs one every 30 s, which a
    # loaded machine can reach): the plan's tail must stay the four L0 files.
    p = ReplicatedPrimary(tmp_path_factory.mktemp("bad-input-primary"), storage="file", page_size=4096,
                          levels=["1h"])
    try:
        i = p.write_until_snapshot(30, 300)
        for n, size in ((20, 300), (300, 500), (20, 300), (20, 300)):
            i += 1
            p.insert_rows(n, size, seed=i)
            p.wait_replicated()
        p.stop()
        rows = p.execute(QUERY)
        assert p.replica_dir is not None
        st = FileStorage(p.replica_dir)
        plan = tuple(plan_for(st))
        st.close()
        tail = plan[-4:]
        assert all(f.level == 0 for f in tail), plan
        big = max(tail, key=lambda f: f.size)
        assert big.size > SMALL_FILE and big is not plan[-1], plan
        assert plan[-1].size <= SMALL_FILE
        yield Frozen(p.replica_dir, plan, big, rows)
    finally:
        p.close()


def path_of(root: Path, f: FileInfo) -> Path:
    return root / "ltx" / str(f.level) / ltx.format_filename(f.min_txid, f.max_txid)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lsvfs", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)




def connect_fails_cleanly(url: str, expected_rows: list[tuple[Any, ...]], **options: Any) -> str:
    """`lsvfs.connect` + a full scan: a typed error at connect, an apsw error at query, or the right rows.

    Returns which of the three happened.
    """
    try:
        conn = lsvfs.connect(url, poll_interval=0, **options)
    except lsvfs.LsvfsError:
        assert url not in lsvfs.open_replicas(), "a failed open must not stay registered"
        return "connect"
    try:
        got = conn.execute(QUERY).fetchall()
    except apsw.Error:
        return "query"
    finally:
        conn.close()
    assert got == expected_rows, "a corrupt replica served wrong rows"
    return "rows"


def check_restore_fails(url: str, tmp_path: Path, exc_type: type[Exception], *must_name: str) -> Exception:
    """API and CLI restore both fail as `exc_type`, naming every string in `must_name`; nothing is left.

    Returns the API's exception."""
    outdir = tmp_path / "out"
    outdir.mkdir(exist_ok=True)
    with pytest.raises(exc_type) as exc:
        lsvfs.restore(url, outdir / "db.sqlite")
    msg = str(exc.value)
    for s in must_name:
        assert s in msg, (s, msg)
    assert os.listdir(outdir) == [], "a failed restore left files behind"
    line = one_error_line(cli("restore", url, str(outdir / "db.sqlite")), "restore")
    for s in must_name:
        assert s in line, (s, line)
    assert os.listdir(outdir) == []
    return exc.value


# ---- one damaged file in the plan ---------------------------------------------

Mutation = Callable[[bytes], bytes]


def flip(offset: Callable[[bytes], int], bit: int = 0) -> Mutation:
    def m(data: bytes) -> bytes:
        b = bytearray(data)
        b[offset(data)] ^= 1 << bit
        return bytes(b)
    return m


def put_u32(offset: int, value: int) -> Mutation:
    def m(data: bytes) -> bytes:
        return data[:offset] + struct.pack(">I", value) + data[offset + 4:]
    return m


def index_middle(data: bytes) -> int:
    off, length = ltx_writer.index_bounds(data, len(data))
    return off + length // 2


CASES: dict[str, tuple[Mutation, type[Exception], str]] = {
    # name: (mutation, exception type, reason regex)
    "header-commit-bit": (flip(lambda d: 15), lsvfs.ChecksumError, "file checksum mismatch"),
    "header-timestamp-bit": (flip(lambda d: 39, 3), lsvfs.ChecksumError, "file checksum mismatch"),
    "wrong-magic": (lambda d: b"LTX2" + d[4:], lsvfs.LTXError, "bad magic"),
    "invalid-page-size": (put_u32(8, 3000), lsvfs.LTXError, "invalid page size 3000"),
    "index-bit": (flip(index_middle, 2), lsvfs.LTXError, r"page index|checksum"),
    "frame-bit": (flip(lambda d: 100 + 10 + 40, 5), lsvfs.LTXError, r"page|checksum"),
    "trailer-post-apply-bit": (flip(lambda d: len(d) - 9), lsvfs.ChecksumError, "file checksum mismatch"),
    "trailer-file-checksum-bit": (flip(lambda d: len(d) - 1), lsvfs.ChecksumError, "file checksum mismatch"),
    "cut-tail": (lambda d: d[:-7], lsvfs.LTXError, "truncated|does not fit|too short"),
    "cut-half": (lambda d: d[:len(d) // 2], lsvfs.LTXError, "truncated|does not fit|too short|index"),
    "cut-in-header": (lambda d: d[:60], lsvfs.LTXError, "header truncated"),
    "empty-file": (lambda d: b"", lsvfs.LTXError, "header truncated"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_file_in_the_plan(frozen: Frozen, tmp_path: Path, case: str) -> None:
    """One damaged file (the newest in the plan): typed error naming it and the reason, API and CLI;
    `verify` names it; `connect` never serves rows from it."""
    mutate, exc_type, reason = CASES[case]
    rep = tmp_path / "rep"
    shutil.copytree(frozen.replica, rep)
    target = frozen.plan[-1]
    path = path_of(rep, target)
    path.write_bytes(mutate(path.read_bytes()))

    msg = str(check_restore_fails(str(rep), tmp_path, exc_type, target.name))
    assert re.search(reason, msg), msg

    r = cli("verify", str(rep))
    assert target.name in one_error_line(r, "verify")
    assert f"BAD {target.name}: " in r.stdout
    report = lsvfs.verify(str(rep))
    assert [f.name for f, _ in report.bad] == [target.name]

    for verify in ("frames", "files"):
        how = connect_fails_cleanly(str(rep), frozen.rows, verify=verify)
        assert how in ("connect", "query"), f"verify={verify}: {how}"  # small files are checked whole


def test_damaged_snapshot_first_in_the_plan(frozen: Frozen, tmp_path: Path) -> None:
    """Damage in the first file of the plan (litestream's snapshot) fails before any output exists."""
    rep = tmp_path / "rep"
    shutil.copytree(frozen.replica, rep)
    target = frozen.plan[0]
    assert target.level == SNAPSHOT_LEVEL or target.min_txid == 1
    path = path_of(rep, target)
    path.write_bytes(flip(lambda d: len(d) // 3)(path.read_bytes()))
    check_restore_fails(str(rep), tmp_path, lsvfs.LTXError, target.name)
    assert connect_fails_cleanly(str(rep), frozen.rows, verify="files") in ("connect", "query")


def test_every_single_bit_flip_is_caught(frozen: Frozen, tmp_path: Path) -> None:
    """Flipping any one bit of a plan file (header, every frame region, index, trailer) either fails the
    restore with an LTXError naming the file, or changes nothing SQLite would see. The file CRC-64 covers
    the decompressed pages, so a flip inside an LZ4 block that decodes to the same page (say, a match
    offset moved within a run of zeros) is harmless; anything else must be caught."""
    rep = tmp_path / "rep"
    shutil.copytree(frozen.replica, rep)
    target = frozen.plan[-1]
    path = path_of(rep, target)
    original = path.read_bytes()
    idx_off, _ = ltx_writer.index_bounds(original, len(original))
    n = len(original)
    offsets = set(range(0, 100)) | set(range(idx_off, n)) | set(range(100, idx_off, max(1, (idx_off - 100) // 300)))
    storage = FileStorage(rep)
    assert plan_for(storage) == list(frozen.plan), "the copy restores through the file being flipped"
    expected = lsvfs.restore(storage, tmp_path / "expected.db")
    expected_bytes = (tmp_path / "expected.db").read_bytes()
    storage.close()
    storage = FileStorage(rep)
    harmless = 0
    try:
        for off in sorted(offsets):
            b = bytearray(original)
            b[off] ^= 1 << (off % 8)
            path.write_bytes(bytes(b))
            try:
                res = lsvfs.restore(storage, tmp_path / "out.db")
            except lsvfs.LTXError as exc:
                assert target.name in str(exc), (off, exc)
                assert not (tmp_path / "out.db").exists()
            else:
                assert 100 <= off < idx_off, f"a flip at offset {off}, outside the page frames, was restored through"
                assert res.checksum == expected.checksum and res.files == expected.files, off
                assert (tmp_path / "out.db").read_bytes() == expected_bytes, \
                    f"a flip of bit {off % 8} at offset {off} of {target.name} restored different bytes"
                (tmp_path / "out.db").unlink()
                harmless += 1
            storage.close()  # drop the cached fd so the next rewrite is read afresh
            storage = FileStorage(rep)
    finally:
        storage.close()
    assert harmless < len(offsets) // 10, f"{harmless} of {len(offsets)} flips changed nothing: the check is not biting"
    assert sorted(os.listdir(tmp_path)) == ["expected.db", "rep"]


def test_header_name_mismatch(frozen: Frozen, tmp_path: Path) -> None:
    """A file whose header TXIDs disagree with its name (a misplaced file) is refused, naming it."""
    rep = tmp_path / "rep"
    shutil.copytree(frozen.replica, rep)
    a, b = frozen.plan[-2], frozen.plan[-1]
    pa, pb = path_of(rep, a), path_of(rep, b)
    data_a, data_b = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(data_b)
    pb.write_bytes(data_a)
    msg = str(check_restore_fails(str(rep), tmp_path, lsvfs.LTXError, a.name))
    assert "disagree with the file name" in msg
    assert connect_fails_cleanly(str(rep), frozen.rows) in ("connect", "query")


def test_large_file_literal_flip_caught_with_verify_files(frozen: Frozen, tmp_path: Path) -> None:
    """A flipped byte inside a page's LZ4 literals of a file > 64 KiB: restore and `verify=files`
    catch it by the file CRC-64 (`verify=frames` can not: see docs/reference.md, Verification)."""
    rep = tmp_path / "rep"
    shutil.copytree(frozen.replica, rep)
    path = path_of(rep, frozen.big)
    data = bytearray(path.read_bytes())
    idx_off, idx_len = ltx_writer.index_bounds(bytes(data), len(data))
    entries = lsvfs.ltx.core.decode_index(bytes(data[idx_off:idx_off + idx_len]), idx_off)
    # The largest frame is mostly incompressible row data: its middle is a literal run.
    _, off, size = max(entries, key=lambda e: e[2])
    data[off + size // 2] ^= 0x40
    path.write_bytes(bytes(data))
    check_restore_fails(str(rep), tmp_path, lsvfs.ChecksumError, frozen.big.name)
    assert connect_fails_cleanly(str(rep), frozen.rows, verify="files") in ("connect", "query")


# ---- missing files, empty replicas, unreachable storage ------------------------

def test_missing_file_in_the_middle_is_a_gap(frozen: Frozen, tmp_path: Path) -> None:
    """Deleting an L0 file that no other level covers: GapError naming the TXIDs on both sides."""
    rep = tmp_path / "rep"
    shutil.copytree(frozen.replica, rep)
    gone = frozen.plan[-2]
    before, after = frozen.plan[-3], frozen.plan[-1]
    st = FileStorage(rep)
    files = list_all(st)
    st.close()
    assert not [f for f in files if f != gone and f.min_txid <= gone.min_txid <= f.max_txid], \
        "precondition: nothing else holds the deleted TXIDs"
    path_of(rep, gone).unlink()
    msg = str(check_restore_fails(str(rep), tmp_path, lsvfs.GapError, f"{before.max_txid:016x}",
                                  f"{after.min_txid:016x}"))
    assert "gap in replica" in msg
    with pytest.raises(lsvfs.GapError) as exc:
        lsvfs.restore(str(rep), tmp_path / "x.db")
    assert (exc.value.before, exc.value.after) == (before.max_txid, after.min_txid)
    r = cli("verify", str(rep))
    assert f"{after.min_txid:016x}" in one_error_line(r, "verify")
    # Restoring up to just before the gap still works.
    res = lsvfs.restore(str(rep), tmp_path / "before-gap.db", txid=before.max_txid)
    assert res.txid == before.max_txid
    assert connect_fails_cleanly(str(rep), frozen.rows) == "connect"


@pytest.mark.parametrize("layout", ["no-directory", "empty-directory", "empty-levels", "only-stray-files"])
def test_empty_replica(tmp_path: Path, layout: str) -> None:
    """No LTX files at all: ReplicaError ("empty"), one CLI line, nothing written, connect refuses."""
    rep = tmp_path / "rep"
    if layout != "no-directory":
        rep.mkdir()
    if layout in ("empty-levels", "only-stray-files"):
        for lvl in (0, 1, 9):
            (rep / "ltx" / str(lvl)).mkdir(parents=True)
    if layout == "only-stray-files":
        (rep / "ltx" / "0" / "0000000000000001-0000000000000001.ltx.tmp").write_bytes(b"partial")
        (rep / "ltx" / "0" / "notes.txt").write_text("x")
    exc = check_restore_fails(str(rep), tmp_path, lsvfs.ReplicaError, "empty")
    assert not isinstance(exc, lsvfs.GapError)
    assert "empty" in one_error_line(cli("verify", str(rep)), "verify")
    with pytest.raises(lsvfs.ReplicaError, match="empty"):
        lsvfs.connect(str(rep), poll_interval=0)


def test_unreachable_s3_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An S3 endpoint on a closed 127.0.0.1 port: StorageError naming the endpoint, quickly, everywhere."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    endpoint = f"http://127.0.0.1:{free_port()}"
    url = f"s3://nowhere/db?endpoint={endpoint}&region=us-east-1&force-path-style=true"
    t0 = time.monotonic()
    assert "unreachable" in str(check_restore_fails(url, tmp_path, lsvfs.StorageError, endpoint))
    for cmd in ("ls", "verify"):
        assert endpoint in one_error_line(cli(cmd, url), cmd)
    with pytest.raises(lsvfs.StorageError, match="unreachable"):
        lsvfs.connect(url, poll_interval=0)
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("url", ["ftp://host/replica", "s3://", "file://host/path"])
def test_unusable_url(tmp_path: Path, url: str) -> None:
    """A URL lsvfs cannot use is one clear URLError line, not a traceback."""
    with pytest.raises(lsvfs.URLError):
        lsvfs.restore(url, tmp_path / "x.db")
    one_error_line(cli("restore", url, str(tmp_path / "x.db")), "restore")
    one_error_line(cli("ls", url), "ls")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("txid", "reason"), [(0, "older than the replica"), (1 << 40, "newer than the replica")])
def test_txid_outside_the_replica(frozen: Frozen, tmp_path: Path, txid: int, reason: str) -> None:
    """A TXID before the first or after the newest is a ReplicaError naming it, never a crash or a file."""
    exc = check_restore_fails_txid(str(frozen.replica), tmp_path, txid)
    assert isinstance(exc, lsvfs.ReplicaError) and not isinstance(exc, lsvfs.GapError)
    assert reason in str(exc) and f"{txid:016x}" in str(exc)


def check_restore_fails_txid(url: str, tmp_path: Path, txid: int) -> Exception:
    with pytest.raises(lsvfs.ReplicaError) as exc:
        lsvfs.restore(url, tmp_path / "x.db", txid=txid)
    line = one_error_line(cli("restore", url, str(tmp_path / "x.db"), "--txid", f"{txid:x}"), "restore")
    assert f"{txid:016x}" in line
    assert os.listdir(tmp_path) == []
    return exc.value
