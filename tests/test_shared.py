"""shared_dir: one leader per host mirrors the replica; every process reads the mirror.

Real `litestream replicate` (dir and S3), real reader processes
(tests/shared_worker.py), the leader SIGKILLed at injected points, and each
bad directory refused with a message naming it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from cli_support import ctrl_c_works, run_with_pty_stderr
from replication import MakePrimary, ReplicatedPrimary, wait_until
from shared_support import (
    ACCOUNTS,
    POLL,
    Workers,
    bank,
    check_mirror,
    mirror_within,
    quiet_requests_are_one_pollers,
    status,
    transfer,
)
from shared_worker import one, reads_outside_shared_pages
from test_lineage import _commit_rows, _primary_with_rows, _reads, _second_primary, _warnings, _who, _wipe
from test_prefetch_and_hydration import hydrated_at

import lsvfs
from lsvfs import registry
from lsvfs.errors import LsvfsError, SharedDirError
from lsvfs.plan import Target, build, list_all
from lsvfs.shared import mirror as mirror_module
from lsvfs.shared.mirror import Mirror
from lsvfs.storage import open_storage
from lsvfs.storage.base import SNAPSHOT_LEVEL
from lsvfs.storage.file import FileStorage


HYDRATED = {"LSVFS_HYDRATION": "1"}
"""The environment of a worker opened with hydration."""


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Any]:
    made: list[Workers] = []

    def make(url: str) -> Workers:
        w = Workers(url, tmp_path / "shared", tmp_path / "control")
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


@pytest.mark.parametrize("hydration", [False, True])
@pytest.mark.parametrize("storage", ["file", "s3"])
def test_four_readers_keep_the_bank_invariant_and_one_leads(replicated_primary: MakePrimary, workers: Any,
                                                             storage: str, hydration: bool, tmp_path: Path) -> None:
    """Four processes on one shared_dir: every read transaction sees one TXID
    and the total while the primary transfers; all end equal to the primary;
    exactly one led; the followers never opened remote storage (their remote
    request counts are None) and list only the mirror. With hydration none
    keeps a hydration file of its own (their temp directory stays empty); the
    directory holds one page file, equal page for page to `litestream
    restore` of the final TXID; and a full scan on a fresh connection in each
    process reads every page from it: nothing from the cache or the mirror."""
    p = replicated_primary(storage)
    bank(p)
    p.wait_replicated()
    w = workers(p.replica_url)
    tmp = tmp_path / "workers-tmp"
    tmp.mkdir()
    for i in range(4):
        w.start(f"r{i}", env={**(HYDRATED if hydration else {}), "TMPDIR": str(tmp)})
    if storage == "s3":
        quiet_requests_are_one_pollers(p)
    rng = random.Random(17)
    for _ in range(30):
        transfer(p, rng)
        time.sleep(0.05)
    final = p.wait_replicated()
    results = w.finish(final)
    want = [list(r) for r in p.execute("SELECT id, balance FROM bank ORDER BY id")]
    leaders = [r for r in results.values() if r["shared"]["leader"]]
    assert len(leaders) == 1, [r["shared"] for r in results.values()]
    for name, r in results.items():
        assert r["bad"] == [], (name, r["bad"][:5])
        assert r["reads"] > 0 and r["rows"] == want, name
        assert int(r["txid"], 16) >= final
        assert r["shared"]["leader_pid"] == leaders[0]["pid"]
        if not r["shared"]["leader"]:
            assert r["shared"]["remote"] is None, name  # no request to storage, ever
        if hydration:
            assert r["hydration"]["shared"] and r["hydration"]["progress"] == 100, (name, r["hydration"])
            assert r["hydration"]["file"] == str(w.shared / "pages-4096.db")
            assert r["scan_reads"] == 0, (name, r["scan_reads"])
    assert sum(r["txids"] for r in results.values()) > 4  # they did see the primary advance
    assert check_mirror(w.shared) > 0
    assert list(tmp.iterdir()) == []
    if hydration:
        assert sorted(q.name for q in w.shared.glob("pages-*")) == ["pages-4096.db", "pages-4096.tags"]
        assert _page_file_equals_restore(p, w.shared, final, tmp_path) > 2


def test_compaction_and_l0_retention_under_the_mirror(replicated_primary: MakePrimary, workers: Any) -> None:
    """Litestream compacting every second, snapshotting every 3 s and deleting
    L0 files after 1 s: the mirror bridges what retention deletes before it
    deletes it too, so two reader processes keep the invariant and end equal
    to the primary, and the mirror holds no file the replica no longer lists."""
    p = replicated_primary("file", levels=["1s"], snapshot_interval="3s", l0_retention="1s",
                           l0_retention_check_interval="500ms")
    bank(p)
    p.wait_replicated()
    w = workers(p.replica_url)
    w.start("r0")
    w.start("r1")
    rng = random.Random(11)
    deadline = time.monotonic() + 8  # several compactions, snapshots and retention passes
    while time.monotonic() < deadline:
        transfer(p, rng)
        time.sleep(0.1)
    final = p.wait_replicated()
    results = w.finish(final)
    want = [list(r) for r in p.execute("SELECT id, balance FROM bank ORDER BY id")]
    for name, r in results.items():
        assert r["bad"] == [] and r["rows"] == want, (name, r["bad"][:3])
    assert check_mirror(w.shared) > 0
    conn = lsvfs.connect(p.replica_url, shared_dir=str(w.shared), poll_interval=POLL)  # the next leader
    try:
        wait_until(lambda: mirror_within(w.shared, p), 30, what="retention reaching the mirror")
    finally:
        conn.close()
    levels = {f.level for fs in p.replica_files().values() for f in fs}
    assert {0, 1, 9} <= levels, levels  # the replica did compact and snapshot


@pytest.mark.parametrize(("storage", "point"), [("file", "download"), ("file", "rename"), ("s3", "rename"),
                                               ("file", "pages")])
def test_killed_leader_is_replaced_and_nothing_wrong_is_read(replicated_primary: MakePrimary, workers: Any,
                                                             storage: str, point: str, tmp_path: Path) -> None:
    """The leader stops at `point` of a file (its bytes downloaded; its temp
    file written, not renamed; with hydration, part of its pages written to
    the shared page file) and is SIGKILLed there: a follower takes over,
    catches up, reads nothing wrong, and the mirror is whole (every CRC checks
    out, the temp file is gone); the page file is completed, read whole by
    every survivor, and equals the restore of the final TXID."""
    p = replicated_primary(storage)
    bank(p)
    p.wait_replicated()
    w = workers(p.replica_url)
    env = HYDRATED if point == "pages" else {}
    leader = w.start("leader", hang=point, env=env)
    assert status(w.shared)["pid"] == leader.pid
    w.start("f1", env=env)
    w.start("f2", env=env)
    rng = random.Random(3)
    transfer(p, rng)
    p.wait_replicated()
    wait_until(lambda: (w.control / "leader.hung").exists(), 30, what="the leader reaching the injected point")
    if point == "rename":
        assert list((w.shared / "ltx").rglob("*.tmp")), "the temp file is written"
    leader.send_signal(signal.SIGKILL)
    leader.wait(timeout=10)
    wait_until(lambda: status(w.shared)["pid"] != leader.pid, 30, what="a follower taking over")
    for _ in range(10):
        transfer(p, rng)
    final = p.wait_replicated()
    results = w.finish(final)
    want = [list(r) for r in p.execute("SELECT id, balance FROM bank ORDER BY id")]
    assert set(results) == {"f1", "f2"}
    assert sum(r["shared"]["leader"] for r in results.values()) == 1
    for name, r in results.items():
        assert r["bad"] == [] and r["rows"] == want, name
        if point == "pages":
            assert r["hydration"]["progress"] == 100 and r["scan_reads"] == 0, (name, r["hydration"])
    assert check_mirror(w.shared) > 0
    if point == "pages":
        _page_file_equals_restore(p, w.shared, final, tmp_path)


def test_hung_leader_makes_every_lag_grow(file_primary: ReplicatedPrimary, workers: Any, tmp_path: Path) -> None:
    """A leader alive but stuck (SIGSTOP) publishes no poll: a follower's
    litestream_lag grows past several poll intervals, and drops once it runs again."""
    bank(file_primary)
    file_primary.wait_replicated()
    w = workers(file_primary.replica_url)
    leader = w.start("leader")
    conn = lsvfs.connect(file_primary.replica_url, shared_dir=str(w.shared), poll_interval=POLL)
    try:
        assert registry.open_replicas()[file_primary.replica_url].stats()["shared"]["leader"] is False

        def lag() -> float:
            return float(one(conn, "PRAGMA litestream_lag"))

        os.kill(leader.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: lag() > 10 * POLL, 30, what="the follower's lag growing")
        finally:
            os.kill(leader.pid, signal.SIGCONT)
        wait_until(lambda: lag() < 5 * POLL, 30, what="the lag dropping again")
    finally:
        conn.close()


def test_disk_errors_are_retried_and_readers_keep_the_last_state(file_primary: ReplicatedPrimary, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """ENOSPC while the leader writes: logged once as a WARNING, retried; the
    replica keeps serving the last complete TXID, no half file appears, and
    it catches up once the disk has room."""
    bank(file_primary)
    before = file_primary.wait_replicated()
    shared = tmp_path / "shared"
    conn = lsvfs.connect(file_primary.replica_url, shared_dir=str(shared), poll_interval=POLL)
    try:
        full = {"on": True}
        install = Mirror.install

        def no_space(self: Mirror, path: Path, data: bytes, modified: Any) -> None:
            if full["on"]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            install(self, path, data, modified)

        monkeypatch.setattr(Mirror, "install", no_space)
        caplog.set_level(logging.WARNING, logger="lsvfs.shared.leader")
        transfer(file_primary, random.Random(1))
        after = file_primary.wait_replicated()
        wait_until(lambda: "No space left on device" in caplog.text, 30, what="the failure logged")
        assert "readers keep the last complete state" in caplog.text
        txid = int(one(conn, "PRAGMA litestream_txid"), 16)
        assert txid == before < after
        assert one(conn, "SELECT sum(balance) FROM bank") == ACCOUNTS * 1000
        assert check_mirror(shared) > 0
        full["on"] = False
        wait_until(lambda: int(one(conn, "PRAGMA litestream_txid"), 16) >= after, 60,
                   what="catching up")
        warnings = [r for r in caplog.records if "No space left" in r.getMessage()]
        assert len(warnings) == 1  # once per kind of failure, not once per retry
    finally:
        conn.close()


def test_option_from_keyword_uri_and_environment(file_primary: ReplicatedPrimary, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """shared_dir as a keyword and as LSVFS_SHARED_DIR: the replica reads the
    mirror made there, with `shared` in its stats."""
    bank(file_primary)
    file_primary.wait_replicated()
    monkeypatch.setenv("LSVFS_SHARED_DIR", str(tmp_path / "env"))
    conn = lsvfs.connect(file_primary.replica_url)
    try:
        shared = registry.open_replicas()[file_primary.replica_url].stats()["shared"]
        assert shared["dir"] == str(tmp_path / "env") and shared["leader"] is True
        assert shared["files"] >= 1 and (tmp_path / "env" / "ltx").is_dir()
        assert json.loads(one(conn, "PRAGMA litestream_stats"))["shared"]["dir"] == shared["dir"]
    finally:
        conn.close()
    uri = lsvfs.uri(file_primary.replica_url, shared_dir=str(tmp_path / "uri"))
    assert "shared_dir=" in uri
    monkeypatch.delenv("LSVFS_SHARED_DIR")
    conn = lsvfs.connect(file_primary.replica_url, shared_dir=str(tmp_path / "kw"))
    try:
        assert one(conn, "SELECT count(*) FROM bank") == ACCOUNTS
        assert os.stat(tmp_path / "kw").st_mode & 0o777 == 0o700
    finally:
        conn.close()


def test_bad_directories_are_refused_naming_them(file_primary: ReplicatedPrimary, tmp_path: Path) -> None:
    bank(file_primary)
    file_primary.wait_replicated()
    url = file_primary.replica_url

    def refused(shared: Path | str) -> str:
        with pytest.raises(SharedDirError) as e:
            lsvfs.connect(url, shared_dir=str(shared))
        return str(e.value)

    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    assert refused(open_dir) == (f"shared_dir {open_dir} is writable by other users (mode 0777): they could "
                                 "change what every process serves; use a directory only you can write "
                                 f"(chmod 700 {open_dir})")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert refused(a_file / "sub").startswith(f"shared_dir {a_file / 'sub'} cannot be created: Not a directory")
    ro = Path("/proc/self/fdinfo")  # read-only for root too
    message = refused(ro)
    assert message.startswith(f"shared_dir {ro} ") and ("cannot be written" in message or "uid" in message)
    used = tmp_path / "used"
    conn = lsvfs.connect(url, shared_dir=str(used))
    conn.close()
    other = "sftp://reader:hunter2@127.0.0.1:1/other"
    with pytest.raises(SharedDirError) as e:
        lsvfs.connect(other, shared_dir=str(used))
    assert str(e.value) == (f"shared_dir {used} already mirrors replica {url}, not "
                            "sftp://reader:***@127.0.0.1:1/other: use one shared_dir per replica")
    assert "hunter2" not in str(e.value)


def test_damaged_file_is_fetched_again_by_the_next_leader(file_primary: ReplicatedPrimary, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A mirror file whose bytes changed on disk fails its CRC when a leader
    takes over: WARNING, removed, fetched again, and the data reads right."""
    bank(file_primary)
    file_primary.wait_replicated()
    shared = tmp_path / "shared"
    lsvfs.connect(file_primary.replica_url, shared_dir=str(shared), poll_interval=0).close()
    victim = next((shared / "ltx").rglob("*.ltx"))
    data = bytearray(victim.read_bytes())
    data[200] ^= 0xFF
    victim.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING)
    conn = lsvfs.connect(file_primary.replica_url, shared_dir=str(shared), poll_interval=0)
    try:
        assert "is damaged" in caplog.text and victim.name in caplog.text
        assert one(conn, "SELECT sum(balance) FROM bank") == ACCOUNTS * 1000
        assert check_mirror(shared) > 0
    finally:
        conn.close()


