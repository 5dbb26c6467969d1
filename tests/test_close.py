"""Issue 18: `close()` never hangs, whatever storage is doing.

Each remote backend's session server is reached through a HoldingProxy: once
a replica is open through it, the proxy holds every answer, so the replica's
poller, its read-ahead workers and a reader (a thread in `Replica.read_page`,
what the VFS runs on a page miss) all wait in storage calls. Closing the last
connection must then return within BOUND, every `lsvfs-*` thread of that
replica must end within BOUND after, the reader must get a StorageError, and
a new connection to the replica must work. Before each storage's close cut
its calls in flight, those threads waited for the proxy (a stalled server's
answer, or the request timeouts: 30 s and more) and the reader with them.

Clients shared by storages on one endpoint (GCS, Azure, WebDAV) are cut per
storage: closing one replica leaves another's call on the same client in
flight, and it completes once its answer comes.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from backends import ReplicaTarget
from holding_proxy import HoldingProxy
from replication import wait_until
from synthetic import S3Target, SyntheticPrimary

import lsvfs
import lsvfs.replica
import lsvfs.replica.reader
from lsvfs.errors import StorageError
from lsvfs.hydration import Hydrator
from lsvfs.replica import Replica
from lsvfs.storage import LAYOUTS, open_storage, parse_url
from lsvfs.storage.base import format_filename, level_dir

BOUND = 5.0
"""Seconds close() may take with calls in flight, and then its threads to end."""
ROWS = 300
CHUNK = 64 << 10
"""Bytes per read-ahead request: a miss mid-database then starts a worker on the next chunk."""
SCHEMES = {"gcs": "gs", "azure": "abs", "sftp": "sftp", "webdav": "webdav", "nats": "nats"}
SHARED = ("gcs", "azure", "webdav")
"""Backends whose storages on one endpoint share one client."""
STORAGE_CODE = str(Path(lsvfs.__file__).parent / "storage")


class _Place:
    """A replica location as synthetic.SyntheticPrimary writes one: `put` by level and TXIDs."""

    def __init__(self, url: str, put: Callable[[str, bytes], None]) -> None:
        self.url = url
        self._put = put
        self._layout = LAYOUTS[parse_url(url).scheme]

    def put(self, level: int, min_txid: int, max_txid: int, data: bytes) -> None:
        self._put(level_dir("", level, self._layout) + format_filename(min_txid, max_txid), data)


def _written(url: str, put: Callable[[str, bytes], None]) -> None:
    """A replica of ROWS rows of 4000 bytes (about 300 pages) at `url`."""
    p = SyntheticPrimary(_Place(url, put))  # type: ignore[arg-type]
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    p.commit("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
             "INSERT INTO t(v) SELECT randomblob(4000) FROM n", (ROWS,))


@dataclass
class _Replica:
    url: str
    """Reached through the proxy."""
    conn: Any
    rep: Replica


def _via(t: ReplicaTarget, proxy: HoldingProxy, tmp_path: Path, sub: str = "") -> str:
    """`t`'s URL (at path `sub` below it, if given) with the server's port swapped for the proxy's."""
    url = t.lsvfs_url
    if sub:
        url = re.sub(r"^([^?]*)", rf"\1/{sub}", url, count=1)
    port = re.search(r"127\.0\.0\.1:(\d+)", url)
    assert port is not None
    url = url.replace(f"127.0.0.1:{port.group(1)}", f"127.0.0.1:{proxy.port}")
    known = re.search(r"known_hosts=([^&]+)", url)
    if known:  # SFTP checks the host key by host and port: the proxy's port needs its line
        text = Path(known.group(1)).read_text().replace(f"[127.0.0.1]:{port.group(1)}", f"[127.0.0.1]:{proxy.port}")
        mine = tmp_path / f"known_hosts_{proxy.port}"
        mine.write_text(text)
        url = url.replace(known.group(0), f"known_hosts={mine}")
    return url


@contextmanager
def _proxy(t: ReplicaTarget) -> Iterator[HoldingProxy]:
    port = re.search(r"127\.0\.0\.1:(\d+)", t.lsvfs_url)
    assert port is not None
    proxy = HoldingProxy(int(port.group(1)))
    try:
        yield proxy
    finally:
        proxy.release()
        proxy.close()


def _open(url: str) -> _Replica:
    """A connection on `url`, polling every 50 ms, nothing prefetched (so a page read goes to storage)."""
    conn = lsvfs.connect(url, poll_interval=0.05, prefetch="off")
    try:
        assert conn.execute("SELECT max(id) FROM t").fetchall() == [(ROWS,)]  # a few pages: the rest stay in storage
    except BaseException:
        conn.close()
        raise
    return _Replica(url, conn, lsvfs.open_replicas()[url])


