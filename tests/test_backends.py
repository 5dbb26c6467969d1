"""Issue 9: every Litestream backend, each against a real server on 127.0.0.1,
each replica written by the real `litestream replicate` 0.5.17.

Parametrized over backends.BACKENDS (gcs, azure, sftp, webdav, nats, oss); file
and s3 have the same checks in test_vfs.py / test_storage.py.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from backends import BACKENDS, lsvfs_env, make_target, nats_token_target, webdavs_target
from replication import FAST_COMPACTION, ReplicatedPrimary, free_port, wait_until
from test_vfs import rows, txid_of, unshim, vfs_pages, workload

import lsvfs
from lsvfs import cli
from lsvfs.errors import MissingExtraError, ReplicaError, StorageError, URLError
from lsvfs.storage import LAYOUTS, SharedClients, open_storage, parse_url, redact_url
from lsvfs.storage.base import LEVELS, format_filename, level_dir

SCHEME = {"gcs": "gs", "azure": "abs", "sftp": "sftp", "webdav": "webdav", "nats": "nats", "oss": "oss"}

pytestmark = pytest.mark.backends


def _all_files(storage: Any) -> list[Any]:
    return [f for lvl in LEVELS for f in storage.list_files(lvl)]


@pytest.fixture(scope="module")
def shared_primary(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Factory: one replicated primary per backend for this module's read-only tests
    (layout, oracle, CLI, concurrent reads, faults), so each backend pays for one
    replication setup instead of five. Tests that write or need a special replica
    (live follow, multi-level) make their own."""
    made: dict[str, ReplicatedPrimary] = {}
    mp = pytest.MonkeyPatch()

    def get(kind: str) -> ReplicatedPrimary:
        if kind not in made:
            server = request.getfixturevalue(f"{kind}_server")
            lsvfs_env(mp, kind)
            target = make_target(kind, server)
            p = ReplicatedPrimary(tmp_path_factory.mktemp(f"shared-{kind}"), storage=kind, target=target)
            made[kind] = p
            workload(p, rounds=2)
            p.wait_replicated()
        return made[kind]

    yield get
    for p in made.values():
        p.close()
    mp.undo()


# ---- layout -----------------------------------------------------------------------------------

def _quiet_listing(p: ReplicatedPrimary, tries: int = 50) -> tuple[list[Any], set[str]]:
    """lsvfs's listing of every level and the .ltx names on the server, taken while Litestream
    changed nothing: list, read the names, list again, and keep the names only if both listings
    agree. Litestream compacts to L1 and snapshots to L9 on its own clock, so a file written
    between two listings shows in one and not the other; a retry (bounded) waits it out."""
    def listing() -> list[Any]:
        st = p.open_storage()  # a fresh client each time: NATS answers from a short-lived index
        try:
            return _all_files(st)
        finally:
            st.close()

    for _ in range(tries):
        before = listing()
        names = {n for n in p.target.names() if n.endswith(".ltx")}
        after = listing()
        if {(f.level, f.min_txid, f.max_txid, f.size) for f in before} == {
                (f.level, f.min_txid, f.max_txid, f.size) for f in after}:
            return before, names
        time.sleep(0.2)
    raise AssertionError(f"Litestream kept writing to {redact_url(p.replica_url)} through {tries} listings")


@pytest.mark.parametrize("kind", BACKENDS)
def test_litestream_writes_the_documented_layout(shared_primary: Any, kind: str) -> None:
    """The names `litestream replicate` wrote are exactly level_dir() + format_filename()
    of the files lsvfs lists: the layout rule is right for this backend."""
    p: ReplicatedPrimary = shared_primary(kind)
    files, written = _quiet_listing(p)
    layout = LAYOUTS[SCHEME[kind]]
    assert layout == ("hex" if kind == "oss" else "ltx")
    want = {p.target.layout_root + level_dir("", f.level, layout) + format_filename(f.min_txid, f.max_txid)
            for f in files}
    assert files and written == want
    assert {f.level for f in files} >= {0}


# ---- the oracle ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", BACKENDS)
def test_oracle_pages_equal_litestream_restore_at_that_txid(shared_primary: Any, tmp_path: Path,
                                                             kind: str) -> None:
    p: ReplicatedPrimary = shared_primary(kind)
    txid = p.wait_replicated()
    seen_txid, data = vfs_pages(p.replica_url)
    assert seen_txid == txid
    expected = p.litestream_restore(tmp_path / "at.db", txid=txid).read_bytes()
    ps = p.page_size
    assert len(data) == len(expected)
    assert unshim(data[:ps], expected) + data[ps:] == expected == p.image()
    with closing(lsvfs.connect(p.replica_url)) as conn:
        assert rows(conn) == p.execute("SELECT * FROM t ORDER BY id")


@pytest.mark.parametrize("kind", BACKENDS)
def test_live_follow(replicated_primary: Any, kind: str) -> None:
    p: ReplicatedPrimary = replicated_primary(kind)
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    p.execute("INSERT INTO t(v) VALUES ('first')")
    p.wait_replicated()
    with closing(lsvfs.connect(p.replica_url, poll_interval=0.05)) as conn:
        assert rows(conn) == [(1, "first")]
        p.executemany("INSERT INTO t(v) VALUES (?)", [(f"row{i}",) for i in range(20)])
        target = p.wait_replicated()
        wait_until(lambda: txid_of(conn) >= target, 20, interval=0.05, what=f"{kind} replica follows")
        assert rows(conn) == p.execute("SELECT * FROM t ORDER BY id")
        assert len(rows(conn)) == 21


