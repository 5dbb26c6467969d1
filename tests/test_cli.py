"""The `lsvfs` command line: ls, restore (atomic, verified, no clobbering,
progress bar on a terminal only), verify, and both entry points
(`python -m lsvfs` and the `lsvfs` console script).
"""

from __future__ import annotations

import gc
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import apsw
import ltx_writer
import pytest
from cli_support import one_error_line, run_with_pty_stderr
from replication import MakePrimary, ReplicatedPrimary, litestream_binary

import lsvfs
from lsvfs import cli as cli_module
from lsvfs import log as lsvfs_log
from lsvfs import ltx
from lsvfs.plan import list_all, plan_for
from lsvfs.progress import ProgressBar, StatusLine, amount
from lsvfs.storage import open_storage
from lsvfs.storage.file import FileStorage

CONSOLE_SCRIPT = shutil.which("lsvfs", path=str(Path(sys.executable).parent)) or shutil.which("lsvfs")


@dataclass(frozen=True)
class Frozen:
    """A real litestream directory replica, no longer written to."""

    replica: Path
    txid: int
    image: bytes


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frozen]:
    """Replicated transactions by real litestream until its first snapshot (L9), three more after it,
    then litestream stopped: the latest plan is the snapshot plus L0 files."""
    p = ReplicatedPrimary(tmp_path_factory.mktemp("cli-primary"), storage="file", page_size=4096)
    try:
        p.write_until_snapshot(40, 300)
        for j in range(3):
            p.insert_rows(40, 300, seed=100 + j)
            p.wait_replicated()
        p.stop()
        image = p.image()
        assert p.replica_dir is not None
        plan = plan_for(FileStorage(p.replica_dir))
        assert len(plan) >= 2 and plan[-1].level == 0, plan
        yield Frozen(p.replica_dir, plan[-1].max_txid, image)
    finally:
        p.close()