class _Reader(threading.Thread):
    """A page miss in the middle of the database, with read-ahead (so fetch workers start too)."""

    def __init__(self, rep: Replica) -> None:
        super().__init__(name=f"reader {rep.name}", daemon=True)
        self.rep = rep
        self.page: bytes | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        snap = self.rep.current()
        try:
            self.page = self.rep.read_page(snap, snap.commit // 2, self.rep.options.readahead)
        except BaseException as e:  # noqa: BLE001 - what the test looks at
            self.error = e


def _in_storage(t: threading.Thread) -> bool:
    """Whether thread `t` is inside a storage client's code now."""
    frame = sys._current_frames().get(t.ident or -1)
    while frame is not None:
        if frame.f_code.co_filename.startswith(STORAGE_CODE):
            return True
        frame = frame.f_back
    return False


def _threads(rep: Replica) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("lsvfs-poll ", "lsvfs-fetch ", "lsvfs-hydrate "))
            and t.name.split(" ", 1)[1] == rep.name]


def _held(r: _Replica, proxy: HoldingProxy, hydrate: bool = False) -> _Reader:
    """With the proxy holding: the poller in a listing and a fetch worker reading ahead, both
    waiting in storage, and a reader in a page miss waiting for its read (its own, or the
    worker's that brings its page); with `hydrate`, hydration started then, waiting for its
    reads too."""
    proxy.hold()
    if hydrate:  # started here rather than at open, so that its reads are surely held
        r.rep.hydrator = Hydrator(r.rep, None)
        r.rep.hydrator.start()
    reader = _Reader(r.rep)
    reader.start()

    def waiting() -> bool:
        threads = _threads(r.rep)
        poller = [t for t in threads if t.name.startswith("lsvfs-poll ")]
        fetchers = [t for t in threads if t.name.startswith("lsvfs-fetch ")]
        hydrating = [t for t in threads if t.name.startswith("lsvfs-hydrate ")]
        return bool(proxy.held and poller and fetchers and reader.is_alive() and _in_storage(poller[0])
                    and any(_in_storage(t) for t in fetchers) and (hydrating or not hydrate))

    wait_until(waiting, 30, interval=0.02, what="the reader, the poller and a fetch worker held in storage")
    return reader


def _closes_promptly(r: _Replica, reader: _Reader, before: set[threading.Thread], spare: str = "") -> None:
    """Closing the last connection returns within BOUND, and then within BOUND every thread
    started since `before` that is lsvfs's (`lsvfs-*`) or paramiko's (an SSH transport) ends,
    and the reader has its error. Threads of the replica named `spare` may live on."""
    t0 = time.monotonic()
    r.conn.close()
    took = time.monotonic() - t0
    assert took < BOUND, f"close() took {took:.1f}s with calls in flight"
    assert r.url not in lsvfs.open_replicas()

    def ours() -> list[str]:
        return [t.name for t in threading.enumerate() if t not in before and t.is_alive()
                and (t.name.startswith("lsvfs-") or type(t).__name__ == "Transport")
                and not (spare and t.name.endswith(" " + spare))]

    deadline = time.monotonic() + BOUND
    while ours() and time.monotonic() < deadline:
        time.sleep(0.02)
    left = ours()
    assert not left, f"still running {BOUND}s after close returned: {left}"
    reader.join(BOUND)
    assert not reader.is_alive(), "the reader still waits"
    assert isinstance(reader.error, StorageError), f"the reader got {reader.error!r}"


def _target(kind: str, replica_target: Any, request: pytest.FixtureRequest) -> ReplicaTarget:
    """A fresh replica location of `kind` on the session's server; for S3, a moto bucket."""
    if kind != "s3":
        t: ReplicaTarget = replica_target(kind)
        return t
    moto = request.getfixturevalue("moto_s3")
    request.getfixturevalue("s3_env")
    s3 = S3Target(moto, moto.create_bucket("close"))
    return ReplicaTarget("s3", s3.url, s3.url, "db/", names=list,
                         put=lambda n, d: moto.bulk_put(s3.bucket, [("db/" + n, d)]))


@pytest.mark.parametrize("hydrate", [False, True], ids=["reading", "hydrating"])
@pytest.mark.parametrize("kind", [*SCHEMES, "s3"])
def test_close_ends_calls_held_in_flight(replica_target: Any, request: pytest.FixtureRequest, tmp_path: Path,
                                         kind: str, hydrate: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lsvfs.replica.reader, "CHUNK_BYTES", CHUNK)
    t = _target(kind, replica_target, request)
    _written(t.lsvfs_url, t.put)
    with _proxy(t) as proxy:
        url = _via(t, proxy, tmp_path)
        before = set(threading.enumerate())
        r = _open(url)
        try:
            reader = _held(r, proxy, hydrate)
            _closes_promptly(r, reader, before)
        finally:
            r.conn.close()
        if hydrate:
            assert r.rep.hydrator is not None and not Path(r.rep.hydrator.path).exists(), "the temp file is removed"
        proxy.release()
        with closing(lsvfs.connect(url, poll_interval=0)) as again:
            assert again.execute("SELECT count(*), sum(length(v)) FROM t").fetchall() == [(ROWS, ROWS * 4000)]


