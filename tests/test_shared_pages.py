"""The shared page file's C core (csrc/sharedpages.c): tags, the seqlock, boots, bad input.

A writer and readers are separate objects over the same two files, as the
leader and the other processes of a shared_dir are; the processes test runs
them in separate processes too.
"""

from __future__ import annotations

import functools
import mmap
import multiprocessing
import os
import random
import resource
import signal
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from core_helpers import build_ltx

from lsvfs import core, pagetable
from lsvfs._core import ffi, lib
from lsvfs.errors import LTXError
from lsvfs.shared import pages as shared_pages

PS = 4096
BOOT = bytes(range(16))
OTHER_BOOT = bytes(range(1, 17))
HEADER_BYTES = 4096
TAG = struct.Struct("<QQQ")  # seq, txid, key: native order on this little-endian machine


def _open(root: Path, writer: bool, boot: bytes = BOOT, page_size: int = PS) -> Any:
    pages, tags = shared_pages.paths(root, page_size)
    out = ffi.new("lsvfs_shared_pages **")
    rc = lib.lsvfs_shared_pages_open(os.fsencode(pages), os.fsencode(tags), page_size, boot, int(writer), out)
    assert rc == 0 or (not writer and rc == lib.LSVFS_ENOTFOUND), core.strerror(rc)
    return ffi.gc(out[0], lib.lsvfs_shared_pages_free)


def _file(rnd: random.Random, pgnos: list[int]) -> tuple[bytes, core.IndexEntries, dict[int, bytes]]:
    pages = {p: rnd.randbytes(PS) for p in pgnos}
    data = build_ltx(PS, sorted(pages.items()))
    off, ln = core.locate_index(data, len(data))
    return data, core.decode_index(data[off:off + ln], off), pages


def _read(sp: Any, pgno: int, slot: int) -> bytes | None:
    out = ffi.new("uint8_t[]", PS)
    return bytes(out) if lib.lsvfs_shared_pages_read(sp, pgno, slot, PS, out) == 1 else None


def _missing(sp: Any, table: pagetable.PageTable, commit: int) -> list[int]:
    nxt = ffi.new("uint32_t *", 1)
    out = ffi.new("uint32_t[]", commit + 1)
    return [out[i] for i in range(lib.lsvfs_shared_pages_missing(sp, table.cdata, commit, nxt, out, commit + 1))]


def test_a_reader_is_served_a_page_only_from_the_file_its_slot_names(tmp_path: Path) -> None:
    rnd = random.Random(1)
    reader = _open(tmp_path, writer=False)
    data, ents, pages = _file(rnd, list(range(1, 9)))
    assert lib.lsvfs_shared_pages_refresh(reader) == lib.LSVFS_ENOTFOUND  # no writer set the file up yet
    assert lib.lsvfs_shared_pages_set_version(reader, 7, 5, 0xABC) == 0
    assert _read(reader, 1, 7) is None
    writer = _open(tmp_path, writer=True)
    core.fill_shared_pages(writer, 5, 0xABC, data, 0, ents, PS)
    assert _read(reader, 1, 7) is None  # not mapped until refreshed
    assert lib.lsvfs_shared_pages_refresh(reader) == 0
    table = pagetable.PageTable()
    table.apply(7, ents)
    assert _missing(reader, table, 8) == []
    for p in range(1, 9):
        assert _read(reader, p, 7) == pages[p]
        assert _read(reader, p, 8) is None  # a slot with no file told
    assert _read(reader, 9, 7) is None and _read(reader, 0, 7) is None
    out = ffi.new("uint8_t[]", PS * 2)
    assert lib.lsvfs_shared_pages_read(reader, 1, 7, PS * 2, out) == 0  # another page size
    # Another file of the same TXID (another lineage's, say) is not these bytes.
    assert lib.lsvfs_shared_pages_set_version(reader, 9, 5, 0xABD) == 0
    assert _read(reader, 1, 9) is None
    # A newer file rewrites pages 3 and 5: the older slot's snapshot no longer
    # gets them from the file, the newer one does, and every other page still
    # comes from the file of the slot that names it.
    data2, ents2, pages2 = _file(rnd, [3, 5])
    core.fill_shared_pages(writer, 6, 0xDEF, data2, 0, ents2, PS)
    assert lib.lsvfs_shared_pages_set_version(reader, 10, 6, 0xDEF) == 0
    newer = table.clone()
    newer.apply(10, ents2)
    assert _missing(reader, table, 8) == [3, 5] and _missing(reader, newer, 8) == []
    assert _read(reader, 3, 7) is None and _read(reader, 3, 10) == pages2[3] and _read(reader, 4, 7) == pages[4]
    lib.lsvfs_shared_pages_forget(reader, 10)
    assert _read(reader, 3, 10) is None and _missing(reader, newer, 8) == [3, 5]
    applied_txid = ffi.new("uint64_t *")
    assert lib.lsvfs_shared_pages_set_applied(writer, 6) == 0
    assert lib.lsvfs_shared_pages_applied(reader, applied_txid) == 0 and applied_txid[0] == 6
    assert lib.lsvfs_shared_pages_set_applied(reader, 7) == lib.LSVFS_ERANGE  # only the writer records


