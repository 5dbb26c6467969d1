"""Synthetic replicas: LTX files written with `ltx_writer.encode`, ground truth kept.

A `SyntheticPrimary` is an in-memory SQLite database (or raw pages) whose
every commit becomes one L0 file, exactly as Litestream lays them out, in a
directory or a moto S3 bucket. It keeps every committed image (or, for raw
pages, every page version), so a test can check any page the replica serves
against the state of the TXID it claims, and can compact, snapshot, delete or
hold back files to build gaps, retention and eventual-consistency cases in
milliseconds rather than waiting for a real `litestream replicate`.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import apsw

import ltx_writer
from lsvfs import ltx
from lsvfs.storage.base import FileInfo, format_filename

NO_CHECKSUM = ltx.FLAG_NO_CHECKSUM
"""Litestream 0.5 writes every file with this flag; so do we."""


class Target(Protocol):
    """Where LTX files go: a directory or an S3 prefix."""

    url: str

    def put(self, level: int, min_txid: int, max_txid: int, data: bytes) -> None: ...
    def delete(self, level: int, min_txid: int, max_txid: int) -> None: ...
    def names(self, level: int) -> list[tuple[int, int]]: ...


class DirTarget:
    """`<root>/ltx/<level>/<min>-<max>.ltx`, written to a temp name and renamed like Litestream."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def path(self, level: int, min_txid: int, max_txid: int) -> Path:
        return self.root / "ltx" / str(level) / format_filename(min_txid, max_txid)

    def put(self, level: int, min_txid: int, max_txid: int, data: bytes) -> None:
        p = self.path(level, min_txid, max_txid)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)

    def delete(self, level: int, min_txid: int, max_txid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(level, min_txid, max_txid).unlink()

    def names(self, level: int) -> list[tuple[int, int]]:
        d = self.root / "ltx" / str(level)
        if not d.is_dir():
            return []
        out = []
        for n in os.listdir(d):
            if n.endswith(".ltx"):
                lo, hi = n[:-4].split("-")
                out.append((int(lo, 16), int(hi, 16)))
        return sorted(out)

    def clear(self) -> None:
        shutil.rmtree(self.root / "ltx", ignore_errors=True)


class S3Target:
    """`<path>/<level:04x>/<min>-<max>.ltx` in a moto bucket (written in-process, read over HTTP)."""

    def __init__(self, moto: Any, bucket: str, path: str = "db") -> None:
        self.moto = moto
        self.bucket = bucket
        self.path = path.strip("/")
        self.url = moto.url(bucket, self.path)
        self._client = moto.client()

    def key(self, level: int, min_txid: int, max_txid: int) -> str:
        return f"{self.path}/{level:04x}/{format_filename(min_txid, max_txid)}"

    def put(self, level: int, min_txid: int, max_txid: int, data: bytes) -> None:
        self.moto.bulk_put(self.bucket, [(self.key(level, min_txid, max_txid), data)])

    def delete(self, level: int, min_txid: int, max_txid: int) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self.key(level, min_txid, max_txid))

    def names(self, level: int) -> list[tuple[int, int]]:
        out = []
        for k in self.moto.keys(self.bucket, f"{self.path}/{level:04x}/"):
            lo, hi = k.rsplit("/", 1)[1][:-4].split("-")
            out.append((int(lo, 16), int(hi, 16)))
        return sorted(out)


def make_target(kind: str, tmp_path: Path, request: Any = None) -> DirTarget | S3Target:
    """A fresh directory (kind="file") or moto bucket (kind="s3") for a synthetic replica."""
    if kind == "file":
        return DirTarget(tmp_path / f"replica-{time.monotonic_ns()}")
    assert request is not None, "an s3 target needs the pytest request (for the moto fixture)"
    moto = request.getfixturevalue("moto_s3")
    request.getfixturevalue("s3_env")
    return S3Target(moto, moto.create_bucket("synth"))