def test_close_of_a_directory_replica_at_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory replica's calls are local system calls, which no proxy can hold: closing it
    while the poller, read-ahead and hydration run returns within BOUND and their threads end
    within BOUND, and a reader in a page miss meanwhile ends (with its page or an error)."""
    monkeypatch.setattr(lsvfs.replica.reader, "CHUNK_BYTES", CHUNK)
    d = tmp_path / "replica"

    def put(name: str, data: bytes) -> None:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)

    _written(d.as_uri(), put)
    before = set(threading.enumerate())
    conn = lsvfs.connect(d.as_uri(), poll_interval=0.01, hydration=True)
    rep = lsvfs.open_replicas()[d.as_uri()]
    reader = _Reader(rep)
    reader.start()
    t0 = time.monotonic()
    conn.close()
    assert time.monotonic() - t0 < BOUND
    deadline = time.monotonic() + BOUND
    while any(t.is_alive() for t in threading.enumerate() if t not in before and t.name.startswith("lsvfs-")) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [t.name for t in threading.enumerate() if t not in before and t.name.startswith("lsvfs-")]
    reader.join(BOUND)
    assert not reader.is_alive() and (reader.page is not None or isinstance(reader.error, StorageError))


@pytest.mark.parametrize("kind", SHARED)
def test_closing_one_replica_leaves_the_calls_of_another_on_its_client(
        replica_target: Any, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two replicas at two paths of one endpoint share one storage client; both have a reader,
    a poll and read-ahead held. Closing the first ends its calls and threads; the second's
    reader still waits, gets its page once the proxy lets the answers through, and its
    connection reads on."""
    monkeypatch.setattr(lsvfs.replica.reader, "CHUNK_BYTES", CHUNK)
    t = replica_target(kind)
    _written(t.lsvfs_url, t.put)
    _written(re.sub(r"^([^?]*)", r"\1/two", t.lsvfs_url, count=1), lambda n, d: t.put("two/" + n, d))
    with _proxy(t) as proxy:
        one, two = _via(t, proxy, tmp_path), _via(t, proxy, tmp_path, "two")
        before = set(threading.enumerate())
        a = _open(one)
        b = _open(two)
        try:
            assert a.rep.storage.inner._lease.client is b.rep.storage.inner._lease.client  # type: ignore[attr-defined]
            reader_b = _Reader(b.rep)
            reader_a = _held(a, proxy)
            reader_b.start()

            def b_held() -> bool:
                return reader_b.is_alive() and any(_in_storage(t) for t in _threads(b.rep))

            wait_until(b_held, 30, interval=0.02, what="the second reader held")
            # The index pools' threads, whose names say no replica, may be the second's.
            before |= {t for t in threading.enumerate() if t.name.startswith("lsvfs-index")}
            _closes_promptly(a, reader_a, before, spare=b.rep.name)
            assert b_held(), "the other replica's calls were cut"
            proxy.release()
            reader_b.join(30)
            assert reader_b.error is None and reader_b.page is not None
            assert len(reader_b.page) == b.rep.current().page_size
            assert b.conn.execute("SELECT count(*), sum(length(v)) FROM t").fetchall() == [(ROWS, ROWS * 4000)]
        finally:
            a.conn.close()
            b.conn.close()


@pytest.mark.parametrize("kind", ["gcs", "azure", "sftp", "webdav"])
def test_close_ends_a_call_held_while_it_connects(replica_target: Any, tmp_path: Path, kind: str) -> None:
    """A storage's first call, held from its start (for SFTP: in the SSH handshake, under
    the lock that serializes connecting), ends with a StorageError within BOUND of close(),
    and close() returns within BOUND (NATS connects before the storage exists)."""
    t = replica_target(kind)
    with _proxy(t) as proxy:
        st = open_storage(_via(t, proxy, tmp_path))
        proxy.hold()
        errors: list[BaseException] = []

        def listing() -> None:
            try:
                st.list_files(0)
            except BaseException as e:  # noqa: BLE001 - what the test looks at
                errors.append(e)

        caller = threading.Thread(target=listing, name="caller", daemon=True)
        caller.start()
        wait_until(lambda: proxy.held and _in_storage(caller), 30, interval=0.02, what="the first call held")
        t0 = time.monotonic()
        st.close()
        took = time.monotonic() - t0
        assert took < BOUND, f"close() took {took:.1f}s with a call in flight"
        caller.join(BOUND)
        assert not caller.is_alive(), "the call still waits"
        assert len(errors) == 1 and isinstance(errors[0], StorageError), errors