def test_a_new_leader_proves_the_mirror_over_polls_not_before_leading(
        file_primary: ReplicatedPrimary, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking over reads no file, so failover never waits for a whole mirror
    to be read: each poll checks SCRUB_BYTES of the files taken over, newest
    first. Damage in the last one checked is still found, and fetched again."""
    bank(file_primary)
    rng = random.Random(3)
    for _ in range(4):
        transfer(file_primary, rng)
        file_primary.wait_replicated()
    url, shared = file_primary.replica_url, tmp_path / "shared"
    lsvfs.connect(url, shared_dir=str(shared), poll_interval=0).close()
    local = FileStorage(shared)
    files = sorted(list_all(local), key=lambda f: f.max_txid)
    victim = local.path_of(files[0])
    local.close()
    assert len(files) >= 3, files
    data = bytearray(victim.read_bytes())
    data[200] ^= 0xFF
    victim.write_bytes(bytes(data))
    monkeypatch.setattr(mirror_module, "SCRUB_BYTES", 1)  # one file per poll
    caplog.set_level(logging.WARNING)
    m = Mirror(open_storage(url), shared, "test")
    try:
        m.take_over()
        assert m.unchecked == len(files)
        for polls in range(1, len(files)):
            m.poll()
            assert (m.unchecked, "is damaged" in caplog.text) == (len(files) - polls, False)
        m.poll()
        assert m.unchecked == 0 and "is damaged" in caplog.text and victim.name in caplog.text
        m.poll()
    finally:
        m.close()
    assert check_mirror(shared) >= len(files)
    conn = lsvfs.connect(url, shared_dir=str(shared), poll_interval=0)
    try:
        assert one(conn, "SELECT sum(balance) FROM bank") == ACCOUNTS * 1000
    finally:
        conn.close()


def test_mirror_command_fills_once_then_leads_as_a_sidecar(file_primary: ReplicatedPrimary, tmp_path: Path) -> None:
    """`lsvfs mirror --once` fills the directory and exits; `lsvfs mirror` leads
    until killed, one log line per poll with -v, and a worker started with the
    same shared_dir only reads (never leads, no storage client) yet follows the primary."""
    bank(file_primary)
    file_primary.wait_replicated()
    url, shared = file_primary.replica_url, tmp_path / "shared"
    command = [sys.executable, "-m", "lsvfs", "mirror", url, "--shared-dir", str(shared)]
    once = subprocess.run([*command, "--once"], capture_output=True, text=True, timeout=60)
    assert once.returncode == 0, once.stderr
    assert once.stdout.startswith(f"mirrored {url} in {shared}: TXID ")
    assert check_mirror(shared) > 0
    log_path = tmp_path / "sidecar.log"
    with open(log_path, "wb") as log_file:
        side = subprocess.Popen([*command, "--poll-interval", "200ms", "-v"], stderr=log_file)
    try:
        wait_until(lambda: status(shared)["pid"] == side.pid, 30, what="the sidecar leading")
        again = subprocess.run([*command, "--once"], capture_output=True, text=True, timeout=90)
        assert again.returncode == 0 and f"(leader pid {side.pid})" in again.stdout, again.stderr  # it waited
        conn = lsvfs.connect(url, shared_dir=str(shared), poll_interval=POLL)
        try:
            stats = registry.open_replicas()[url].stats()["shared"]
            assert (stats["leader"], stats["leader_pid"], stats["remote"]) == (False, side.pid, None)
            transfer(file_primary, random.Random(5))
            final = file_primary.wait_replicated()
            wait_until(lambda: int(one(conn, "PRAGMA litestream_txid"), 16) >= final, 30, what="the worker following")
            assert one(conn, "SELECT sum(balance) FROM bank") == ACCOUNTS * 1000
        finally:
            conn.close()
    finally:
        side.kill()
        side.wait(timeout=10)
    lines = [line for line in log_path.read_text().splitlines() if f"mirrored {url} at TXID" in line]
    assert len(lines) >= 2, log_path.read_text()[-2000:]


def test_mirror_command_shows_progress_on_a_terminal_only(file_primary: ReplicatedPrimary, tmp_path: Path) -> None:
    """With stderr on a terminal, `lsvfs mirror` draws a bar for its first fill (--once too),
    then a status line redrawn after each poll, ended by Ctrl-C so the last message has a
    line of its own; with -v the per-poll log lines instead; piped, neither: stderr stays empty."""
    bank(file_primary)
    txid = file_primary.wait_replicated()
    url = file_primary.replica_url
    command = [sys.executable, "-m", "lsvfs", "mirror", url, "--poll-interval", "200ms", "--shared-dir"]

    rc, out, tty = run_with_pty_stderr([*command, str(tmp_path / "once"), "--once"])
    assert rc == 0 and "mirroring [" in tty and "100.0%" in tty, repr(tty)
    assert out.startswith(f"mirrored {url} in ")

    rc, out, tty = run_with_pty_stderr([*command, str(tmp_path / "run")], 30, lambda t: t.count("last poll") >= 3)
    assert rc == 130 and out == "", repr(tty)
    assert tty.index("mirroring [") < tty.index("100.0%") < tty.index(f"\rTXID {txid:016x}, "), repr(tty)
    assert re.search(r"\rTXID [0-9a-f]{16}, \d+ files, \d+(\.\d)? k?B, last poll \d+\.\ds ago\x1b\[K", tty), repr(tty)
    assert tty.replace("\r\n", "\n").rstrip("\n").split("\n")[-1] == "lsvfs mirror: interrupted", repr(tty)

    rc, _, tty = run_with_pty_stderr([*command, str(tmp_path / "run"), "-v"], 30,
                                     until=lambda t: t.count(f"mirrored {url} at TXID") >= 2)
    assert rc == 130 and "last poll" not in tty and "mirroring [" not in tty, repr(tty)

    once = subprocess.run([*command, str(tmp_path / "piped"), "--once"], capture_output=True, text=True, timeout=60)
    assert once.returncode == 0 and once.stderr == "", once.stderr
    side = subprocess.Popen([*command, str(tmp_path / "piped")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=ctrl_c_works)
    try:
        wait_until(lambda: status(tmp_path / "piped")["pid"] == side.pid, 30, what="the piped mirror leading")
        first = status(tmp_path / "piped")["last_poll_ok"]
        wait_until(lambda: status(tmp_path / "piped")["last_poll_ok"] != first, 30, what="another poll")
        side.send_signal(signal.SIGINT)
        out, err = side.communicate(timeout=30)
    finally:
        side.kill()
        side.wait(timeout=10)
    assert (side.returncode, out, err) == (130, "", "lsvfs mirror: interrupted\n")


@pytest.mark.parametrize("hydration", [False, True])
def test_another_lineage_is_rebuilt_at_open_and_followed_live(replicated_primary: MakePrimary, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture, hydration: bool) -> None:
    """The replica wiped and written again by another primary: a directory
    left holding the old lineage is rebuilt at open, with a WARNING, and reads
    the new one; replaced again while open, the reader follows the newest
    lineage, and the mirror then holds only its files, each whole. With
    hydration, the page file holding the old lineage's pages (at the same
    TXIDs) serves none of them to the new one, and ends equal to its restore."""
    caplog.set_level(logging.INFO, logger="lsvfs")
    a, _ = _primary_with_rows(replicated_primary, "file", "a", 5)
    url, shared = a.replica_url, tmp_path / "shared"
    lsvfs.connect(url, shared_dir=str(shared), poll_interval=0, hydration=hydration).close()
    _wipe(a)
    b = _second_primary(replicated_primary, a)
    b.execute("CREATE TABLE who(id INTEGER PRIMARY KEY, name TEXT)")
    _commit_rows(b, "b", 3)
    caplog.clear()
    conn = lsvfs.connect(url, shared_dir=str(shared), poll_interval=POLL, hydration=hydration)
    try:
        assert _who(conn) == [("b", 3)]
        assert any("holds another lineage of the replica" in m for m in _warnings(caplog))
        _wipe(b)
        c = _second_primary(replicated_primary, b)
        c.execute("CREATE TABLE who(id INTEGER PRIMARY KEY, name TEXT)")
        _commit_rows(c, "c", 8)
        wait_until(lambda: _reads(conn, [("c", 8)]), 30, what="the reader following the newest lineage")
        wait_until(lambda: mirror_within(shared, c), 30, what="the mirror holding the new lineage's files only")
        assert check_mirror(shared) > 0
        if hydration:
            rep = registry.open_replicas()[url]
            final = c.wait_replicated()
            wait_until(lambda: rep.current().txid >= final, 30, what="the reader at c's last TXID")
            wait_until(lambda: rep.stats()["hydration"]["progress"] == 100, 30, what="the page file of c")
            fresh = lsvfs.connect(url, shared_dir=str(shared), hydration=True)
            try:
                assert _who(fresh) == [("c", 8)]
            finally:
                fresh.close()
            _page_file_equals_restore(c, shared, final, tmp_path)
    finally:
        conn.close()


def test_pinning_and_hydration_read_through_the_mirror(file_primary: ReplicatedPrimary, tmp_path: Path) -> None:
    """A connection on a shared_dir with hydration pins an older TXID and reads
    it exactly, while the shared page file serves the newest."""
    bank(file_primary)
    rng = random.Random(7)
    transfer(file_primary, rng)
    before = file_primary.wait_replicated()
    old = [list(r) for r in file_primary.execute("SELECT id, balance FROM bank ORDER BY id")]
    for _ in range(3):
        transfer(file_primary, rng)
    after = file_primary.wait_replicated()
    new = [list(r) for r in file_primary.execute("SELECT id, balance FROM bank ORDER BY id")]
    assert old != new
    url = file_primary.replica_url
    conn = lsvfs.connect(url, shared_dir=str(tmp_path / "shared"), hydration=True, poll_interval=POLL)
    pinned = lsvfs.connect(url)
    try:
        wait_until(lambda: int(one(conn, "PRAGMA litestream_txid"), 16) >= after, 30, what="the newest TXID")
        rep = registry.open_replicas()[url]
        wait_until(lambda: hydrated_at(rep, int(one(conn, "PRAGMA litestream_txid"), 16)), 30,
                   what="the hydration file complete")
        assert [list(r) for r in conn.execute("SELECT id, balance FROM bank ORDER BY id")] == new
        assert rep.stats()["shared"]["leader"] is True
        pinned.execute(f"PRAGMA litestream_txid = '{before:016x}'").fetchall()
        assert [list(r) for r in pinned.execute("SELECT id, balance FROM bank ORDER BY id")] == old
    finally:
        pinned.close()
        conn.close()


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_time_travel_reaches_past_the_mirror(replicated_primary: MakePrimary, storage: str, tmp_path: Path) -> None:
    """The mirror holds what the newest state needs (a snapshot and what
    follows it), not the replica's history. A follower pinning a TXID or a
    time from before the snapshot plans over the remote listing as well and
    reads the files the mirror lacks from remote storage: exactly the state
    `litestream restore -txid` gives. Until then it made no storage request."""
    p = replicated_primary(storage, snapshot_interval="1s")
    bank(p)
    rng = random.Random(11)
    for _ in range(3):  # a TXID some L0 files in: the remote chain to it is more than one file
        transfer(p, rng)
        before = p.wait_replicated()
    old = [list(r) for r in p.execute("SELECT id, balance FROM bank ORDER BY id")]
    time.sleep(1.1)  # a second between the states, for time travel by time

    def snapshot_past_before() -> bool:
        transfer(p, rng)
        p.wait_replicated()
        return any(f.max_txid > before for f in p.replica_files()[SNAPSHOT_LEVEL])

    wait_until(snapshot_past_before, 30, what="a snapshot newer than the pinned TXID")
    after = p.wait_replicated()
    new = [list(r) for r in p.execute("SELECT id, balance FROM bank ORDER BY id")]
    url, shared = p.replica_url, tmp_path / "shared"
    side = subprocess.Popen([sys.executable, "-m", "lsvfs", "mirror", url, "--shared-dir", str(shared),
                             "--poll-interval", "200ms"], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (shared / "status.json").exists() and status(shared)["pid"] == side.pid, 30,
                   what="the sidecar leading")
        conn = lsvfs.connect(url, shared_dir=str(shared), poll_interval=POLL)
        try:
            wait_until(lambda: int(one(conn, "PRAGMA litestream_txid"), 16) >= after, 30, what="the newest TXID")
            mirror = FileStorage(shared)
            try:
                with pytest.raises(LsvfsError):
                    build(list_all(mirror), Target(before))  # the mirror alone cannot go back there
            finally:
                mirror.close()
            rep = registry.open_replicas()[url]
            assert (rep.stats()["shared"]["remote"], rep.stats()["shared"]["history"]) == (None, None)
            restored = apsw.Connection(str(p.restore(tmp_path / "before.db", txid=before).path))
            assert [list(r) for r in restored.execute("SELECT id, balance FROM bank ORDER BY id")] == old
            restored.close()

            conn.execute(f"PRAGMA litestream_txid = '{before:016x}'").fetchall()
            assert int(one(conn, "PRAGMA litestream_txid"), 16) == before
            assert [list(r) for r in conn.execute("SELECT id, balance FROM bank ORDER BY id")] == old
            stamp = one(conn, "PRAGMA litestream_time")
            conn.execute("PRAGMA litestream_txid = LATEST").fetchall()
            assert [list(r) for r in conn.execute("SELECT id, balance FROM bank ORDER BY id")] == new
            conn.execute(f"PRAGMA litestream_time = '{stamp}'").fetchall()
            assert int(one(conn, "PRAGMA litestream_txid"), 16) == before
            assert [list(r) for r in conn.execute("SELECT id, balance FROM bank ORDER BY id")] == old
            history = rep.stats()["shared"]["history"]
            assert history["list"]["requests"] > 0 and history["ranged_read"]["requests"] > 0, history
        finally:
            conn.close()
    finally:
        side.kill()
        side.wait(timeout=10)


# ---- hydration: one page file for every process -------------------------------

def _page_file_equals_restore(p: ReplicatedPrimary, shared: Path, txid: int, tmp_path: Path) -> int:
    """The shared page file holds exactly `litestream restore -txid` of `txid`, page for page; how many pages."""
    restored = p.restore(tmp_path / f"restored-{txid:x}.db", txid).path.read_bytes()
    (pages_file,) = shared.glob("pages-*.db")
    page_size = int(pages_file.name.removeprefix("pages-").removesuffix(".db"))
    held = pages_file.read_bytes()[:len(restored)]
    assert len(held) == len(restored) and len(restored) % page_size == 0
    bad = [i + 1 for i in range(len(restored) // page_size)
           if held[i * page_size:(i + 1) * page_size] != restored[i * page_size:(i + 1) * page_size]]
    assert bad == [], f"pages {bad[:10]} differ from the restore of TXID {txid:016x}"
    return len(restored) // page_size


def test_mirror_command_with_hydration_fills_the_page_file_before_it_exits(file_primary: ReplicatedPrimary,
                                                                          tmp_path: Path) -> None:
    """`lsvfs mirror --once --hydration` (a container build's warm-up) leaves
    the page file complete: a worker opened afterwards with hydration serves a
    full scan from it with no cache or mirror read, and makes none to storage."""
    bank(file_primary)
    final = file_primary.wait_replicated()
    url, shared = file_primary.replica_url, tmp_path / "shared"
    once = subprocess.run([sys.executable, "-m", "lsvfs", "mirror", url, "--shared-dir", str(shared), "--once",
                           "--hydration"], capture_output=True, text=True, timeout=60)
    assert once.returncode == 0, once.stderr
    _page_file_equals_restore(file_primary, shared, final, tmp_path)
    conn = lsvfs.connect(url, shared_dir=str(shared), hydration=True, poll_interval=0)
    try:
        rep = registry.open_replicas()[url]
        assert rep.stats()["hydration"]["progress"] == 100
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert one(conn, "SELECT sum(balance) FROM bank") == ACCOUNTS * 1000
        stats = rep.stats()
        assert reads_outside_shared_pages(stats) == 0, (stats["cache"], stats["storage"])
        assert one(conn, "PRAGMA litestream_hydration_file") == str(shared / "pages-4096.db")
        assert one(conn, "PRAGMA litestream_hydration_progress") == "100"
    finally:
        conn.close()


def test_page_file_write_errors_are_retried_and_readers_read_the_mirror(file_primary: ReplicatedPrimary,
                                                                        tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills while the leader writes the page file: one WARNING, the
    readers read the mirror meanwhile (right rows), and once writes work again
    the file is completed and says so."""
    from lsvfs import core
    from lsvfs.shared import leader as leader_module

    caplog.set_level(logging.INFO, logger="lsvfs")
    monkeypatch.setattr(leader_module, "FIRST_DELAY", 0.05)
    bank(file_primary)
    file_primary.wait_replicated()
    fill = core.fill_shared_pages
    full = {"on": True}

    def disk_full(*args: Any, **kwargs: Any) -> None:
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        fill(*args, **kwargs)

    monkeypatch.setattr(core, "fill_shared_pages", disk_full)
    url = file_primary.replica_url
    conn = lsvfs.connect(url, shared_dir=str(tmp_path / "shared"), hydration=True, poll_interval=POLL)
    try:
        rep = registry.open_replicas()[url]
        for _ in range(3):
            transfer(file_primary, random.Random(31))
        final = file_primary.wait_replicated()
        wait_until(lambda: int(one(conn, "PRAGMA litestream_txid"), 16) >= final, 30, what="the reader following")
        assert one(conn, "SELECT sum(balance) FROM bank") == ACCOUNTS * 1000
        assert rep.stats()["hydration"]["progress"] == 0
        failures = [m for m in _warnings(caplog) if "writing the shared pages: " in m]
        assert len(failures) == 1 and "No space left on device" in failures[0], failures
        assert "readers read the mirror meanwhile; retrying in" in failures[0]
        full["on"] = False
        wait_until(lambda: rep.stats()["hydration"]["progress"] == 100, 30, what="the page file completed")
        assert any("writing the shared pages works again" in r.getMessage() for r in caplog.records)
    finally:
        conn.close()


def test_hydration_path_with_shared_dir_is_refused(file_primary: ReplicatedPrimary, tmp_path: Path) -> None:
    """A private hydration file cannot go with a shared one: said at open, naming both."""
    bank(file_primary)
    file_primary.wait_replicated()
    with pytest.raises(SharedDirError, match=r"hydration_path .*h\.db and shared_dir .*shared: with shared_dir"):
        lsvfs.connect(file_primary.replica_url, shared_dir=str(tmp_path / "shared"),
                      hydration_path=str(tmp_path / "h.db"))
    assert not (tmp_path / "h.db").exists()


def test_the_leader_writes_a_large_page_file_over_several_steps(file_primary: ReplicatedPrimary, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each leader step writes a bounded share of the page file (so polling
    never waits long for a big first fill), a stop ends a step at once, and
    the steps together leave the file equal to the restore."""
    from lsvfs.shared import pages as pages_module

    file_primary.create_table()
    file_primary.insert_rows(400, size=3000, seed=5)
    final = file_primary.wait_replicated()
    monkeypatch.setattr(pages_module, "APPLY_BYTES", 64 << 10)
    monkeypatch.setattr(pages_module, "CHUNK_BYTES", 64 << 10)  # one read: at most this
    root = tmp_path / "root"
    root.mkdir()
    writer = pages_module.PageWriter(root, "test", always=True)
    local = file_primary.open_storage()
    try:
        assert writer.step(local, lambda: True) is False and writer.written > 0  # stopped after its first read
        first = writer.written
        steps = 1
        while not writer.step(local, lambda: False):
            steps += 1
            assert steps < 1000
        assert steps >= 3 and writer.written > first
        done = writer.written
        assert writer.step(local, lambda: False) is True and writer.written == done  # nothing left to write
    finally:
        writer.close()
        local.close()
    assert _page_file_equals_restore(file_primary, root, final, tmp_path) > 100
