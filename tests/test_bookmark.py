"""Read your writes, primary side: `lsvfs.bookmark` and `lsvfs bookmark` against a real
`litestream replicate` with its control socket on.

What a bookmark promises is checked on the replica itself: once the call returns, the replica lists
that TXID, and `litestream restore -txid BOOKMARK` has the rows committed before the call.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import one_error_line
from replication import MakePrimary, MotoS3, ReplicatedPrimary

import lsvfs
from lsvfs.bookmark import enable_hint


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a path short enough for AF_UNIX sockets (pytest's tmp_path may not be)."""
    d = Path(tempfile.mkdtemp(prefix="ls", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def row_at(p: ReplicatedPrimary, txid: int, k: int, out: Path) -> int:
    """How many rows with key `k` the replica restored as of `txid` holds."""
    p.restore(out, txid=txid)
    db = sqlite3.connect(out)
    try:
        return int(db.execute("SELECT count(*) FROM t WHERE k = ?", (k,)).fetchone()[0])
    finally:
        db.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lsvfs", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_bookmark_covers_every_commit_before_it(make_primary: MakePrimary, storage: str, tmp_path: Path) -> None:
    """Each round: the bookmark is past what the replica had before the commit, the replica lists it as
    soon as the call returns (the point of `wait`), and a restore at it holds the committed row."""
    p = make_primary(storage, control_socket=True)
    assert p.socket_path is not None
    p.create_table()
    before = p.wait_replicated()
    for k in range(1, 4):
        p.execute("INSERT INTO t(k, v) VALUES (?, randomblob(100))", (k,))
        mark = lsvfs.bookmark(p.db_path, socket=p.socket_path)
        assert len(mark) == 16 and mark == mark.lower() and int(mark, 16) > before, (mark, before)
        txid = int(mark, 16)
        assert p.newest_listed() >= txid
        assert row_at(p, txid, k, tmp_path / f"r{k}.db") == 1
        before = txid


def test_relative_path_is_the_callers(make_primary: MakePrimary, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative DB path is taken from the caller's working directory, not litestream's (its own
    is the primary's directory here, where ../primary.db would name nothing)."""
    p = make_primary(control_socket=True)
    p.wait_replicated()
    monkeypatch.chdir(p.workdir / "restores")
    p.insert_rows(1)
    mark = lsvfs.bookmark("../primary.db", socket=str(p.socket_path))
    assert p.newest_listed() >= int(mark, 16)


def test_no_socket_says_how_to_enable_it(make_primary: MakePrimary, short_dir: Path) -> None:
    """With the socket off, the error names the path and the litestream.yml line; that very line,
    added to litestream.yml, turns the socket on."""
    p = make_primary(start=False)
    sock = short_dir / "ctl.sock"
    with pytest.raises(lsvfs.BookmarkError) as e:
        lsvfs.bookmark(p.db_path, socket=sock)
    assert str(sock) in str(e.value) and enable_hint(str(sock)) in str(e.value)
    assert "no such socket" in str(e.value)

    p.config_path.write_text(enable_hint(str(sock)) + "\n" + p.config_path.read_text())
    p.start()
    p.wait_replicated()
    p.insert_rows(1)
    mark = lsvfs.bookmark(p.db_path, socket=sock)
    assert p.newest_listed() >= int(mark, 16)


def test_nothing_listening(tmp_path: Path, short_dir: Path) -> None:
    """A socket file nobody listens on (a litestream that died) gets the same advice."""
    sock = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        with pytest.raises(lsvfs.BookmarkError) as e:
            lsvfs.bookmark(tmp_path / "app.db", socket=sock)
    assert "nothing listens" in str(e.value) and enable_hint(str(sock)) in str(e.value)


def test_database_not_managed(make_primary: MakePrimary, tmp_path: Path) -> None:
    """A database this litestream does not replicate is named in the error."""
    p = make_primary(control_socket=True)
    p.wait_replicated()
    other = tmp_path / "other.db"
    with pytest.raises(lsvfs.BookmarkError, match="does not manage") as e:
        lsvfs.bookmark(other, socket=str(p.socket_path))
    assert str(other) in str(e.value)


@pytest.mark.s3
def test_timeout_bounds_the_call(tmp_path: Path) -> None:
    """When the replica cannot take the upload (its S3 went away), the call gives up at its timeout
    with a BookmarkError, while litestream itself goes on retrying for minutes."""
    moto = MotoS3().start()
    try:
        p = ReplicatedPrimary(tmp_path / "p", storage="s3", s3=moto, control_socket=True)
    except BaseException:
        moto.stop()
        raise
    try:
        p.wait_replicated()
        moto.stop()
        p.insert_rows(1)
        with pytest.raises(lsvfs.BookmarkError, match=r"did not confirm .* within 1s"):
            lsvfs.bookmark(p.db_path, socket=str(p.socket_path), timeout=1)
    finally:
        p.close()
        moto.stop()


def test_cli(make_primary: MakePrimary, tmp_path: Path, short_dir: Path) -> None:
    """`lsvfs bookmark DB --socket S` prints one 16-hex-digit TXID the replica lists; a database
    litestream does not manage is one error line and exit status 1."""
    p = make_primary(control_socket=True)
    p.wait_replicated()
    p.insert_rows(1)
    r = cli("bookmark", str(p.db_path), "--socket", str(p.socket_path), "--timeout", "20")
    assert r.returncode == 0, r.stderr
    mark = r.stdout.strip()
    assert r.stdout == mark + "\n" and len(mark) == 16 and int(mark, 16) >= 1
    assert p.newest_listed() >= int(mark, 16)

    line = one_error_line(cli("bookmark", str(tmp_path / "other.db"), "--socket", str(p.socket_path)), "bookmark")
    assert "does not manage" in line and str(tmp_path / "other.db") in line
    line = one_error_line(cli("bookmark", str(p.db_path), "--socket", str(short_dir / "x.sock")), "bookmark")
    assert enable_hint(str(short_dir / "x.sock")) in line