@pytest.mark.parametrize("kind", BACKENDS)
def test_multi_level_replica_with_l0_gaps(replicated_primary: Any, tmp_path: Path, kind: str) -> None:
    """Compactions to L1/L2, a snapshot, and L0 files deleted by retention:
    lsvfs must plan across levels and read exactly the primary."""
    p: ReplicatedPrimary = replicated_primary(kind, **FAST_COMPACTION)
    p.write_until_snapshot(rows=30, size=300)

    def gapped() -> bool:
        p.insert_rows(10, 300)
        p.wait_replicated()
        files = p.replica_files()
        l0 = files[0]
        return bool(files[9]) and bool(files[1]) and (not l0 or l0[0].min_txid > 1)

    wait_until(gapped, 30, interval=0.3, what="L0 retention deleted the first L0 files")
    txid = p.wait_replicated()
    files = p.replica_files()
    assert files[9] and files[1]
    assert not files[0] or files[0][0].min_txid > 1  # L0 alone cannot rebuild the database
    seen, data = vfs_pages(p.replica_url)
    expected = p.litestream_restore(tmp_path / "ml.db", txid=txid).read_bytes()
    assert seen == txid
    assert unshim(data[:p.page_size], expected) + data[p.page_size:] == expected


# ---- the command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", BACKENDS)
def test_cli_ls_restore_verify(shared_primary: Any, tmp_path: Path, kind: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    p: ReplicatedPrimary = shared_primary(kind)
    txid = p.wait_replicated()
    st = p.open_storage()
    try:
        before = _all_files(st)
        assert cli.main(["ls", p.replica_url]) == 0
        out = capsys.readouterr().out
        after = _all_files(st)
    finally:
        st.close()
    # Litestream keeps compacting meanwhile: every file listed both before and after `ls` is in it.
    files = [f for f in before if f in after]
    assert files
    for f in files:
        assert f"{f.min_txid:016x}  {f.max_txid:016x}" in out
    out_db = tmp_path / "cli.db"
    assert cli.main(["restore", p.replica_url, str(out_db), "--txid", f"{txid:016x}"]) == 0
    assert out_db.read_bytes() == p.litestream_restore(tmp_path / "ls.db", txid=txid).read_bytes()
    assert cli.main(["verify", p.replica_url]) == 0
    printed = capsys.readouterr()
    latest = re.search(r"latest TXID ([0-9a-f]{16})", printed.out)
    assert printed.out.startswith("restored") and latest and int(latest.group(1), 16) >= txid
    for secret in p.target.secrets:
        assert secret not in printed.out + printed.err + out


# ---- concurrency, pagination, filtering ----------------------------------------------------------------

@pytest.mark.parametrize("kind", BACKENDS)
def test_ranged_reads_from_many_threads(shared_primary: Any, kind: str) -> None:
    """16 threads on one client read random ranges of every file; each must equal
    the same bytes cut from a whole-file read."""
    p: ReplicatedPrimary = shared_primary(kind)
    st = p.open_storage()
    try:
        files = _all_files(st)
        whole = {f: st.read_all(f) for f in files}
        bad: list[str] = []

        def reader(seed: int) -> None:
            rnd = random.Random(seed)
            for _ in range(15):
                f = rnd.choice(files)
                off = rnd.randrange(f.size)
                n = rnd.randrange(1, min(f.size - off, 9000) + 1)
                try:
                    if st.read(f, off, n) != whole[f][off:off + n]:
                        bad.append(f"{f.name} {off}+{n}: wrong bytes")
                except Exception as e:  # noqa: BLE001 - collected, asserted below
                    bad.append(f"{f.name} {off}+{n}: {e!r}")

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        assert not bad, bad[:5]
        with pytest.raises(StorageError):
            st.read(files[0], files[0].size - 10, 20)  # past the end: never silently short
    finally:
        st.close()


@pytest.mark.parametrize("kind", BACKENDS)
def test_prefetch_and_hydration_on_every_backend(shared_primary: Any, tmp_path: Path, kind: str) -> None:
    """Each backend feeds the parallel ranged reads of hydration and prefetch:
    the hydration file ends up byte for byte the primary's database, and a
    prefetch fills the cache with the whole snapshot; queries match."""
    p: ReplicatedPrimary = shared_primary(kind)
    p.wait_replicated()
    path = tmp_path / "hydrated.db"
    with closing(lsvfs.connect(p.replica_url, hydration_path=str(path))) as conn:
        wait_until(lambda: conn.execute("PRAGMA litestream_hydration_progress").fetchone()[0] == "100", 30,
                   what="hydration")
        hydration = lsvfs.stats(p.replica_url)["hydration"]
        assert hydration["requests"] > 0 and hydration["error"] is None
        assert rows(conn) == p.execute("SELECT * FROM t ORDER BY id")
    assert path.read_bytes() == p.image()
    with closing(lsvfs.connect(p.replica_url, prefetch="on")) as conn:
        rep = lsvfs.open_replicas()[p.replica_url]
        pages = rep.current().table.count
        wait_until(lambda: len(rep.cache) >= pages, 30, what="prefetch")
        assert rep.stats()["prefetch"]["done"] == rep.stats()["prefetch"]["requests"] > 0
        reads = rep.storage.counts().get("read")
        assert rows(conn) == p.execute("SELECT * FROM t ORDER BY id")
        assert rep.storage.counts().get("read") == reads  # every page came from the cache


@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_listing_paginates_and_filters_by_txid(replicated_primary: Any, kind: str) -> None:
    """Pages of 2 objects, and a TXID filter applied to the whole level (Litestream #1456):
    a min_txid that falls inside no file's start still returns every later file."""
    p: ReplicatedPrimary = replicated_primary(kind)
    p.create_table()
    for i in range(6):
        p.insert_rows(5, 100, seed=i)
        p.wait_replicated()
    st = p.open_storage()
    st.page_size = 2
    try:
        l0 = st.list_files(0)
        assert len(l0) >= 6 and [f.min_txid for f in l0] == sorted(f.min_txid for f in l0)
        mid = l0[3]
        assert st.list_files(0, mid.min_txid) == l0[3:]
        assert st.list_files(0, mid.min_txid - 1) == [f for f in l0 if f.min_txid >= mid.min_txid - 1]
        assert st.list_files(0, l0[-1].max_txid + 1) == []
    finally:
        st.close()


# ---- failures: one typed error, at the call, no secret ----------------------------------------------------

def _no_secret(msg: str, secrets: tuple[str, ...]) -> None:
    for s in secrets:
        assert s not in msg, f"secret leaked into: {msg}"


@pytest.mark.parametrize("kind", BACKENDS)
def test_missing_bucket_or_directory(replica_target: Any, kind: str) -> None:
    t = replica_target(kind)
    u = t.lsvfs_url
    if kind in ("gcs", "oss"):
        u = re.sub(r"^(gs|oss)://[^/]+", r"\1://lsvfs-no-such-bucket", u)
    elif kind == "azure":
        u = re.sub(r"@[^/]+/", "@lsvfs-no-such-container/", u)
    elif kind == "nats":
        u = re.sub(r"/[^/?]+$", "/lsvfs-no-such-bucket", u)
    else:  # sftp, webdav: a directory that does not exist is an empty replica
        u = re.sub(r"(:\d+/)[^/?]+", r"\1no-such-dir", u)
    if kind in ("sftp", "webdav"):
        st = open_storage(u)
        try:
            assert all(st.list_files(lvl) == [] for lvl in LEVELS)
        finally:
            st.close()
        # (Replica's "is empty" message shows its URL unredacted until lsvfs/replica/lifecycle.py calls redact_url.)
        with pytest.raises(ReplicaError, match="empty"):
            lsvfs.connect(u)
    else:
        with pytest.raises(StorageError) as exc:
            lsvfs.connect(u)
        msg = str(exc.value)
        _no_secret(msg, t.secrets)
        assert "does not exist" in msg and "no-such" in msg
    assert lsvfs.open_replicas() == {}


@pytest.mark.parametrize("kind", BACKENDS)
def test_unreachable_endpoint(replica_target: Any, kind: str) -> None:
    t = replica_target(kind)
    dead = free_port()
    u = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{dead}", t.lsvfs_url)
    assert u != t.lsvfs_url
    with pytest.raises(StorageError, match="unreachable") as exc:
        st = open_storage(u)
        try:
            st.list_files(0)
        finally:
            st.close()
    _no_secret(str(exc.value), t.secrets)


BAD_CREDENTIALS = {
    "azure": ("account-key=", "account-key=" + "A" * 86 + "%3D%3D"),
    "sftp": ("sftp-Pa55-word", "wrong-sftp-password"),
    "webdav": ("dav-Pa55-word", "wrong-dav-password"),
    "nats": ("nats-Pa55-word", "wrong-nats-password"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CREDENTIALS))
def test_bad_credentials(replica_target: Any, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """Wrong key/password: a StorageError saying access was denied, naming neither secret.
    (The GCS emulator and moto-for-OSS do not check credentials; S3's own check is in test_vfs.)"""
    t = replica_target(kind)
    old, new = BAD_CREDENTIALS[kind]
    if kind == "azure":
        u = re.sub(r"account-key=[^&]+", new, t.lsvfs_url)
        wrong = new.split("=", 1)[1]
    else:
        u = t.lsvfs_url.replace(old, new)
        wrong = new
    assert u != t.lsvfs_url
    caplog.set_level(logging.DEBUG, logger="lsvfs")
    with pytest.raises(StorageError) as exc:
        st = open_storage(u)
        try:
            st.list_files(0)
        finally:
            st.close()
    msg = str(exc.value)
    assert re.search(r"denied|authentication failed|authorization", msg, re.I), msg
    _no_secret(msg + caplog.text + repr(exc.value), (*t.secrets, wrong, wrong.replace("%3D", "=")))


def test_sftp_host_key_is_checked(replica_target: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    t = replica_target("sftp")
    other = tmp_path / "known_hosts"
    port = re.search(r"127\.0\.0\.1:(\d+)", t.lsvfs_url).group(1)  # type: ignore[union-attr]
    # a different key for the same host: refused as a mismatch
    import asyncssh

    fake = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    other.write_text(f"[127.0.0.1]:{port} {fake}\n")
    u = re.sub(r"known_hosts=[^&]+", f"known_hosts={other}", t.lsvfs_url)
    with pytest.raises(StorageError, match="HOST KEY MISMATCH"):
        open_storage(u).list_files(0)
    other.write_text("")
    with pytest.raises(StorageError, match="not in"):
        open_storage(u).list_files(0)
    # the explicit opt-out works, and says so loudly
    caplog.set_level(logging.WARNING, logger="lsvfs")
    st = open_storage(u + "&insecure_skip_host_key=true")
    try:
        assert st.list_files(0) == []
    finally:
        st.close()
    assert any(r.levelno == logging.WARNING and "NOT checked" in r.getMessage() for r in caplog.records)
    _no_secret(caplog.text, t.secrets)


def test_sftp_key_file_auth(replica_target: Any, sftp_server: Any) -> None:
    t = replica_target("sftp")
    u = re.sub(r"//([^:]+):[^@]+@", r"//\1@", t.lsvfs_url) + f"&key={sftp_server.client_key_path}"
    t.put("ltx/0/" + format_filename(1, 1), b"x" * 10)
    st = open_storage(u)
    try:
        assert [f.min_txid for f in st.list_files(0)] == [1]
    finally:
        st.close()


@contextmanager
def _sftp_file(base: Path, data: bytes, max_read: int | None) -> Iterator[tuple[Any, Any, Any]]:
    """An SFTP server of its own (`max_read` caps its answers) holding one LTX-named
    file of `data`: (server, storage, the file's FileInfo)."""
    from servers import SFTPServer

    server = SFTPServer(base, max_read=max_read).start()
    try:
        t = make_target("sftp", server)
        t.put("ltx/0/" + format_filename(1, 1), data)
        st = open_storage(t.lsvfs_url)
        try:
            [f] = st.list_files(0)
            yield server, st, f
        finally:
            st.close()
    finally:
        server.stop()


def test_sftp_reads_in_large_requests_and_takes_short_answers(tmp_path: Path) -> None:
    """Reads go out as READ_SIZE requests on a TCP_NODELAY socket (Nagle's
    algorithm would hold back a request behind an unacknowledged one); a server
    answering each read with fewer bytes than asked still yields exact bytes."""
    import socket

    from lsvfs.storage import sftp

    data = random.Random(5).randbytes(300_000)
    with _sftp_file(tmp_path, data, max_read=20_000) as (server, st, f):
        assert st.read_all(f) == data
        for off, n in ((0, 300_000), (1, 150_000), (65_535, 65_538), (299_000, 1000)):
            assert st.read(f, off, n) == data[off:off + n], (off, n)
        assert server.largest_read == sftp.READ_SIZE
        sock = st._transport.sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest.mark.parametrize("max_read", [None, 20_000])
def test_sftp_kept_handles_never_wait_for_answers_not_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 max_read: int | None) -> None:
    """Many ranged reads of one file reuse one kept handle. paramiko's readv left stray
    answers on it (a race with its request thread, or answers shorter than asked), and
    a later read starting inside one waited out READ_TIMEOUT: each read here must be
    exact and none may time out (READ_TIMEOUT cut to 3 s, so a stall fails fast)."""
    from lsvfs.storage import sftp

    monkeypatch.setattr(sftp, "READ_TIMEOUT", 3.0)
    data = random.Random(7).randbytes(400_000)
    with _sftp_file(tmp_path, data, max_read) as (_, st, f):
        rnd = random.Random(8)
        for _ in range(1500):  # the stall came within ~150-400 reads
            off = rnd.randrange(len(data))
            n = rnd.randrange(1, min(len(data) - off, 200_000) + 1)
            assert st.read(f, off, n) == data[off:off + n], (off, n)


def test_azure_reads_bodies_in_large_chunks(replica_target: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob's body is read BODY_CHUNK bytes at a time, not azure-core's 4 KiB:
    per-chunk Python overhead was half the client's CPU on a cold scan."""
    import requests

    from lsvfs.storage import azure

    t = replica_target("azure")
    data = random.Random(6).randbytes(700_000)
    t.put("ltx/0/" + format_filename(1, 1), data)
    sizes: list[int] = []
    real = requests.Response.iter_content

    def iter_content(self: requests.Response, chunk_size: int | None = 1, decode_unicode: bool = False) -> Any:
        sizes.append(chunk_size or 0)
        return real(self, chunk_size, decode_unicode)

    st = open_storage(t.lsvfs_url)
    try:
        [f] = st.list_files(0)
        monkeypatch.setattr(requests.Response, "iter_content", iter_content)
        assert st.read_all(f) == data and st.read(f, 5, 600_000) == data[5:600_005]
    finally:
        st.close()
    assert sizes and set(sizes) == {azure.BODY_CHUNK}


def test_azure_credentials_from_environment(replica_target: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """LITESTREAM_AZURE_ACCOUNT_KEY is used when the URL has no key; with neither a key, a SAS
    token nor azure-identity, the error says what to set."""
    from servers import AZURITE_KEY

    t = replica_target("azure")
    t.put("ltx/0/" + format_filename(1, 1), b"y" * 10)
    bare = re.sub(r"&account-key=[^&]+", "", t.lsvfs_url)
    monkeypatch.setenv("LITESTREAM_AZURE_ACCOUNT_KEY", AZURITE_KEY)
    st = open_storage(bare)
    try:
        assert [f.min_txid for f in st.list_files(0)] == [1]
    finally:
        st.close()
    monkeypatch.delenv("LITESTREAM_AZURE_ACCOUNT_KEY")
    monkeypatch.setitem(sys.modules, "azure.identity", None)
    with pytest.raises(StorageError, match="LITESTREAM_AZURE_ACCOUNT_KEY.*azure-identity"):
        open_storage(bare)


def test_gcs_emulator_from_environment(replica_target: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    t = replica_target("gcs")
    t.put("ltx/0/" + format_filename(1, 2), b"z" * 10)
    endpoint = re.search(r"endpoint=([^&]+)", t.lsvfs_url).group(1)  # type: ignore[union-attr]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    st = open_storage(t.lsvfs_url.split("?")[0])
    try:
        assert [(f.min_txid, f.max_txid) for f in st.list_files(0)] == [(1, 2)]
        assert st.read_all(st.list_files(0)[0]) == b"z" * 10
    finally:
        st.close()


# ---- URLs, extras, redaction ----------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "scheme", "fields"), [
    ("gs://bkt/a/b", "gs", {"bucket": "bkt", "path": "a/b"}),
    ("abs://acct@cont/p/q", "abs", {"bucket": "cont", "user": "acct", "path": "p/q"}),
    ("abs://cont/p?endpoint=127.0.0.1:10000/devstoreaccount1", "abs",
     {"bucket": "cont", "endpoint": "http://127.0.0.1:10000/devstoreaccount1"}),
    ("sftp://me@host/var/rep", "sftp", {"host": "host", "port": 22, "user": "me", "path": "/var/rep"}),
    ("sftp://me:pw@host:2222/r", "sftp", {"port": 2222, "password": "pw"}),
    ("webdav://host:8080/dav/db", "webdav", {"host": "host", "port": 8080, "path": "dav/db"}),
    ("webdavs://u:p@host/dav", "webdavs", {"user": "u", "password": "p"}),
    ("nats://host:4223/bucket", "nats", {"host": "host", "port": 4223, "bucket": "bucket"}),
    ("nats://host/bucket", "nats", {"port": 4222}),
    ("oss://bkt.oss-cn-beijing.aliyuncs.com/p", "oss", {"bucket": "bkt", "region": "cn-beijing", "path": "p"}),
    ("oss://bkt/p?region=cn-shanghai", "oss", {"bucket": "bkt", "region": "cn-shanghai"}),
])
def test_url_forms(url: str, scheme: str, fields: dict[str, Any]) -> None:
    u = parse_url(url)
    assert u.scheme == scheme
    for k, v in fields.items():
        assert getattr(u, k) == v, k


@pytest.mark.parametrize("url", [
    "gs:///nobucket", "abs:///p", "sftp://host/p", "nats://host/", "nats://host/a/b", "oss://x/p",
    "sftp://me@host/p?bogus=1", "webdav://:9/p",
])
def test_bad_urls_fail_with_url_error(url: str) -> None:
    with pytest.raises(URLError):
        parse_url(url)


@pytest.mark.parametrize(("scheme", "module", "extra"), [
    ("gs://b/p", "google.cloud.storage", "gcs"), ("abs://a@c/p", "azure.storage.blob", "azure"),
    ("sftp://u@h/p", "paramiko", "sftp"), ("webdav://h/p", "requests", "webdav"),
    ("nats://h/b", "nats", "nats"),
])
def test_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, scheme: str, module: str,
                                             extra: str) -> None:
    for name in list(sys.modules):
        if name.startswith("lsvfs.storage.") and name.split(".")[-1] in ("gcs", "azure", "sftp", "webdav", "nats"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError) as exc:
        open_storage(scheme)
    msg = str(exc.value)
    assert f'pip install "lsvfs[{extra}]"' in msg and "\n" not in msg


SECRET_URLS = [
    ("sftp://me:hunter2@h:22/p", "hunter2"),
    ("webdavs://me:hunter2@h/p", "hunter2"),
    ("nats://me:hunter2@h/b", "hunter2"),
    ("abs://a@c/p?account-key=hunter2key", "hunter2key"),
    ("abs://a@c/p?sas-token=sv%3D2020%26sig%3Dhunter2sig", "hunter2sig"),
    ("s3://b/p?secret-access-key=hunter2s3&region=x", "hunter2s3"),
    ("nats://h/b?token=hunter2tok", "hunter2tok"),
]


@pytest.mark.parametrize(("url", "secret"), SECRET_URLS)
def test_redact_url_hides_every_credential(url: str, secret: str) -> None:
    shown = redact_url(url)
    assert secret not in shown and "***" in shown
    assert shown.split("://")[0] == url.split("://")[0]
    assert redact_url(f"error: cannot open {url}: boom") == f"error: cannot open {shown}: boom"


@pytest.mark.parametrize(("url", "secret"), SECRET_URLS)
def test_credentials_never_shown_by_parse_repr_or_cli(url: str, secret: str, capsys: pytest.CaptureFixture[str]) -> None:
    """repr() of the parsed URL, a URL error, and the CLI's error line never show the secret."""
    try:
        shown = repr(parse_url(url))
    except URLError as e:
        shown = str(e)
    assert secret not in shown
    bad = url.replace("://", "://", 1) + ("&" if "?" in url else "?") + "bogus=1"
    with pytest.raises(URLError) as exc:
        parse_url(bad)
    assert secret not in str(exc.value)
    assert cli.main(["ls", bad]) == 1
    err = capsys.readouterr().err
    assert "error" in err and secret not in err


@pytest.mark.parametrize("kind", ["sftp", "webdav", "nats", "azure"])
def test_storage_repr_and_url_carry_no_secret(replica_target: Any, kind: str) -> None:
    t = replica_target(kind)
    st = open_storage(t.lsvfs_url)
    try:
        _no_secret(repr(st) + st.url, t.secrets)
        assert st.url.startswith(SCHEME[kind] + "://")
    finally:
        st.close()


# ---- one client per endpoint --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gcs", "azure", "webdav", "oss"])
def test_storages_on_one_endpoint_share_one_client(replica_target: Any, kind: str) -> None:
    """Two storages at different paths on one endpoint, opened through one
    SharedClients, hold one client (the SDK client, or WebDAV's pooled session);
    both work, the first close leaves it to the other, the last close drops
    it, and a storage opened afterwards gets a new one that works."""
    t = replica_target(kind)
    t.put(level_dir("", 0, LAYOUTS[SCHEME[kind]]) + format_filename(1, 1), b"x" * 10)
    other = t.lsvfs_url + "/other" if kind == "webdav" else t.lsvfs_url.replace("/db", "/other", 1)
    attr = "_session" if kind == "webdav" else "_client"
    clients = SharedClients()
    a, b = open_storage(t.lsvfs_url, clients), open_storage(other, clients)
    client = getattr(a, attr)
    assert getattr(b, attr) is client and len(clients) == 1
    assert [f.min_txid for f in a.list_files(0)] == [1] and b.list_files(0) == []
    a.close()
    assert len(clients) == 1 and b.list_files(0) == []
    b.close()
    assert len(clients) == 0
    again = open_storage(t.lsvfs_url, clients)
    try:
        assert getattr(again, attr) is not client and [f.min_txid for f in again.list_files(0)] == [1]
    finally:
        again.close()


# ---- storage faults apply to every backend ------------------------------------------------------------

@pytest.mark.parametrize("kind", BACKENDS)
def test_storage_faults_are_retried_on_every_backend(shared_primary: Any, kind: str) -> None:
    """tests/faults.py wraps each real client; with 30% of requests failing (timeouts,
    server errors, short reads), bounded retries still give exactly the primary's rows."""
    from faults import FaultyStorage

    p: ReplicatedPrimary = shared_primary(kind)
    p.wait_replicated()
    faulty = FaultyStorage(open_storage(p.replica_url), rate=0.3, kinds=("timeout", "5xx", "partial"),
                           ops=("read", "read_all"), seed=9)
    faulty.enabled = False  # open cleanly (as the chaos test does); the faults hit the page reads
    with closing(lsvfs.connect(p.replica_url, storage=faulty, read_retries=8, cache_size=0,
                               poll_interval=0)) as conn:
        faulty.enabled = True
        assert rows(conn) == p.execute("SELECT * FROM t ORDER BY id")
    assert sum(faulty.injected.values()) > 0 and len(faulty.injected) >= 2


def test_cli_errors_and_redacting_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's error line goes through redact_url, and RedactingFilter (which the CLI puts on its
    log handlers) rewrites any log record that quotes a URL with a credential."""
    import io

    from lsvfs.storage import RedactingFilter

    url = f"webdav://me:hunter2pw@127.0.0.1:{free_port()}/x"
    assert cli.main(["restore", url, str(tmp_path / "o.db")]) == 1
    captured = capsys.readouterr()
    assert "unreachable" in captured.err and "hunter2pw" not in captured.err + captured.out
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("lsvfs.test.redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("poll of %s failed", "sftp://me:hunter2pw@h/p?sas-token=sig%3Dabc")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().strip() == "poll of sftp://me:***@h/p?sas-token=*** failed"


def test_gcs_bad_application_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without an emulator, GCS uses application default credentials; a credentials file that is
    not there fails at open with a StorageError saying what to set (no network involved)."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(StorageError, match="GOOGLE_APPLICATION_CREDENTIALS.*missing.json"):
        open_storage("gs://lsvfs-some-bucket/db")


def test_oss_bad_credentials(moto_s3_auth: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """OSS goes through the S3 client: against a server that checks signatures, a wrong key is
    InvalidAccessKeyId at the first listing, and the secret is nowhere in the message."""
    for var in list(os.environ):
        if var.startswith(("AWS_", "LITESTREAM_", "OSS_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "LTAIWRONGWRONGWRONG")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "oss-secret-hunter2")
    st = open_storage(f"oss://{moto_s3_auth.bucket}/db?endpoint={moto_s3_auth.endpoint}&region=us-east-1")
    try:
        with pytest.raises(StorageError, match="InvalidAccessKeyId") as exc:
            st.list_files(0)
    finally:
        st.close()
    assert "oss-secret-hunter2" not in str(exc.value) and str(exc.value).startswith("oss://")


# ---- webdavs:// with a private CA ----------------------------------------------------------------------

CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


def _no_ca_from_environment(mp: pytest.MonkeyPatch) -> None:
    """This machine (and CI) may name a CA bundle in the environment: none of it counts here."""
    for var in CA_VARIABLES:
        mp.delenv(var, raising=False)


@pytest.fixture(scope="module")
def webdavs_primary(webdavs_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A primary that the real `litestream replicate` writes over HTTPS to the TLS WebDAV
    server, trusting the session's CA through SSL_CERT_FILE (Go's variable)."""
    mp = pytest.MonkeyPatch()
    lsvfs_env(mp, "webdav")
    p = ReplicatedPrimary(tmp_path_factory.mktemp("webdavs"), storage="webdav", target=webdavs_target(webdavs_server))
    try:
        workload(p, rounds=2)
        p.wait_replicated()
        yield p
    finally:
        p.close()
        mp.undo()


def test_webdavs_replica_opens_and_queries_with_its_ca(webdavs_primary: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Litestream wrote this replica over HTTPS; lsvfs, trusting the CA named by ?ca=, lists
    what Litestream wrote and answers queries exactly as the primary."""
    p: ReplicatedPrimary = webdavs_primary
    _no_ca_from_environment(monkeypatch)
    assert p.replica_url.startswith("webdavs://") and "?ca=" in p.replica_url
    txid = p.wait_replicated()
    files, written = _quiet_listing(p)
    assert files and written == {level_dir("", f.level, "ltx") + format_filename(f.min_txid, f.max_txid)
                                 for f in files}
    with closing(lsvfs.connect(p.replica_url)) as conn:
        assert txid_of(conn) == txid
        assert rows(conn) == p.execute("SELECT * FROM t ORDER BY id")
    assert lsvfs.open_replicas() == {}


@pytest.mark.parametrize("var", CA_VARIABLES)
def test_webdavs_ca_from_the_environment(webdavs_server: Any, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path, var: str) -> None:
    """Without ?ca=, the CA comes from requests' variables or Go's SSL_CERT_FILE; ?ca= wins over
    them; a named CA file that is not there fails at open, saying so."""
    from servers import make_ca

    _no_ca_from_environment(monkeypatch)
    t = webdavs_target(webdavs_server)
    t.put("ltx/0/" + format_filename(1, 1), b"w" * 10)
    bare = t.lsvfs_url.split("?")[0]
    monkeypatch.setenv(var, str(webdavs_server.tls.ca))
    st = open_storage(bare)
    try:
        assert [f.min_txid for f in st.list_files(0)] == [1]
        assert st.read_all(st.list_files(0)[0]) == b"w" * 10
    finally:
        st.close()
    monkeypatch.setenv(var, str(make_ca(tmp_path / "other", "some other CA").ca))
    st = open_storage(t.lsvfs_url)  # ?ca= names the right one
    try:
        assert [f.min_txid for f in st.list_files(0)] == [1]
    finally:
        st.close()
    with pytest.raises(StorageError, match="TLS certificate rejected"):
        open_storage(bare).list_files(0)
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(StorageError, match=f"CA file '{re.escape(str(missing))}' \\(from \\?ca=\\) does not exist"):
        open_storage(f"{bare}?ca={missing}")


@pytest.mark.parametrize("trust", ["no CA", "another CA"])
def test_webdavs_untrusted_certificate_is_one_clear_error(webdavs_primary: Any, tmp_path: Path, trust: str,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A certificate the client does not trust: one StorageError, one line, no chained traceback,
    saying what to do, with no password in it, in the log or in the CLI's output."""
    from servers import make_ca

    p: ReplicatedPrimary = webdavs_primary
    _no_ca_from_environment(monkeypatch)
    bare = p.replica_url.split("?")[0]
    u = bare if trust == "no CA" else f"{bare}?ca={make_ca(tmp_path / 'other', 'some other CA').ca}"
    caplog.set_level(logging.DEBUG, logger="lsvfs")
    with pytest.raises(StorageError) as exc:
        lsvfs.connect(u)
    msg = str(exc.value)
    assert "TLS certificate rejected" in msg and "?ca=" in msg and "skip-verify" in msg, msg
    assert "certificate" in msg.split("rejected (", 1)[1]  # the ssl module's reason is named
    assert "\n" not in msg and exc.value.__cause__ is None and exc.value.__suppress_context__
    assert lsvfs.open_replicas() == {}
    assert cli.main(["ls", u]) == 1
    out = capsys.readouterr()
    assert out.err.count("error:") == 1 and "TLS certificate rejected" in out.err and "Traceback" not in out.err
    _no_secret(msg + repr(exc.value) + caplog.text + out.out + out.err, p.target.secrets)


def test_webdavs_skip_verify_reads_and_warns(webdavs_primary: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                             recwarn: pytest.WarningsRecorder) -> None:
    """?skip-verify=true reads the replica without trusting its CA, even with a CA bundle in the
    environment that does not know the server (requests would let REQUESTS_CA_BUNDLE win over a
    session's verify=False); it says so in one WARNING per open, and urllib3 adds no warning
    per request."""
    from servers import make_ca

    p: ReplicatedPrimary = webdavs_primary
    _no_ca_from_environment(monkeypatch)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(make_ca(tmp_path / "other", "some other CA").ca))
    u = p.replica_url.split("?")[0] + "?skip-verify=true"
    caplog.set_level(logging.WARNING, logger="lsvfs")
    with closing(lsvfs.connect(u)) as conn:
        assert rows(conn) == p.execute("SELECT * FROM t ORDER BY id")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "NOT verified" in r.getMessage()]
    assert len(warned) == 1 and warned[0].name == "lsvfs.storage.webdav"
    assert not [w for w in recwarn.list if "Unverified HTTPS" in str(w.message)]
    _no_secret(caplog.text, p.target.secrets)