def test_the_tag_file_grows_under_a_reader_that_refreshes(tmp_path: Path) -> None:
    rnd = random.Random(2)
    writer, reader = _open(tmp_path, writer=True), _open(tmp_path, writer=False)
    data, ents, pages = _file(rnd, [1, 2])
    core.fill_shared_pages(writer, 1, 1, data, 0, ents, PS)
    assert lib.lsvfs_shared_pages_refresh(reader) == 0
    far = 70_000  # past the first 65536 tags the file is made with
    data2, ents2, pages2 = _file(rnd, [far])
    core.fill_shared_pages(writer, 2, 2, data2, 0, ents2, PS)
    lib.lsvfs_shared_pages_set_version(reader, 1, 1, 1)
    lib.lsvfs_shared_pages_set_version(reader, 2, 2, 2)
    assert _read(reader, far, 2) is None  # beyond what it mapped
    assert lib.lsvfs_shared_pages_refresh(reader) == 0
    assert _read(reader, far, 2) == pages2[far] and _read(reader, 2, 1) == pages[2]


def _tags(root: Path) -> mmap.mmap:
    fd = os.open(shared_pages.paths(root, PS)[1], os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def test_a_tag_left_odd_by_a_killed_writer_is_never_served_and_the_next_writer_clears_it(tmp_path: Path) -> None:
    """What a writer killed between its two sequence stores leaves: an odd
    number over a page that may be half-written."""
    rnd = random.Random(3)
    writer = _open(tmp_path, writer=True)
    data, ents, pages = _file(rnd, [1, 2, 3])
    core.fill_shared_pages(writer, 4, 4, data, 0, ents, PS)
    del writer
    m = _tags(tmp_path)
    at = HEADER_BYTES + TAG.size  # page 2
    seq, txid, key = TAG.unpack_from(m, at)
    assert seq % 2 == 0 and (txid, key) == (4, 4)
    TAG.pack_into(m, at, seq + 1, txid, key)
    reader = _open(tmp_path, writer=False)
    assert lib.lsvfs_shared_pages_refresh(reader) == 0
    lib.lsvfs_shared_pages_set_version(reader, 1, 4, 4)
    assert _read(reader, 1, 1) == pages[1] and _read(reader, 2, 1) is None and _read(reader, 3, 1) == pages[3]
    _open(tmp_path, writer=True)  # the next leader
    seq2, txid2, key2 = TAG.unpack_from(m, at)
    assert seq2 % 2 == 0 and seq2 > seq + 1 and (txid2, key2) == (0, 0)
    assert TAG.unpack_from(m, HEADER_BYTES)[1:] == (4, 4)  # the whole pages keep their tags
    assert _read(reader, 2, 1) is None and _read(reader, 1, 1) == pages[1]
    m.close()


def test_tags_written_before_a_reboot_are_cleared_before_anything_is_served(tmp_path: Path) -> None:
    """The pages may not have reached the disk before the machine went down:
    a tag file of another boot is served by nobody and cleared by the next writer."""
    rnd = random.Random(4)
    data, ents, pages = _file(rnd, [1, 2])
    core.fill_shared_pages(_open(tmp_path, writer=True, boot=OTHER_BOOT), 1, 1, data, 0, ents, PS)
    reader = _open(tmp_path, writer=False)
    lib.lsvfs_shared_pages_set_version(reader, 1, 1, 1)
    assert lib.lsvfs_shared_pages_refresh(reader) == lib.LSVFS_ENOTFOUND and _read(reader, 1, 1) is None
    writer = _open(tmp_path, writer=True)
    assert lib.lsvfs_shared_pages_refresh(reader) == 0 and _read(reader, 1, 1) is None
    applied = ffi.new("uint64_t *")
    assert lib.lsvfs_shared_pages_applied(reader, applied) == 0 and applied[0] == 0
    core.fill_shared_pages(writer, 1, 1, data, 0, ents, PS)
    assert _read(reader, 1, 1) == pages[1]


def test_bad_input_is_refused_and_a_bad_frame_stops_the_fill_there(tmp_path: Path) -> None:
    rnd = random.Random(5)
    out = ffi.new("lsvfs_shared_pages **")
    pages, tags = (os.fsencode(p) for p in shared_pages.paths(tmp_path, PS))
    assert lib.lsvfs_shared_pages_open(pages, tags, 1000, BOOT, 1, out) == lib.LSVFS_ERANGE and out[0] == ffi.NULL
    missing = os.fsencode(tmp_path / "no" / "x")
    assert lib.lsvfs_shared_pages_open(missing, tags, PS, BOOT, 1, out) == lib.LSVFS_ENOTFOUND
    writer, reader = _open(tmp_path, writer=True), _open(tmp_path, writer=False)
    data, ents, pages_ = _file(rnd, [1, 2, 3])
    failed = ffi.new("size_t *")
    for sp, txid, key in ((writer, 0, 1), (writer, 1, 0), (reader, 1, 1)):
        assert lib.lsvfs_shared_pages_fill(sp, txid, key, data, len(data), 0, ents.cdata, len(ents),
                                           failed) == lib.LSVFS_ERANGE
    assert lib.lsvfs_shared_pages_set_version(reader, 0, 1, 1) == lib.LSVFS_ERANGE
    bad = bytearray(data)
    bad[ents[2][1] + 3] ^= 1  # the third frame's pgno
    with pytest.raises(LTXError, match="index entry 2"):
        core.fill_shared_pages(writer, 1, 1, bytes(bad), 0, ents, PS)
    with pytest.raises(LTXError, match="outside the buffer"):
        core.fill_shared_pages(writer, 1, 1, data[:ents[2][1]], 0, ents, PS)
    lib.lsvfs_shared_pages_refresh(reader)
    lib.lsvfs_shared_pages_set_version(reader, 1, 1, 1)
    assert _read(reader, 1, 1) == pages_[1] and _read(reader, 2, 1) == pages_[2] and _read(reader, 3, 1) is None


def _fill_under_a_file_size_limit(root: str, limit: int, pgnos: list[int], q: Any) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    writer = _open(Path(root), writer=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    data, ents, _ = _file(random.Random(6), pgnos)
    try:
        core.fill_shared_pages(writer, 1, 1, data, 0, ents, PS)
        q.put("filled")
    except OSError as exc:
        q.put(str(exc))


def _limited(root: Path, limit: int, pgnos: list[int]) -> str:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_fill_under_a_file_size_limit, args=(str(root), limit, pgnos, q))
    p.start()
    p.join(30)
    return str(q.get(timeout=5))


def test_a_failed_write_leaves_the_page_untagged(tmp_path: Path) -> None:
    """A full disk, as a file size limit: the pages written before stand, the
    one whose write failed is not served, and the error says why; a tag file
    that cannot grow fails the same way, before any page."""
    _open(tmp_path, writer=True)  # the header only
    assert "write failed" in _limited(tmp_path, 2 * PS, [1, 2, 3])  # the tags cannot grow to 65536
    reader = _open(tmp_path, writer=False)
    assert lib.lsvfs_shared_pages_refresh(reader) == 0
    lib.lsvfs_shared_pages_set_version(reader, 1, 1, 1)
    assert _read(reader, 1, 1) is None
    data, ents, _ = _file(random.Random(9), [1])
    core.fill_shared_pages(_open(tmp_path, writer=True), 2, 2, data, 0, ents, PS)  # now the tags have room
    assert "write failed" in _limited(tmp_path, 2 * PS, [1, 2, 3])  # pages 1 and 2 fit, page 3 does not
    _, _, pages = _file(random.Random(6), [1, 2, 3])
    lib.lsvfs_shared_pages_refresh(reader)
    assert _read(reader, 1, 1) == pages[1] and _read(reader, 2, 1) == pages[2] and _read(reader, 3, 1) is None


@functools.cache
def _versions() -> list[tuple[bytes, core.IndexEntries, dict[int, bytes]]]:
    rnd = random.Random(7)
    return [_file(rnd, list(range(1, 33))) for _ in range(2)]


def _check_reads(sp: Any, stop: Any, seed: int, errors: list[str], served: list[int]) -> None:
    """Read random pages of either version until `stop`: a page served must be that version's."""
    r = random.Random(seed)
    versions = _versions()
    while not stop.is_set():
        v = r.randrange(2)
        pgno = r.randrange(1, 33)
        got = _read(sp, pgno, 1 + v)
        if got is not None:
            served[0] += 1
            if got != versions[v][2][pgno]:
                errors.append(f"page {pgno} of version {v}")


def _rewrite(root: Path, rounds: int) -> None:
    writer = _open(root, writer=True)
    for i in range(rounds):
        data, ents, _ = _versions()[i % 2]
        core.fill_shared_pages(writer, 1 + i % 2, 1 + i % 2, data, 0, ents, PS)


def _reader(root: Path) -> Any:
    sp = _open(root, writer=False)
    lib.lsvfs_shared_pages_refresh(sp)
    for v in (1, 2):
        lib.lsvfs_shared_pages_set_version(sp, v, v, v)
    return sp


def test_shared_pages_readers_and_a_writer_in_threads(tmp_path: Path) -> None:
    """Readers check tags and read while a writer rewrites the same pages with
    the other version: a read returns the bytes of the file it asked for, or nothing."""
    _rewrite(tmp_path, 1)
    sp = _reader(tmp_path)
    stop = threading.Event()
    errors: list[str] = []
    served = [0]
    threads = [threading.Thread(target=_check_reads, args=(sp, stop, i, errors, served)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        _rewrite(tmp_path, 300)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors and served[0] > 0


def _process_reader(root: str, ready: Any, stop: Any, q: Any) -> None:
    errors: list[str] = []
    served = [0]
    sp = _reader(Path(root))
    ready.release()
    _check_reads(sp, stop, os.getpid(), errors, served)
    q.put((errors[:5], served[0]))


def test_shared_pages_readers_in_processes_while_the_writer_rewrites() -> None:
    """The same across processes, as a shared_dir runs it: the tags are shared
    memory, the pages one file."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _rewrite(root, 1)
        ctx = multiprocessing.get_context("fork")
        stop, q, ready = ctx.Event(), ctx.Queue(), ctx.Semaphore(0)
        procs = [ctx.Process(target=_process_reader, args=(d, ready, stop, q)) for _ in range(2)]
        for p in procs:
            p.start()
        for _ in procs:
            assert ready.acquire(timeout=30)
        try:
            _rewrite(root, 2000)
        finally:
            stop.set()
        results = [q.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(30)
        assert all(errors == [] for errors, _ in results), results
        assert all(served > 0 for _, served in results), results