def copy_replica(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def l0_files(replica: Path) -> list[Path]:
    return sorted((replica / "ltx" / "0").glob("*.ltx"))


def plan_paths(replica: Path) -> list[Path]:
    """The files `restore` applies for the latest state, in order."""
    st = FileStorage(replica)
    try:
        return [st.path_of(f) for f in plan_for(st)]
    finally:
        st.close()


def cli(*args: str, script: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m lsvfs ARGS` (or the console script), stdin closed, output captured."""
    head = [CONSOLE_SCRIPT] if script else [sys.executable, "-m", "lsvfs"]
    assert head[0], "console script `lsvfs` not found"
    return subprocess.run([*head, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)




def checksummed_replica(root: Path, *, corrupt_post_apply: bool = False) -> bytes:
    """A directory replica whose files carry rolling checksums (no NoChecksum flag).

    Two files: a snapshot at TXID 1 and an update at TXID 2. With
    `corrupt_post_apply`, the last file's post-apply checksum is wrong while its
    own CRC-64 is valid, so only the whole-database check can catch it.
    Returns the database image at TXID 2.
    """
    ps = 4096
    conn = apsw.Connection(":memory:")
    conn.execute(f"PRAGMA page_size={ps}; CREATE TABLE t(x); "
                 "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40) "
                 "INSERT INTO t SELECT randomblob(500) FROM n")
    img1 = bytes(conn.serialize("main"))
    conn.execute("UPDATE t SET x = randomblob(500) WHERE rowid % 5 = 0")
    img2 = bytes(conn.serialize("main"))
    conn.close()
    assert len(img1) == len(img2)

    def pages(img: bytes, only_changed_from: bytes | None = None) -> list[tuple[int, bytes]]:
        out = []
        for i in range(len(img) // ps):
            page = img[i * ps:(i + 1) * ps]
            if only_changed_from is None or page != only_changed_from[i * ps:(i + 1) * ps]:
                out.append((i + 1, page))
        return out

    c1 = ltx_writer.database_checksum(img1, ps)
    c2 = ltx_writer.database_checksum(img2, ps)
    now = int(time.time() * 1000)
    f1 = ltx_writer.encode(ltx.Header(0, ps, len(img1) // ps, 1, 1, now - 1000), pages(img1), post_apply_checksum=c1)
    bad = (c2 ^ 0x1234) | ltx.CHECKSUM_FLAG
    f2 = ltx_writer.encode(ltx.Header(0, ps, len(img2) // ps, 2, 2, now, pre_apply_checksum=c1),
                    pages(img2, img1), post_apply_checksum=bad if corrupt_post_apply else c2)
    d = root / "ltx" / "0"
    d.mkdir(parents=True)
    (d / ltx.format_filename(1, 1)).write_bytes(f1)
    (d / ltx.format_filename(2, 2)).write_bytes(f2)
    return img2


# ---- ls -------------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_ls_lists_every_file_with_level_range_size_time(make_primary: MakePrimary, storage: str) -> None:
    """Each `ls` row is (level, min, max, size, time) of exactly one file the storage lists, in order."""
    p = make_primary(storage)
    for i in range(3):
        p.insert_rows(20, 200, seed=i)
        p.wait_replicated()
    p.stop()
    st = open_storage(p.replica_url)
    try:
        files = sorted(list_all(st), key=lambda f: (f.level, f.min_txid, f.max_txid))
    finally:
        st.close()
    assert len(files) >= 3
    r = cli("ls", p.replica_url)
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["level", "min_txid", "max_txid", "size", "modified"]
    assert len(rows) == len(files)
    for row, f in zip(rows, files):
        level, lo, hi, size, when = row.split()
        assert (int(level), int(lo, 16), int(hi, 16), int(size)) == (f.level, f.min_txid, f.max_txid, f.size)
        assert len(lo) == len(hi) == 16
        assert f.modified is not None
        shown = datetime.fromisoformat(when)
        assert abs((shown - f.modified).total_seconds()) < 1.0, (when, f.modified)
        if storage == "file":
            assert p.replica_dir is not None
            path = p.replica_dir / "ltx" / str(f.level) / ltx.format_filename(f.min_txid, f.max_txid)
            assert path.stat().st_size == f.size
            mtime = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
            assert abs((shown - mtime).total_seconds()) < 1.0


@pytest.mark.parametrize("layout", ["empty-levels", "no-directory", "a-file"])
def test_ls_empty_or_missing_replica_is_an_error(tmp_path: Path, layout: str) -> None:
    """A replica with no LTX files, or no directory at all, is one error line and exit 1, not an
    empty table (a mistyped path must not look like a replica that has no backups yet)."""
    rep = tmp_path / "rep"
    if layout == "empty-levels":
        (rep / "ltx" / "0").mkdir(parents=True)
    elif layout == "a-file":
        rep.write_bytes(b"not a replica")
    line = one_error_line(cli("ls", str(rep)), "ls")
    want = {"empty-levels": "no LTX files", "no-directory": "does not exist", "a-file": "is not a directory"}
    assert str(rep) in line and want[layout] in line
    assert cli("ls", str(rep)).stdout == ""


# ---- restore: atomic, verified, never clobbering -------------------------------

def test_restore_refuses_to_overwrite_without_force(frozen: Frozen, tmp_path: Path) -> None:
    """An existing OUT is left untouched (exit non-zero) unless --force, which replaces it."""
    out = tmp_path / "out.db"
    out.write_bytes(b"precious")
    before = out.stat()
    r = cli("restore", str(frozen.replica), str(out))
    line = one_error_line(r, "restore")
    assert "exists" in line and "--force" in line and str(out) in line
    assert out.read_bytes() == b"precious"
    assert out.stat().st_mtime_ns == before.st_mtime_ns and out.stat().st_ino == before.st_ino
    assert sorted(os.listdir(tmp_path)) == ["out.db"]

    with pytest.raises(FileExistsError):
        lsvfs.restore(str(frozen.replica), out)
    assert out.read_bytes() == b"precious"

    r = cli("restore", str(frozen.replica), str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == frozen.image
    assert sorted(os.listdir(tmp_path)) == ["out.db"]


def test_restore_never_clobbers_a_file_that_appears_meanwhile(frozen: Frozen, tmp_path: Path) -> None:
    """OUT created by someone else while the restore runs is not overwritten without force."""
    out = tmp_path / "out.db"

    def someone_else(done: int, total: int) -> None:
        if not out.exists():
            out.write_bytes(b"theirs")

    with pytest.raises(FileExistsError):
        lsvfs.restore(str(frozen.replica), out, progress=someone_else)
    assert out.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["out.db"]
    lsvfs.restore(str(frozen.replica), out, progress=someone_else, force=True)
    assert out.read_bytes() == frozen.image
    assert os.listdir(tmp_path) == ["out.db"]


def test_failed_restore_leaves_no_output_and_no_temp_file(frozen: Frozen, tmp_path: Path) -> None:
    """A restore that fails after writing part of the database removes its temp file; OUT never appears."""
    rep = copy_replica(frozen.replica, tmp_path / "rep")
    last = plan_paths(rep)[-1]
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x10  # a frame of the last file in the plan
    last.write_bytes(bytes(data))
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "db.sqlite"

    seen: list[list[str]] = []
    with pytest.raises(lsvfs.LTXError, match=last.name):
        lsvfs.restore(str(rep), out, progress=lambda done, total: seen.append(sorted(os.listdir(outdir))))
    # Earlier files were written to a temp file beside OUT (so the rename is atomic) ...
    assert seen and all(len(names) == 1 and names[0].startswith(".db.sqlite.") and names[0].endswith(".tmp")
                        for names in seen), seen
    # ... which is gone now, and OUT never existed.
    assert os.listdir(outdir) == []

    r = cli("restore", str(rep), str(out))
    line = one_error_line(r, "restore")
    assert last.name in line
    assert os.listdir(outdir) == []


def test_interrupted_restore_removes_its_temp_file(frozen: Frozen, tmp_path: Path) -> None:
    """Any exception mid-restore (here KeyboardInterrupt from the progress callback) leaves nothing behind."""
    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lsvfs.restore(str(frozen.replica), tmp_path / "x.db", progress=interrupt)
    assert os.listdir(tmp_path) == []


def test_restore_verifies_database_checksum_before_rename(tmp_path: Path) -> None:
    """Where files carry rolling checksums, a restored database whose checksum disagrees never appears."""
    good = tmp_path / "good"
    img = checksummed_replica(good)
    res = lsvfs.restore(str(good), tmp_path / "good.db")
    assert res.checksum_verified and res.checksum == ltx_writer.database_checksum(img, 4096)
    assert (tmp_path / "good.db").read_bytes() == img
    r = cli("restore", str(good), str(tmp_path / "good-cli.db"))
    assert r.returncode == 0, r.stderr
    assert "(verified)" in r.stdout

    bad = tmp_path / "bad"
    checksummed_replica(bad, corrupt_post_apply=True)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(lsvfs.ChecksumError, match="post-apply checksum") as exc:
        lsvfs.restore(str(bad), out / "bad.db")
    assert "0000000000000002-0000000000000002.ltx" in str(exc.value)
    line = one_error_line(cli("restore", str(bad), str(out / "bad.db")), "restore")
    assert "post-apply checksum" in line
    assert os.listdir(out) == []

    # verify sees it too, and passes the good one.
    r = cli("verify", str(good))
    assert r.returncode == 0, r.stderr
    assert "matches the post-apply checksum" in r.stdout
    r = cli("verify", str(bad))
    assert r.returncode == 1
    assert "BAD L0/0000000000000002-0000000000000002.ltx" in r.stdout


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_restored_file_has_the_usual_mode(frozen: Frozen, tmp_path: Path, umask: int) -> None:
    """The output gets 0666 & ~umask like any new file (and like `litestream restore`), not the
    temp file's 0600."""
    r = subprocess.run(["sh", "-c", f'umask {umask:03o} && exec "$0" -m lsvfs restore "$1" "$2"',
                        sys.executable, str(frozen.replica), str(tmp_path / "m.db")],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.db").stat().st_mode & 0o777 == 0o666 & ~umask
    r = subprocess.run(["sh", "-c", f'umask {umask:03o} && exec "$0" restore -o "$1" "$2"', litestream_binary(),
                        str(tmp_path / "lit.db"), frozen.replica.as_uri()],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "lit.db").stat().st_mode & 0o777 == (tmp_path / "m.db").stat().st_mode & 0o777


def test_restore_txid_and_timestamp_options(frozen: Frozen, tmp_path: Path) -> None:
    """--txid takes hex (with or without 0x) or #decimal; --txid/--timestamp exclude each other;
    a time before the replica is one clear error."""
    for i, spelling in enumerate([f"{frozen.txid:016x}", f"0x{frozen.txid:x}", f"#{frozen.txid}"]):
        r = cli("restore", str(frozen.replica), str(tmp_path / f"t{i}.db"), "--txid", spelling)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / f"t{i}.db").read_bytes() == frozen.image
    r = cli("restore", str(frozen.replica), str(tmp_path / "x.db"), "--txid", "1", "--timestamp", "1 hour ago")
    assert r.returncode == 2 and "not allowed with" in r.stderr and "Traceback" not in r.stderr
    r = cli("restore", str(frozen.replica), str(tmp_path / "x.db"), "--txid", "zz")
    assert r.returncode == 2 and "not a TXID" in r.stderr
    line = one_error_line(cli("restore", str(frozen.replica), str(tmp_path / "x.db"), "--timestamp",
                              "10 days ago"), "restore")
    assert "no state at or before" in line
    line = one_error_line(cli("restore", str(frozen.replica), str(tmp_path / "x.db"), "--txid",
                              f"{frozen.txid + 5:x}"), "restore")
    assert "newer than the replica" in line
    assert sorted(os.listdir(tmp_path)) == ["t0.db", "t1.db", "t2.db"]


# ---- progress bar ----------------------------------------------------------------

def test_progress_bar_on_a_terminal_only(frozen: Frozen, tmp_path: Path) -> None:
    """With stderr on a tty, restore and verify draw a bar ending at 100%; piped, they print none."""
    rc, out, tty = run_with_pty_stderr([sys.executable, "-m", "lsvfs", "restore", str(frozen.replica),
                                        str(tmp_path / "tty.db")])
    assert rc == 0, tty
    assert "restoring [" in tty and "100.0%" in tty and "#" * 30 in tty, repr(tty)
    assert "restoring [" not in out  # the bar is on stderr, the summary on stdout
    assert "restored TXID" in out
    assert (tmp_path / "tty.db").read_bytes() == frozen.image

    rc, out, tty = run_with_pty_stderr([sys.executable, "-m", "lsvfs", "verify", str(frozen.replica)])
    assert rc == 0 and "verifying [" in tty and "100.0%" in tty, repr(tty)

    r = cli("restore", str(frozen.replica), str(tmp_path / "pipe.db"))
    assert r.returncode == 0 and r.stderr == ""
    r = cli("verify", str(frozen.replica))
    assert r.returncode == 0 and r.stderr == ""


def test_hydrate_command(frozen: Frozen, tmp_path: Path) -> None:
    """`lsvfs hydrate` fills the file with the newest TXID (a bar on a terminal), and a second
    run finds it current: quiet when piped, the same bytes, `litestream restore`'s."""
    out_db = tmp_path / "hydrated.db"
    rc, out, tty = run_with_pty_stderr([sys.executable, "-m", "lsvfs", "hydrate", str(frozen.replica), str(out_db)])
    assert rc == 0, tty
    assert "hydrating [" in tty and "100.0%" in tty, repr(tty)
    assert f"hydrated TXID {frozen.txid:016x}" in out
    assert out_db.read_bytes() == frozen.image
    r = cli("hydrate", str(frozen.replica), str(out_db))
    assert r.returncode == 0 and r.stderr == "" and f"hydrated TXID {frozen.txid:016x}" in r.stdout
    assert out_db.read_bytes() == frozen.image
    line = one_error_line(cli("hydrate", str(tmp_path / "nowhere"), str(out_db)), "hydrate")
    assert "does not exist" in line


# ---- verify ----------------------------------------------------------------------

def test_verify_good_replica(frozen: Frozen) -> None:
    """A replica straight from litestream verifies: exit 0, every file counted, the latest TXID named."""
    n = len(list_all(FileStorage(frozen.replica)))
    r = cli("verify", str(frozen.replica))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"ok: {n} files")
    assert f"latest TXID {frozen.txid:016x}" in r.stdout
    report = lsvfs.verify(str(frozen.replica))
    assert report.ok and report.files_checked == n and report.txid == frozen.txid


@pytest.mark.parametrize("which", [0, -1])
def test_verify_names_the_corrupt_file(frozen: Frozen, tmp_path: Path, which: int) -> None:
    """One flipped bit in one file (first or last): exit 1, the file named on stdout and in one stderr line."""
    rep = copy_replica(frozen.replica, tmp_path / "rep")
    target = l0_files(rep)[which]
    data = bytearray(target.read_bytes())
    data[min(200, len(data) // 2)] ^= 0x01  # a sync with no pages writes a file of ~130 bytes
    target.write_bytes(bytes(data))
    r = cli("verify", str(rep))
    line = one_error_line(r, "verify")
    name = f"L0/{target.name}"
    assert name in line
    bad = [ln for ln in r.stdout.splitlines() if ln.startswith("BAD ")]
    assert bad == [ln for ln in bad if name in ln] and len(bad) == 1, r.stdout
    report = lsvfs.verify(str(rep))
    assert not report.ok and [f.name for f, _ in report.bad] == [name]


# ---- entry points ----------------------------------------------------------------

def test_python_dash_m_and_console_script_agree(frozen: Frozen, tmp_path: Path) -> None:
    """`python -m lsvfs` and `lsvfs` are the same program: same help, same listing, same restore."""
    assert CONSOLE_SCRIPT is not None
    a, b = cli("--help"), cli("--help", script=True)
    assert a.returncode == b.returncode == 0
    for sub in ("ls", "restore", "verify", "demo"):
        assert sub in a.stdout
    assert a.stdout.replace("__main__.py", "lsvfs") == b.stdout
    a, b = cli("ls", str(frozen.replica)), cli("ls", str(frozen.replica), script=True)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout and len(a.stdout.splitlines()) > 1
    r = cli("restore", str(frozen.replica), str(tmp_path / "s.db"), script=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s.db").read_bytes() == frozen.image
    r = cli(script=True)
    assert r.returncode == 2 and "usage: lsvfs" in r.stderr


def test_console_script_skips_the_final_collections(frozen: Frozen, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The entry point freezes the heap once the command is done (exit without ~0.2 s of
    garbage collection over botocore's model) and exits with the command's status."""
    frozen_counts: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen_counts.append(1))
    for argv, status in ((["lsvfs", "ls", str(frozen.replica)], 0), (["lsvfs", "ls", "/no/such/replica"], 1)):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_:
            cli_module.run()
        assert exit_.value.code == status
    assert frozen_counts == [1, 1]
    out = capsys.readouterr()
    assert len(out.out.splitlines()) > 1 and "no/such/replica" in out.err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_verify_progress_spans_both_passes(frozen: Frozen) -> None:
    """verify's progress counts the file checks and then the rebuild of the newest state against
    one total, so a bar reaches 100% only when verify is done."""
    calls: list[tuple[int, int]] = []
    assert lsvfs.verify(str(frozen.replica), progress=lambda done, total: calls.append((done, total))).ok
    st = FileStorage(frozen.replica)
    checked, rebuilt = sum(f.size for f in list_all(st)), sum(f.size for f in plan_for(st))
    st.close()
    assert {total for _, total in calls} == {checked + rebuilt}
    dones = [done for done, _ in calls]
    assert dones == sorted(dones) and checked in dones and dones[-1] == checked + rebuilt


def test_progress_bar_draws_only_on_a_terminal_and_ends_its_line() -> None:
    """Drawn on a terminal, ended with a newline when done or closed early; nothing when piped."""
    tty = FakeTerminal()
    with ProgressBar("restoring", tty) as bar:
        bar(0, 4_000_000)
    assert tty.getvalue().startswith("\rrestoring [") and "0.0%" in tty.getvalue()
    assert tty.getvalue().endswith("\n") and tty.getvalue().count("\n") == 1
    tty = FakeTerminal()
    with ProgressBar("verifying", tty) as bar:
        bar(4_000_000, 4_000_000)
    assert f"[{'#' * 30}] 100.0% 4.0/4.0 MB\n" in tty.getvalue() and tty.getvalue().count("\n") == 1
    piped = io.StringIO()
    with ProgressBar("restoring", piped) as bar:
        bar(1, 2)
        bar(2, 2)
    assert piped.getvalue() == ""


def test_amounts_are_shown_in_the_unit_that_suits_them() -> None:
    assert [amount(0, 0), amount(400, 1300), amount(4_000_000, 4_000_000), amount(12_345_678),
            amount(2_500_000_000, 3_000_000_000)] == ["0/0 B", "0.4/1.3 kB", "4.0/4.0 MB", "12.3 MB", "2.5/3.0 GB"]


def test_a_log_record_erases_the_status_line_and_starts_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A WARNING while `lsvfs mirror` shows its status line lands on a line of its own,
    and the next status is drawn below it; after the line is closed, records are left alone."""
    tty = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", tty)
    lsvfs_log.to_stderr(logging.WARNING)
    log = logging.getLogger("lsvfs.test")
    with StatusLine() as line:
        line("TXID 1")
        log.warning("storage is slow")
        line("TXID 2")
    log.warning("after")
    shown = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", tty.getvalue())
    assert shown == ("\rTXID 1\x1b[K\r\x1b[KWARNING lsvfs.test: storage is slow\n\rTXID 2\x1b[K\n"
                     "WARNING lsvfs.test: after\n"), repr(tty.getvalue())


def test_failed_verify_on_a_terminal_puts_the_error_on_its_own_line(frozen: Frozen, tmp_path: Path) -> None:
    rep = copy_replica(frozen.replica, tmp_path / "rep")
    target = l0_files(rep)[0]
    data = bytearray(target.read_bytes())
    data[200] ^= 0x01
    target.write_bytes(bytes(data))
    rc, out, tty = run_with_pty_stderr([sys.executable, "-m", "lsvfs", "verify", str(rep)])
    assert rc == 1 and f"BAD L0/{target.name}" in out
    last = tty.replace("\r\n", "\n").rstrip("\n").split("\n")[-1]
    assert last.startswith("lsvfs verify: error: ") and "verifying [" in tty, repr(tty)