class SyntheticPrimary:
    """A SQLite database whose commits become LTX files, with every image kept.

    `commit(sql)` runs SQL in one transaction and publishes one L0 file with
    the pages that changed (the first one holds every page, min TXID 1).
    `publish=False` commits without writing the file (the test writes it
    later with `write_l0`, to play eventual consistency or gaps).
    """

    def __init__(self, target: DirTarget | S3Target, page_size: int = 4096, *, keep_images: bool = True,
                 auto_vacuum: str | None = None) -> None:
        self.target = target
        self.url = target.url
        self.page_size = page_size
        self.keep_images = keep_images
        self.db = apsw.Connection(":memory:")
        self.db.execute(f"PRAGMA page_size={page_size}")
        if auto_vacuum:
            self.db.execute(f"PRAGMA auto_vacuum={auto_vacuum}")
        self.txid = 0
        self.images: dict[int, bytes] = {0: b""}
        self.changed: dict[int, dict[int, bytes]] = {}
        self.commits: dict[int, int] = {0: 0}
        self.timestamps: dict[int, int] = {}
        self._image = b""
        self._lock = threading.Lock()

    # -- writing ----------------------------------------------------------

    def commit(self, sql: str, params: Sequence[Any] | None = None, *, publish: bool = True,
               many: Iterable[Sequence[Any]] | None = None, transaction: bool = True) -> int:
        """Run `sql` (or executemany with `many`) in one transaction (or bare, for
        VACUUM); return the new TXID."""
        with self._lock:
            if not transaction:
                list(self.db.execute(sql, params))
            else:
                with self.db:
                    if many is not None:
                        self.db.executemany(sql, many)
                    else:
                        list(self.db.execute(sql, params))
            return self._record(publish)

    def _record(self, publish: bool) -> int:
        image = bytes(self.db.serialize("main") or b"")
        ps = self.page_size
        old = self._image
        pages = {n // ps + 1: image[n:n + ps] for n in range(0, len(image), ps)
                 if self.txid == 0 or old[n:n + ps] != image[n:n + ps]}
        self.txid += 1
        t = self.txid
        self._image = image
        if self.keep_images:
            self.images[t] = image
        self.changed[t] = pages
        self.commits[t] = len(image) // ps
        self.timestamps[t] = int(time.time() * 1000)
        if publish:
            self.write_l0(t)
        return t

    def encode(self, min_txid: int, max_txid: int) -> bytes:
        """The LTX file taking the state at min_txid-1 to max_txid (min 1 = a snapshot)."""
        pages: dict[int, bytes] = {}
        commit = self.commits[max_txid]
        for t in range(min_txid, max_txid + 1):
            pages.update(self.changed[t])
        if min_txid == 1 and self.keep_images:
            img = self.images[max_txid]
            ps = self.page_size
            pages = {n // ps + 1: img[n:n + ps] for n in range(0, len(img), ps)}
        lock = ltx.lock_pgno(self.page_size)
        items = [(p, pg) for p, pg in pages.items() if p <= commit and p != lock]
        hdr = ltx.Header(NO_CHECKSUM, self.page_size, commit, min_txid, max_txid, self.timestamps[max_txid])
        return ltx_writer.encode(hdr, items)

    def write(self, level: int, min_txid: int, max_txid: int) -> None:
        self.target.put(level, min_txid, max_txid, self.encode(min_txid, max_txid))

    def write_l0(self, txid: int) -> None:
        self.write(0, txid, txid)

    def compact(self, level: int, min_txid: int, max_txid: int, *, delete_l0: bool = False) -> None:
        """A level-`level` file for [min_txid, max_txid]; optionally drop the L0 files it covers."""
        self.write(level, min_txid, max_txid)
        if delete_l0:
            for t in range(min_txid, max_txid + 1):
                self.target.delete(0, t, t)

    def snapshot(self) -> None:
        """An L9 snapshot [1, txid] holding every page."""
        self.write(9, 1, self.txid)

    def delete(self, level: int, min_txid: int, max_txid: int) -> None:
        self.target.delete(level, min_txid, max_txid)

    def delete_all(self) -> None:
        """Remove every file of every level."""
        for level in range(10):
            for lo, hi in self.target.names(level):
                self.target.delete(level, lo, hi)

    def forget(self, upto: int) -> None:
        """Drop the kept images and page changes of TXIDs <= `upto` (a long run's memory stays
        bounded; no file reaching back to them can be encoded afterwards)."""
        with self._lock:
            for d in (self.images, self.changed, self.commits, self.timestamps):
                for t in [t for t in d if 0 < t <= upto]:
                    del d[t]

    # -- truth ------------------------------------------------------------

    def image(self, txid: int | None = None) -> bytes:
        return self._image if txid is None else self.images[txid]

    def rows(self, sql: str, txid: int | None = None, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """`sql` against the primary now, or against its image at `txid`."""
        with self._lock:
            if txid is None or txid == self.txid:
                return list(self.db.execute(sql, params or None))
        c = apsw.Connection(":memory:")
        try:
            c.deserialize("main", self.images[txid])
            return list(c.execute(sql, params or None))
        finally:
            c.close()

    def page(self, txid: int, pgno: int) -> bytes:
        img = self.images[txid]
        ps = self.page_size
        return img[(pgno - 1) * ps:pgno * ps]


class RawPrimary:
    """Raw pages (not SQLite): page bytes name their pgno and the TXID that wrote them.

    For races and memory tests: a reader checks any page against the TXID it
    was served under without keeping whole images, via each pgno's version list.
    """

    def __init__(self, target: DirTarget | S3Target, page_size: int = 1024) -> None:
        self.target = target
        self.url = target.url
        self.page_size = page_size
        self.txid = 0
        self.commit = 0
        self._versions: dict[int, list[int]] = {}  # pgno -> ascending TXIDs that wrote it
        self._floor = 0  # TXIDs below it were forgotten
        self._lock = threading.Lock()

    def content(self, pgno: int, txid: int) -> bytes:
        """Deterministic, compressible-but-distinct bytes of `pgno` as written by `txid`."""
        head = pgno.to_bytes(4, "big") + txid.to_bytes(8, "big")
        return (head * (self.page_size // len(head) + 1))[:self.page_size]

    def write(self, pgnos: Iterable[int], commit: int | None = None, *, level: int = 0,
              publish: bool = True) -> int:
        """One transaction rewriting `pgnos` (and setting the size); returns its TXID."""
        with self._lock:
            self.txid += 1
            t = self.txid
            self.commit = commit if commit is not None else max(self.commit, max(pgnos, default=0))
            lock = ltx.lock_pgno(self.page_size)
            want = sorted({p for p in pgnos if p <= self.commit and p != lock})
            for p in want:
                self._versions.setdefault(p, []).append(t)
            if publish:
                hdr = ltx.Header(NO_CHECKSUM, self.page_size, self.commit, t, t, int(time.time() * 1000))
                self.target.put(level, t, t, ltx_writer.encode(hdr, [(p, self.content(p, t)) for p in want]))
            return t

    def forget(self, upto: int) -> None:
        """Keep, of each page's versions up to `upto`, only the newest: pages stay checkable at
        any TXID from `upto` on, and a long run's memory stays bounded."""
        with self._lock:
            self._floor = max(self._floor, upto)
            for vs in self._versions.values():
                i = bisect.bisect_right(vs, upto)
                if i > 1:
                    del vs[:i - 1]

    def expected(self, pgno: int, txid: int) -> bytes | None:
        """The page as of `txid` (None if never written by then)."""
        with self._lock:
            if txid < self._floor:
                raise AssertionError(f"TXID {txid} is older than what the primary still remembers ({self._floor})")
            vs = self._versions.get(pgno, [])
            i = bisect.bisect_right(vs, txid)
            return self.content(pgno, vs[i - 1]) if i else None


@contextlib.contextmanager
def logs_at(level: int, name: str = "lsvfs") -> Iterator[None]:
    """Temporarily set a logger's level (to keep expected warnings out of the output)."""
    import logging

    lg = logging.getLogger(name)
    old = lg.level
    lg.setLevel(level)
    try:
        yield
    finally:
        lg.setLevel(old)


def file_infos(target: DirTarget | S3Target) -> list[FileInfo]:
    """Every file in the target, through a real lsvfs storage client."""
    from lsvfs.plan import list_all
    from lsvfs.storage import open_storage

    st = open_storage(target.url)
    try:
        return list_all(st)
    finally:
        st.close()


def fast_zero_snapshot(n_pages: int, page_size: int = 512, txid: int = 1) -> bytes:
    """A valid snapshot LTX file of `n_pages` all-zero pages, built in seconds, not minutes.

    Same bytes `ltx_writer.encode` would write for these pages (a test checks it on a
    small size), but every frame shares one compressed payload and the CRC-64
    runs over big chunks, so 1M pages take ~2 s instead of ~10 s.
    """
    import struct

    import lz4.block

    from lsvfs import core

    if n_pages >= ltx.lock_pgno(page_size):
        raise ValueError("this fast path does not skip the lock page; use fewer pages or a bigger page size")
    page = bytes(page_size)
    payload = lz4.block.compress(page, store_size=False)
    flen = 10 + len(payload)
    hdr = ltx.Header(NO_CHECKSUM, page_size, n_pages, 1, txid, 1_700_000_000_000).encode()
    crc = core.crc64(hdr)
    fh = struct.Struct(">IHI")
    out = [hdr]
    step = 16384
    for start in range(1, n_pages + 1, step):
        rng = range(start, min(start + step, n_pages + 1))
        heads = [fh.pack(p, 1, len(payload)) for p in rng]
        out.append(b"".join(h + payload for h in heads))
        crc = core.crc64(b"".join(h + page for h in heads), crc)

    size_v = ltx_writer.uvarint(flen)
    varints = bytearray()
    off = 100
    for p in range(1, n_pages + 1):
        varints += ltx_writer.uvarint(p)
        varints += ltx_writer.uvarint(off)
        varints += size_v
        off += flen
    varints += b"\x00"
    tail = bytes(6) + bytes(varints) + struct.pack(">Q", len(varints)) + struct.pack(">Q", 0)
    crc = core.crc64(tail, crc) | ltx.CHECKSUM_FLAG
    out.append(tail)
    out.append(struct.pack(">Q", crc))
    return b"".join(out)


def env_seconds(name: str, default: float) -> float:
    """Seconds from the environment variable `name`, else `default`."""
    raw = os.environ.get(name)
    return float(raw) if raw else default


STRESS_SECONDS = env_seconds("LSVFS_STRESS_SECONDS", 2.0)
CHAOS_SECONDS = env_seconds("LSVFS_CHAOS_SECONDS", 3.0)
SOAK_SECONDS = env_seconds("LSVFS_SOAK_SECONDS", 0.0)
FUZZ_EXAMPLES = int(os.environ.get("LSVFS_FUZZ_EXAMPLES") or 60)


@contextlib.contextmanager
def open_replica(url: str, storage: Any = None, **options: Any) -> Iterator[Any]:
    """The shared Replica for `url` (through the registry), released on exit."""
    from lsvfs.options import resolve
    from lsvfs.registry import acquire, release

    rep = acquire(url, resolve(options), storage)
    try:
        yield rep
    finally:
        release(rep)


def fd_count() -> int:
    """Open descriptors of this process (sockets included)."""
    return len(os.listdir("/proc/self/fd"))


def in_txn(conn: apsw.Connection, *sqls: str) -> tuple[int, list[list[tuple[Any, ...]]]]:
    """(TXID, rows of each statement), all in one read transaction; a failure rolls back.

    The TXID is asked after the first read: the transaction pins its snapshot there.
    """
    conn.execute("BEGIN")
    try:
        out = [conn.execute(s).fetchall() for s in sqls]
        txid = int(conn.execute("PRAGMA litestream_txid").fetchall()[0][0], 16)
    except BaseException:
        if not conn.getautocommit():
            with contextlib.suppress(apsw.Error):
                conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return txid, out