def test_webdavs_to_a_plain_http_server(replica_target: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """webdavs:// to a server that speaks plain HTTP: a TLS handshake error, not 'unreachable'."""
    _no_ca_from_environment(monkeypatch)
    t = replica_target("webdav")
    u = t.lsvfs_url.replace("webdav://", "webdavs://", 1)
    with pytest.raises(StorageError, match="TLS handshake failed") as exc:
        open_storage(u).list_files(0)
    _no_secret(str(exc.value), t.secrets)


# ---- NATS chunk layout ----------------------------------------------------------------------------------

def test_nats_chunks_are_as_litestream_writes_them(replicated_primary: Any) -> None:
    """The chunk sizes of every object the real `litestream replicate` wrote to nats-server
    are those `servers.litestream_chunks` gives (the layout the backend benchmark and
    test_nats_ranged.py put), and lsvfs reads each right: the compactions and snapshots
    (tiny chunks) whole by one consumer, chunk for chunk."""
    from servers import litestream_chunks

    from lsvfs.errors import MissingFileError

    p: ReplicatedPrimary = replicated_primary("nats", **FAST_COMPACTION)
    p.write_until_snapshot(rows=30, size=300)
    st = p.open_storage()
    files = _all_files(st)
    try:
        async def sizes(name: str) -> list[int]:
            info = await st._conn.obs.get_info(name)
            sub = await st._conn.js.subscribe(f"$O.{st.bucket}.C.{info.nuid}", ordered_consumer=True)
            try:
                return [len((await sub.next_msg(5)).data) for _ in range(info.chunks)]
            finally:
                await sub.unsubscribe()

        checked = 0
        for f in files:
            name = st.object_name(f)
            try:
                data = st.read_all(f)
                got = st._conn.run(sizes(name), "chunks")
            except MissingFileError:
                continue  # Litestream's retention removed it since the listing
            assert got == litestream_chunks(name, data), name
            assert sum(got) == f.size
            checked += f.level > 0
        assert checked and st.fetched["object_msgs"] >= checked * 10
    finally:
        st.close()


# ---- NATS credentials ----------------------------------------------------------------------------------

def test_nats_token_replica_opens_and_queries(nats_token_server: Any, tmp_path: Path) -> None:
    """A server that takes a token: Litestream writes with its `token` setting, lsvfs reads
    with ?token= and answers exactly as the primary."""
    p = ReplicatedPrimary(tmp_path / "p", storage="nats", target=nats_token_target(nats_token_server))
    try:
        workload(p, rounds=1)
        txid = p.wait_replicated()
        with closing(lsvfs.connect(p.replica_url)) as conn:
            assert txid_of(conn) == txid
            assert rows(conn) == p.execute("SELECT * FROM t ORDER BY id")
    finally:
        p.close()
    assert lsvfs.open_replicas() == {}


NATS_REFUSALS = {
    # case: (server fixture, credentials in the URL, what the message says was refused)
    "wrong password": ("nats_server", "lsvfs:wrong-nats-pw@", "user 'lsvfs' and its password"),
    "wrong token": ("nats_token_server", "?token=wrong-nats-token", "the token (?token=)"),
    "no credentials": ("nats_token_server", "", "none were given"),
    "password for a token server": ("nats_token_server", "lsvfs:nats-Pa55-word@", "user 'lsvfs'"),
}


@pytest.mark.parametrize("case", sorted(NATS_REFUSALS))
def test_nats_refused_credentials_fail_at_connect(request: pytest.FixtureRequest, case: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Credentials the server refuses: opening the storage (the connect, before any listing)
    raises one StorageError naming what was refused, never a secret, in the message or the log;
    lsvfs.connect raises the same and leaves no replica open."""
    from servers import NATS_PASSWORD, NATS_TOKEN

    fixture, creds, refused = NATS_REFUSALS[case]
    server = request.getfixturevalue(fixture)
    bucket = server.create_bucket()
    userinfo, query = (creds, "") if creds.endswith("@") else ("", creds)
    u = f"nats://{userinfo}127.0.0.1:{server.port}/{bucket}{query}"
    secrets = (NATS_PASSWORD, NATS_TOKEN, "wrong-nats-pw", "wrong-nats-token")
    caplog.set_level(logging.DEBUG, logger="lsvfs")
    with pytest.raises(StorageError) as exc:
        open_storage(u)
    msg = str(exc.value)
    assert "connect failed: authorization violation" in msg and refused in msg, msg
    assert "\n" not in msg and exc.value.__cause__ is None
    with pytest.raises(StorageError, match="authorization violation"):
        lsvfs.connect(u)
    assert lsvfs.open_replicas() == {}
    _no_secret(msg + repr(exc.value) + caplog.text, secrets)
