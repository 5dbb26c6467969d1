"""Known-answer and rejection tests for the C core through lsvfs.core."""

from __future__ import annotations

import os
import random
import struct
import threading

import lz4.block
import pytest

from core_helpers import (CORPUS, FLAG, PAGE_SIZES, build_ltx, lz4_seq, ref_crc64,
                          ref_lz4_decode, sqlite_like_page, uvarint)
from lsvfs import core, pagetable
from lsvfs._core import ffi, lib
from lsvfs.errors import LTXError


def corpus_file(path: str):
    data = open(path, "rb").read()
    ps = struct.unpack_from(">I", data, 8)[0]
    off, ln = core.locate_index(data[-24:], len(data))
    return data, ps, off, ln, core.decode_index(data[off:off + ln], off, file=path)


def test_expected_core_build():
    """Under csrc/sanitize.sh, the sanitized _core must be the one loaded."""
    want = os.environ.get("LSVFS_EXPECT_CORE_DIR")
    if not want:
        pytest.skip("not a sanitizer run")
    from lsvfs import _core
    assert _core.__file__.startswith(want)


# ---- CRC-64 ----------------------------------------------------------------

def test_crc64_known_answers():
    assert core.crc64(b"123456789") == 0xB90956C775A41001
    assert core.crc64(b"") == 0
    assert core.crc64(b"", 0x1234) == 0x1234
    assert core.CHECKSUM_FLAG == FLAG


def test_crc64_matches_reference_and_chains():
    rnd = random.Random(7)
    blob = rnd.randbytes(3000)
    for n in list(range(0, 70)) + [255, 1000, 2999]:
        for start in (0, 1, 3, 7):
            piece = blob[start:start + n]
            assert core.crc64(piece) == ref_crc64(piece)
            assert core.crc64(memoryview(blob)[start:start + n]) == ref_crc64(piece)
    a, b = blob[:1234], blob[1234:]
    assert core.crc64(b, core.crc64(a)) == core.crc64(blob)
    assert core.crc64(bytearray(blob)) == core.crc64(blob)


def test_page_checksum_and_xor_skip_lock_page():
    rnd = random.Random(1)
    ps = 65536
    lock = core.lock_pgno(ps)
    assert lock == 16385
    assert core.lock_pgno(4096) == 262145 and core.lock_pgno(512) == 2097153
    page = rnd.randbytes(512)
    assert core.page_checksum(3, page) == FLAG | ref_crc64(struct.pack(">I", 3) + page)
    pages = rnd.randbytes(3 * ps)
    want = 0
    for i in range(3):
        pg = lock - 1 + i
        if pg != lock:
            want ^= core.page_checksum(pg, pages[i * ps:(i + 1) * ps]) & ~FLAG
    assert core.pages_checksum_xor(lock - 1, pages, ps) == want
    # pieces XOR together
    small = rnd.randbytes(4 * 512)
    whole = core.pages_checksum_xor(1, small, 512)
    assert core.pages_checksum_xor(1, small[:1024], 512) ^ core.pages_checksum_xor(3, small[1024:], 512) == whole
    with pytest.raises(ValueError):
        core.pages_checksum_xor(1, small[:100], 512)


# ---- LZ4 -------------------------------------------------------------------

def _pages_for(ps: int, rnd: random.Random):
    yield "random", rnd.randbytes(ps)
    yield "zeros", bytes(ps)
    yield "sqlite", sqlite_like_page(rnd, ps)
    yield "runs", b"".join(bytes([rnd.randrange(4)]) * rnd.randrange(1, 40) for _ in range(ps))[:ps]
    yield "period", (rnd.randbytes(rnd.randrange(2, 9)) * ps)[:ps]


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_lz4_matches_lz4_block(ps):
    rnd = random.Random(ps)
    for name, page in _pages_for(ps, rnd):
        for kw in ({}, {"mode": "high_compression"}, {"mode": "fast", "acceleration": 8}):
            c = lz4.block.compress(page, store_size=False, **kw)
            assert core.lz4_block_decode(c, ps) == page, (name, kw)


def test_lz4_hand_made_blocks():
    # literals only, with a long-literal length extension
    page = bytes(range(256)) * 2
    assert core.lz4_block_decode(lz4_seq(page), 512) == page
    # every short match offset, overlapping copies included
    for off in range(1, 20):
        head = bytes(range(1, off + 1))
        for ml in (4, 5, 15, 19, 20, 300):
            blk = lz4_seq(head, off, ml)
            rest = 512 - off - ml
            blk += lz4_seq(b"z" * rest)
            want = ref_lz4_decode(blk, 512)
            assert want is not None
            assert core.lz4_block_decode(blk, 512) == want
    # final token with no literals after a match that fills the page
    blk = lz4_seq(b"ab", 2, 510) + b"\x00"
    assert core.lz4_block_decode(blk, 512) == b"ab" * 256


@pytest.mark.parametrize("blk, why", [
    (b"", "empty"),
    (b"\x50ab", "literal length past input"),
    (b"\xf0\xff\xff", "length extension never ends"),
    (lz4_seq(b"abcd", 0, 4) + b"\x00", "offset 0"),
    (lz4_seq(b"abcd", 5, 4) + lz4_seq(b"x" * 504), "offset before output start"),
    (lz4_seq(b"abcd", 4, 600) + b"\x00", "match past output"),
    (lz4_seq(b"abcd", 4, 508), "ends with a match"),
    (lz4_seq(b"abcd")[:-1], "truncated literals"),
    (lz4_seq(b"abcd", 4, 4)[:-1], "truncated offset"),
    (lz4_seq(b"x" * 511), "output short"),
    (lz4_seq(b"x" * 513), "output long"),
    (lz4_seq(b"x" * 512) + b"\x00", "trailing bytes"),
    (lz4_seq(b"x" * 512) + b"\x10a", "trailing sequence"),
    (b"\x0f\x01\x00\xff\xff", "match ext runs out"),
])
def test_lz4_malformed(blk, why):
    assert ref_lz4_decode(blk, 512) is None, why
    with pytest.raises(LTXError):
        core.lz4_block_decode(blk, 512)


def test_lz4_output_must_be_exact_page_size():
    page = os.urandom(4096)
    c = lz4.block.compress(page, store_size=False)
    for n in (4095, 4097, 8192, 512):
        with pytest.raises(LTXError, match="exactly"):
            core.lz4_block_decode(c, n)


# ---- page index --------------------------------------------------------------

def _index(*triples, end=b"\x00"):
    return b"".join(uvarint(p) + uvarint(o) + uvarint(s) for p, o, s in triples) + end


def test_index_decode_ok():
    buf = _index((1, 100, 50), (2, 150, 20), (9, 400, 7))
    ents = core.decode_index(buf, 1000)
    assert list(ents) == [(1, 100, 50), (2, 150, 20), (9, 400, 7)]
    assert ents.pgnos == [1, 2, 9] and ents.offsets == [100, 150, 400] and ents.sizes == [50, 20, 7]
    assert len(ents) == 3 and ents[1] == (2, 150, 20) and ents[-1] == (9, 400, 7)
    assert list(ents[1:]) == [(2, 150, 20), (9, 400, 7)]
    assert ents[:2].span() == (100, 70)
    assert len(core.decode_index(b"\x00", 106)) == 0
    # frame may end exactly at the zero page header
    assert list(core.decode_index(_index((1, 100, 94)), 200)) == [(1, 100, 94)]
    # non-minimal varints are accepted (Go's Uvarint does)
    assert list(core.decode_index(b"\x81\x00\xe4\x00\x32\x00", 1000)) == [(1, 100, 50)]


@pytest.mark.parametrize("buf, msg", [
    (b"\x80" * 10 + b"\x00" + uvarint(100) + uvarint(10) + b"\x00", "entry 0"),   # overlong
    (b"\xff" * 9 + b"\x02" + uvarint(100) + uvarint(10) + b"\x00", "entry 0"),   # >64 bits
    (_index((1 << 32, 100, 10)), "entry 0"),                                    # pgno > u32
    (_index((2, 100, 10), (1, 110, 10)), r"entry 1 \(after page 2\)"),          # unsorted
    (_index((2, 100, 10), (2, 110, 10)), "entry 1"),                            # duplicate
    (_index((1, 100, 10), (0, 110, 10)), "entry 1"),                            # zero pgno
    (_index((1, 99, 10)), "entry 0"),                                           # before block
    (_index((1, 100, 895)), "entry 0"),                                         # into zero hdr
    (_index((1, 994, 7)), "entry 0"),                                           # past block
    (_index((1, 100, 6)), "entry 0"),                                           # size <= 6
    (_index((1, 100, 1 << 32)), "entry 0"),                                     # size > u32
    (_index((1, 100, 20), (2, 119, 10)), "entry 1"),                            # overlap
    (_index((1, 100, 20), end=b""), "entry 1"),                                 # no terminator
    (_index((1, 100, 20))[:-2], "entry 0"),                                     # truncated
    (_index((1, 100, 20)) + b"\x00", "entry 1"),                                # trailing
    (_index((1, 100, 20)) + b"\x01", "entry 1"),
    (b"", "entry 0"),
])
def test_index_decode_rejects(buf, msg):
    with pytest.raises(LTXError, match=msg) as ei:
        core.decode_index(buf, 1000, file="f.ltx")
    assert ei.value.file == "f.ltx"


def test_index_offset_too_small():
    with pytest.raises(LTXError):
        core.decode_index(b"\x00", 105)


def test_locate_index():
    tail = b"xx" + b"\x00" * 8 + struct.pack(">QQQ", 7, 0, FLAG)
    assert core.locate_index(tail, 200) == (200 - 24 - 7, 7)
    with pytest.raises(LTXError):  # length 0
        core.locate_index(struct.pack(">QQQ", 0, 0, FLAG), 200)
    with pytest.raises(LTXError):  # index would start inside the header
        core.locate_index(struct.pack(">QQQ", 200 - 24 - 105, 0, FLAG), 200)
    with pytest.raises(LTXError):  # tail shorter than length + trailer
        core.locate_index(b"\x00" * 23, 200)
    with pytest.raises(LTXError):  # tail longer than the file
        core.locate_index(b"\x00" * 300, 200)


# ---- frames ----------------------------------------------------------------

def _frame(pgno, page, flags=1, size_delta=0):
    c = lz4.block.compress(page, store_size=False)
    return struct.pack(">IHI", pgno, flags, len(c) + size_delta) + c


def test_frame_decode_ok_and_rejects():
    page = sqlite_like_page(random.Random(3), 4096)
    f = _frame(7, page)
    assert core.decode_frame(f, 7, 4096) == page
    assert core.decode_frame(memoryview(bytearray(f)), 7, 4096) == page
    with pytest.raises(LTXError, match="carries page 7, expected page 8"):
        core.decode_frame(f, 8, 4096)
    for flags in (2, 3, 0x100, 0xFFFF):
        with pytest.raises(LTXError, match="invalid flags") as ei:
            core.decode_frame(_frame(7, page, flags), 7, 4096)
        assert not isinstance(ei.value, core.LegacyFrame)
    for d in (-1, 1, 1000):
        with pytest.raises(LTXError, match="compressed size"):
            core.decode_frame(_frame(7, page, size_delta=d), 7, 4096)
    for cut in (0, 5, 9):
        with pytest.raises(LTXError, match="truncated"):
            core.decode_frame(f[:cut], 7, 4096)
    with pytest.raises(LTXError):
        core.decode_frame(f, 7, 2048)   # decodes to more than the page size
    with pytest.raises(LTXError):
        core.decode_frame(f, 7, 1000)   # not a page size
    with pytest.raises(LTXError):
        core.decode_frame(f, 0, 4096)


def test_frame_legacy():
    import lz4.frame
    f = struct.pack(">IH", 5, 0) + lz4.frame.compress(bytes(512))
    with pytest.raises(core.LegacyFrame):
        core.decode_frame(f, 5, 512)
    with pytest.raises(LTXError) as ei:   # pgno is checked first
        core.decode_frame(f, 6, 512)
    assert not isinstance(ei.value, core.LegacyFrame)


def test_decode_frames_batch():
    rnd = random.Random(5)
    pages = [(p, sqlite_like_page(rnd, 4096) if p % 2 else rnd.randbytes(4096)) for p in range(1, 70)]
    data = build_ltx(4096, pages)
    off, ln = core.locate_index(data, len(data))
    ents = core.decode_index(data[off:off + ln], off)
    sub = ents[3:67]
    lo, span = sub.span()
    got = core.decode_frames(data[lo:lo + span], lo, sub, 4096)
    assert got == [p for _, p in pages[3:67]]
    assert core.decode_frames(data, 0, list(sub), 4096) == got  # tuples work too
    assert core.decode_frames(b"", 0, [], 4096) == []
    with pytest.raises(LTXError, match="outside the buffer"):
        core.decode_frames(data[lo:lo + span - 1], lo, sub, 4096)
    with pytest.raises(LTXError, match="outside the buffer"):
        core.decode_frames(data[lo:lo + span], lo + 1, sub, 4096)
    bad = bytearray(data)
    p5, o5, s5 = ents[5]
    bad[o5 + 3] ^= 1  # pgno of entry 5
    with pytest.raises(LTXError, match=rf"index entry 2, offset {o5}"):
        core.decode_frames(bad, 0, ents[3:10], 4096, file="x.ltx")


# ---- whole files -------------------------------------------------------------

@pytest.mark.parametrize("path", CORPUS, ids=os.path.basename)
def test_corpus_file(path):
    data, ps, off, ln, ents = corpus_file(path)
    assert ps in (512, 4096, 65536)
    # index agrees with the page block
    pos = 100
    for pgno, o, s in ents:
        assert o == pos
        assert struct.unpack_from(">IH", data, o) == (pgno, 1)
        pos += s
    assert data[pos:pos + 6] == bytes(6) and pos + 6 == off
    assert off + ln + 24 == len(data)
    pages, checksum = core.decode_file(data, ents, ps, True, file=path)
    assert checksum == struct.unpack_from(">Q", data, len(data) - 8)[0]
    assert core.decode_file(data, ents, ps, False)[1] == checksum
    assert core.decode_file(memoryview(data), ents, ps, False)[1] == checksum
    for i, (pgno, o, s) in enumerate(ents):
        want = lz4.block.decompress(data[o + 10:o + s], uncompressed_size=ps)
        assert pages[i * ps:(i + 1) * ps] == want
        assert core.decode_frame(data[o:o + s], pgno, ps) == want
    # checksum over everything but the last 8 bytes, pages decompressed
    crc = ref_crc64(data[:100])
    for i, (pgno, o, s) in enumerate(ents):
        crc = ref_crc64(bytes(pages[i * ps:(i + 1) * ps]), ref_crc64(data[o:o + 10], crc))
    assert ref_crc64(data[pos:-8], crc) | FLAG == checksum


def test_decode_file_synthetic_and_rejects():
    rnd = random.Random(9)
    pages = [(p, sqlite_like_page(rnd, 512)) for p in (1, 2, 3, 10)]
    data = build_ltx(512, pages, post_apply=FLAG | 1234)
    off, ln = core.locate_index(data, len(data))
    ents = core.decode_index(data[off:off + ln], off)
    got, ck = core.decode_file(data, ents, 512, True)
    assert ck == struct.unpack_from(">Q", data, len(data) - 8)[0]
    assert bytes(got) == b"".join(p for _, p in pages)

    def rejects(blob, match, e=ents, ps=512):
        with pytest.raises(LTXError, match=match):
            core.decode_file(blob, e, ps, True, file="s.ltx")

    rejects(b"LTX2" + data[4:], "magic")
    rejects(data[:4] + struct.pack(">I", 3) + data[8:], "flags")
    rejects(data, "page size", ps=1024)
    rejects(data[:50], "truncated")
    rejects(data, "not where", e=list(ents)[1:])
    p, o, s = ents[2]
    rejects(data[:o + 5], "past the end|truncated")
    bad = bytearray(data)
    bad[ents[1][1] + 5] = 0
    with pytest.raises(core.LegacyFrame):
        core.decode_file(bytes(bad), ents, 512, False)
    bad = bytearray(data)
    bad[off - 2] = 1  # zero page header
    rejects(bytes(bad), "zero page header")
    bad = bytearray(data)
    struct.pack_into(">Q", bad, len(bad) - 24, ln + 1)
    rejects(bytes(bad), "zero page header")
    rejects(data[:off + 10], "truncated")
    # a flipped page byte still decodes but changes the checksum
    bad = bytearray(data)
    bad[-10] ^= 0x40  # post-apply field is covered
    assert core.decode_file(bytes(bad), ents, 512, False)[1] != ck


def test_decode_file_no_pages():
    data = build_ltx(4096, [], commit=0)
    off, ln = core.locate_index(data, len(data))
    ents = core.decode_index(data[off:off + ln], off)
    assert len(ents) == 0
    pages, ck = core.decode_file(data, ents, 4096, True)
    assert len(pages) == 0 and ck == struct.unpack_from(">Q", data, len(data) - 8)[0]


# ---- page table ----------------------------------------------------------------

def _ents(pgnos, base=100):
    return core.IndexEntries.from_tuples((p, base + 10 * p, 10 + p % 7) for p in pgnos)


def _chunk_bytes():
    t = pagetable.PageTable()
    t.apply(1, _ents([1]))
    return t.unique_memory


def test_page_table_basic():
    t = pagetable.PageTable()
    assert t.max_pgno == 0 and t.count == 0 and t.get(1) is None
    t.apply(3, _ents([1, 2, 5, 3000]))
    assert t.max_pgno == 3000 and t.count == 4
    assert t.get(5) == (3, 150, 15) and t.get(4) is None and t.get(3001) is None and t.get(0) is None
    t.apply(4, _ents([2, 6], base=1000))
    assert t.get(2) == (4, 1020, 12) and t.count == 5
    assert t.get_range(1, 7) == [(3, 110, 11), (4, 1020, 12), None, None, (3, 150, 15), (4, 1060, 16), None]
    t.truncate(5)
    assert t.max_pgno == 5 and t.count == 3 and t.get(6) is None and t.get(3000) is None
    t.truncate(10)  # growing the size does not bring pages back
    assert t.max_pgno == 10 and t.get(6) is None and t.count == 3
    t.truncate(0)
    assert t.count == 0 and t.memory < _chunk_bytes()
    with pytest.raises(ValueError):
        t.apply(0, _ents([1]))
    with pytest.raises(ValueError):
        t.apply(1, core.IndexEntries.from_tuples([(0, 100, 10)]))
    assert t.get_range(1, 0) == []


def test_page_table_clone_is_copy_on_write():
    chunk = _chunk_bytes()
    a = pagetable.PageTable()
    a.apply(1, _ents(range(1, 10001)))
    b = a.clone()
    assert b.unique_memory == 0 and a.unique_memory == 0
    assert abs(b.memory - a.memory) < 1024  # same chunks, directories differ in capacity
    b.apply(2, _ents([5], base=7))
    assert a.get(5) == (1, 150, 15) and b.get(5) == (2, 57, 15)
    assert b.unique_memory == chunk and a.unique_memory == chunk
    b.truncate(3)
    assert a.count == 10000 and a.get(9999) is not None and b.count == 3
    c = a.clone()
    del a
    assert c.get(10000) == (1, 100 + 100000, 10 + 10000 % 7)


def test_page_table_million_pages_memory():
    t = pagetable.PageTable()
    n = 1_000_000
    step = 100_000
    for start in range(1, n + 1, step):
        t.apply(1, _ents(range(start, start + step)))
    assert t.count == n and t.max_pgno == n
    assert t.memory <= 20 * 1024 * 1024
    assert t.memory <= 17 * n  # ~16 bytes per entry
    c = t.clone()
    rnd = random.Random(0)
    touched = rnd.sample(range(1, n + 1), 10)
    c.apply(2, _ents(touched))
    chunks = len({(p - 1) // 1024 for p in touched})
    assert c.unique_memory == chunks * _chunk_bytes()
    assert c.memory - c.unique_memory <= t.memory


def test_page_table_threads_share_chunks():
    base = pagetable.PageTable()
    base.apply(1, _ents(range(1, 50_000)))
    errors = []

    def worker(seed):
        rnd = random.Random(seed)
        try:
            t = base.clone()
            for _ in range(200):
                c = t.clone()
                c.apply(seed + 2, _ents(rnd.sample(range(1, 50_000), 5)))
                if rnd.random() < 0.5:
                    t = c
                del c
            assert t.get(1) is not None
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    import gc
    gc.collect()
    # every clone is gone: base holds all its chunks alone again
    assert base.count == 49_999 and base.unique_memory == 49 * _chunk_bytes()


# ---- hydration file ----------------------------------------------------------

def _hydration(path: str, page_size: int = 4096):
    out = ffi.new("lsvfs_hydration **")
    assert lib.lsvfs_hydration_open(os.fsencode(path), page_size, out) == 0
    return ffi.gc(out[0], lib.lsvfs_hydration_free)


def _hread(h, pgno: int, loc: tuple[int, int], page_size: int = 4096) -> bytes | None:
    out = ffi.new("uint8_t[]", page_size)
    rc = lib.lsvfs_hydration_read(h, pgno, loc[0], loc[1], out)
    assert rc >= 0
    return bytes(out) if rc == 1 else None


def _missing(h, table: pagetable.PageTable, commit: int) -> list[int]:
    nxt = ffi.new("uint32_t *", 1)
    out = ffi.new("uint32_t[]", commit + 1)
    n = lib.lsvfs_hydration_missing(h, table.cdata, commit, nxt, out, commit + 1)
    return [out[i] for i in range(n)]


def _ltx_pages(rnd: random.Random, pgnos: list[int], page_size: int = 4096) -> tuple[bytes, core.IndexEntries, dict]:
    pages = {p: rnd.randbytes(page_size) for p in pgnos}
    data = build_ltx(page_size, sorted(pages.items()))
    off, ln = core.locate_index(data, len(data))
    return data, core.decode_index(data[off:off + ln], off), pages


def test_hydration_serves_a_page_only_from_the_frame_it_holds(tmp_path):
    rnd = random.Random(11)
    h = _hydration(str(tmp_path / "h.db"))
    data, ents, pages = _ltx_pages(rnd, list(range(1, 9)))
    table = pagetable.PageTable()
    table.apply(1, ents)
    assert _missing(h, table, 8) == list(range(1, 9))
    core.fill_hydration(h, 1, data, 0, ents, 4096)
    assert _missing(h, table, 8) == [] and lib.lsvfs_hydration_pages(h) == 8
    for pgno, offset, _ in ents:
        assert _hread(h, pgno, (1, offset)) == pages[pgno]
        assert _hread(h, pgno, (2, offset)) is None  # another file's frame
        assert _hread(h, pgno, (1, offset + 1)) is None
    assert _hread(h, 9, (1, ents[0][1])) is None and _hread(h, 0, (1, 0)) is None
    # A newer file rewrites pages 3 and 5: a snapshot still on the old table
    # no longer gets them from the file, the new one does.
    data2, ents2, pages2 = _ltx_pages(rnd, [3, 5])
    newer = table.clone()
    newer.apply(2, ents2)
    assert _missing(h, newer, 8) == [3, 5]
    keep = ffi.gc(lib.lsvfs_cache_new(1 << 20), lib.lsvfs_cache_free)
    core.fill_hydration(h, 2, data2, 0, ents2, 4096, keep=keep)
    assert _missing(h, newer, 8) == [] and _missing(h, table, 8) == [3, 5]
    assert _hread(h, 3, table.get(3)[:2]) is None
    assert _hread(h, 3, newer.get(3)[:2]) == pages2[3]
    # The old bytes wait in the cache under their own frame for the old snapshot.
    old = ffi.new("uint8_t[]", 4096)
    slot, offset, _ = table.get(3)
    assert lib.lsvfs_cache_get(keep, slot, offset, old, 4096, 0) == 1 and bytes(old) == pages[3]
    entries = ffi.new("lsvfs_cache_stats *")
    lib.lsvfs_cache_get_stats(keep, entries)
    core.fill_hydration(h, 2, data2, 0, ents2, 4096, keep=keep)  # the same frames again: nothing to keep
    again = ffi.new("lsvfs_cache_stats *")
    lib.lsvfs_cache_get_stats(keep, again)
    assert again.entries == entries.entries == 2
    lib.lsvfs_hydration_forget(h, 2)  # slot 2's file is gone
    assert _missing(h, newer, 8) == [3, 5] and lib.lsvfs_hydration_pages(h) == 6


def test_hydration_rejects_bad_frames_and_writes_nothing(tmp_path):
    rnd = random.Random(12)
    h = _hydration(str(tmp_path / "h.db"))
    data, ents, _ = _ltx_pages(rnd, [1, 2, 3])
    bad = bytearray(data)
    bad[ents[2][1] + 3] ^= 1  # pgno of the third frame
    with pytest.raises(LTXError, match="index entry 2"):
        core.fill_hydration(h, 1, bytes(bad), 0, ents, 4096)
    assert lib.lsvfs_hydration_pages(h) == 0 and os.path.getsize(tmp_path / "h.db") == 0
    with pytest.raises(LTXError, match="outside the buffer"):
        core.fill_hydration(h, 1, data[:ents[2][1]], 0, ents, 4096)
    with pytest.raises(LTXError, match="outside the buffer"):
        core.fill_hydration(h, 1, data, 101, ents, 4096)
    failed = ffi.new("size_t *")
    assert lib.lsvfs_hydration_fill(h, 0, data, len(data), 0, ents.cdata, len(ents), ffi.NULL, failed) == core.ERANGE
    out = ffi.new("lsvfs_hydration **")
    assert lib.lsvfs_hydration_open(os.fsencode(str(tmp_path / "h.db")), 1000, out) == core.ERANGE
    assert lib.lsvfs_hydration_open(os.fsencode(str(tmp_path / "no" / "h.db")), 4096, out) == lib.LSVFS_ENOTFOUND


@pytest.mark.parametrize("page_size", [512, 4096])
def test_hydration_sync_checksum_is_ltx_post_apply_and_verify_finds_damage(tmp_path, page_size):
    rnd = random.Random(13)
    path = str(tmp_path / "h.db")
    h = _hydration(path, page_size)
    commit = 40
    pgnos = list(range(1, commit + 1))
    data, ents, pages = _ltx_pages(rnd, pgnos, page_size)
    core.fill_hydration(h, 1, data, 0, ents, page_size)
    checksum = ffi.new("uint64_t *")
    assert lib.lsvfs_hydration_sync(h, commit, checksum) == 0
    image = b"".join(pages.get(p, bytes(page_size)) for p in range(1, commit + 1))
    want = core.pages_checksum_xor(1, image, page_size) | FLAG
    assert checksum[0] == want and os.path.getsize(path) == commit * page_size
    # What a restart sees: a fresh object over the same file.
    again = _hydration(path, page_size)
    got = ffi.new("uint64_t *")
    assert lib.lsvfs_hydration_verify(again, commit, got) == 0 and got[0] == want
    assert lib.lsvfs_hydration_verify(again, commit + 1, got) == lib.LSVFS_ETRUNCATED
    table = pagetable.PageTable()
    table.apply(1, ents)
    assert lib.lsvfs_hydration_adopt(again, table.cdata, commit, ffi.NULL) == 0
    assert _missing(again, table, commit) == []
    assert _hread(again, 2, table.get(2)[:2], page_size) == pages[2]
    with open(path, "r+b") as fh:
        fh.seek(page_size * 3 + 7)
        fh.write(b"\xff")
    assert lib.lsvfs_hydration_verify(again, commit, got) == 0 and got[0] != want
    # Shrinking cuts the file and the tags past the commit.
    assert lib.lsvfs_hydration_sync(again, 3, checksum) == 0
    assert os.path.getsize(path) == 3 * page_size and _hread(again, 5, table.get(5)[:2], page_size) is None
    assert lib.lsvfs_hydration_reset(again) == 0
    assert os.path.getsize(path) == 0 and lib.lsvfs_hydration_pages(again) == 0


def test_hydration_adopt_skips_changed_pages(tmp_path):
    rnd = random.Random(14)
    h = _hydration(str(tmp_path / "h.db"))
    _, ents, _ = _ltx_pages(rnd, list(range(1, 11)))
    _, ents2, _ = _ltx_pages(rnd, [4, 10, 11])
    current = pagetable.PageTable()
    current.apply(1, ents)
    current.apply(2, ents2)
    changed = pagetable.PageTable()
    changed.apply(2, ents2)
    assert lib.lsvfs_hydration_adopt(h, current.cdata, 10, changed.cdata) == 0
    assert _missing(h, current, 11) == [4, 10, 11]


def test_hydration_readers_and_a_writer_in_threads(tmp_path):
    """Readers check tags and read while a writer rewrites the same pages:
    a read returns the bytes of the frame it asked for, or nothing."""
    rnd = random.Random(15)
    h = _hydration(str(tmp_path / "h.db"))
    versions = [_ltx_pages(rnd, list(range(1, 33))) for _ in range(2)]
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        for i in range(60):
            data, ents, _ = versions[i % 2]
            core.fill_hydration(h, 1 + i % 2, data, 0, ents, 4096)
        stop.set()

    def reader(seed: int) -> None:
        r = random.Random(seed)
        while not stop.is_set():
            v = r.randrange(2)
            _, ents, pages = versions[v]
            pgno, offset, _ = ents[r.randrange(len(ents))]
            got = _hread(h, pgno, (1 + v, offset))
            if got is not None and got != pages[pgno]:
                errors.append(f"page {pgno} of version {v}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors


# ---------------------------------------------------------------------------
# the page cache: scan resistance, budget, buffer reuse

PS = 4096


def _cache(pages: int):
    """A cache of `pages` 4 KiB pages (one shard: below 8 MiB)."""
    return ffi.gc(lib.lsvfs_cache_new(pages * PS), lib.lsvfs_cache_free)


def _stats(cache) -> dict[str, int]:
    out = ffi.new("lsvfs_cache_stats *")
    lib.lsvfs_cache_get_stats(cache, out)
    return {k: int(getattr(out, k)) for k in ("hits", "misses", "evictions", "bytes", "entries", "max_bytes")}


def _scan(cache, data: bytes, ents: core.IndexEntries, pages: dict, run: int = 16, slot: int = 1) -> tuple[int, int]:
    """Read every page in order as the VFS does for a sequential reader: a hit
    is counted; a miss counts, then decodes the run starting at that page into
    the cache (the page asked for and run - 1 read ahead). (hits, misses);
    every page read is checked."""
    out = ffi.new("uint8_t[]", PS)
    hits = misses = 0
    for i in range(len(ents)):
        pgno, off, _ = ents[i]
        if lib.lsvfs_cache_get(cache, slot, off, out, PS, 1):
            hits += 1
            assert bytes(out) == pages[pgno]
            continue
        lib.lsvfs_cache_count_miss(cache, slot, off)
        misses += 1
        assert core.fill_cache(cache, slot, data, 0, ents[i:i + run], PS, asked=True) == pages[pgno]
        assert _stats(cache)["bytes"] <= _stats(cache)["max_bytes"]
    return hits, misses


def _lookup(cache, data: bytes, ents: core.IndexEntries, i: int, slot: int = 2) -> bool:
    """A point lookup of entry i: a hit, or a miss that reads that page alone. True on a hit."""
    out = ffi.new("uint8_t[]", PS)
    off = ents[i][1]
    if lib.lsvfs_cache_get(cache, slot, off, out, PS, 1):
        return True
    lib.lsvfs_cache_count_miss(cache, slot, off)
    core.fill_cache(cache, slot, data, 0, ents[i:i + 1], PS, asked=True)
    return False


@pytest.fixture(scope="module")
def scan_file() -> tuple[bytes, core.IndexEntries, dict]:
    return _ltx_pages(random.Random(7), list(range(1, 385)))  # 384 pages: 1.5x a 256-page cache


@pytest.fixture(scope="module")
def hot_file() -> tuple[bytes, core.IndexEntries, dict]:
    return _ltx_pages(random.Random(8), list(range(1, 193)))


def test_cache_repeated_scan_larger_than_the_cache_keeps_most_of_it(scan_file) -> None:
    """A sequential scan of 1.5x the cache, repeated: plain LRU would evict
    each page just before the next scan wants it (every run of 16 a miss
    again); the cache keeps what the first scan read until it filled up, so
    later scans miss only on the rest, and read-ahead pages wait until they
    are read (one miss per run of 16). Hits count read-ahead pages read."""
    data, ents, pages = scan_file
    cache = _cache(256)
    hits, misses = _scan(cache, data, ents, pages)
    assert (hits, misses) == (384 - 24, 24)
    for _ in range(3):
        hits, misses = _scan(cache, data, ents, pages)
        assert misses <= (384 - 256) // 16 + 2, "a repeated scan misses on what the cache cannot hold"
        assert hits + misses == 384
    st = _stats(cache)
    assert st["entries"] == 256 and st["bytes"] == 256 * PS and st["evictions"] > 0


def test_cache_scan_does_not_evict_a_hot_working_set(scan_file, hot_file) -> None:
    """Pages used again and again (point lookups) survive a sequential scan
    larger than the whole cache, while the scan still gets its read-ahead."""
    data, ents, pages = scan_file
    hdata, hents, _ = hot_file
    cache = _cache(256)
    for _ in range(2):
        for i in range(len(hents)):
            _lookup(cache, hdata, hents, i)
    assert _stats(cache)["entries"] == 192
    for _ in range(2):
        hits, misses = _scan(cache, data, ents, pages)
        assert misses <= 384 // 16 + 2
        assert all(lib.lsvfs_cache_contains(cache, 2, hents[i][1]) for i in range(len(hents))), \
            "the scan evicted the hot set"
    before = _stats(cache)
    assert all(_lookup(cache, hdata, hents, i) for i in range(len(hents)))
    assert _stats(cache)["misses"] == before["misses"]
    assert before["evictions"] >= 384 - 64


def test_cache_pages_read_ahead_of_any_reader_are_kept_then_scanned(scan_file) -> None:
    """A fill nobody asked for yet (read-ahead, prefetch) keeps every page,
    the first one too; a reader then finds them all; a page a reader asked
    for alone goes to the hot end as in plain LRU."""
    data, ents, pages = scan_file
    cache = _cache(256)
    core.fill_cache(cache, 1, data, 0, ents[0:64], PS)
    assert all(lib.lsvfs_cache_contains(cache, 1, ents[i][1]) for i in range(64))
    hits, misses = _scan(cache, data, ents[0:64], pages)
    assert (hits, misses) == (64, 0)
    # A page looked up alone twice is an ordinary page: a full scan leaves it.
    assert not _lookup(cache, data, ents, 300, slot=1)
    assert _lookup(cache, data, ents, 300, slot=1)
    _scan(cache, data, ents[100:300], pages)
    _scan(cache, data, ents[301:], pages)
    assert lib.lsvfs_cache_contains(cache, 1, ents[300][1])


def test_cache_budget_reuse_and_clear_keep_the_stats_meanings(scan_file) -> None:
    """Pages of another size than the coldest one's, puts, fills and clear:
    bytes never exceed the budget, every eviction is counted once, a page
    too large for the cache is still returned but not kept."""
    data, ents, pages = scan_file
    cache = _cache(8)
    for i in range(8):
        assert lib.lsvfs_cache_put(cache, 9, i, b"x" * 1024, 1024) == 0
    st = _stats(cache)
    assert (st["entries"], st["bytes"], st["evictions"]) == (8, 8 * 1024, 0)
    _scan(cache, data, ents[0:40], pages, run=4)
    st = _stats(cache)
    small = sum(lib.lsvfs_cache_contains(cache, 9, i) for i in range(8))
    assert st["bytes"] == small * 1024 + (st["entries"] - small) * PS <= 8 * PS
    assert st["evictions"] == 8 + 40 - st["entries"]
    assert st["misses"] == 10
    lib.lsvfs_cache_clear(cache)
    st = _stats(cache)
    assert (st["entries"], st["bytes"], st["misses"]) == (0, 0, 10)
    odd = _cache(8)  # "pages" of any size, down to none: own buffers, never chained as spares
    for i in range(64):
        n = i % 9
        assert lib.lsvfs_cache_put(odd, 3, i, bytes([i]) * n, n) == 0
    for i in range(64):
        out = ffi.new("uint8_t[]", 9)
        assert lib.lsvfs_cache_get(odd, 3, i, out, i % 9, 0) == 1 and bytes(out)[:i % 9] == bytes([i]) * (i % 9)
    lib.lsvfs_cache_clear(odd)
    tiny = _cache(0)
    big = _ltx_pages(random.Random(1), [1])
    assert core.fill_cache(tiny, 1, big[0], 0, big[1], PS, asked=True) == big[2][1]
    assert _stats(tiny)["entries"] == 0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(bool(os.environ.get("LSVFS_EXPECT_CORE_DIR")),
                    reason="sanitizer build: a malloc per page, the allocator keeps freed memory")
def test_cache_memory_stays_within_the_budget_and_clear_hands_it_back() -> None:
    """Twice the budget put through a 32 MiB cache: the process grows by about
    the budget (evicted pages' buffers are reused), and clear() gives the
    memory back to the system at once (slabs, not a free() per page that the
    allocator may keep)."""
    mib = 1 << 20
    cache = _cache(32 * mib // PS)
    page = bytes(range(256)) * (PS // 256)
    before = _rss()
    for i in range(2 * 32 * mib // PS):
        assert lib.lsvfs_cache_put(cache, 1, i * PS, page, PS) == 0
    st = _stats(cache)
    assert st["bytes"] <= 32 * mib and st["evictions"] >= 32 * mib // PS
    grown = _rss() - before
    assert 24 * mib < grown <= 32 * mib + 4 * mib, grown / mib
    lib.lsvfs_cache_clear(cache)
    assert _rss() - before < 4 * mib, (_rss() - before) / mib
    assert lib.lsvfs_cache_get(cache, 1, 0, ffi.new("uint8_t[]", PS), PS, 0) == 0
    for i in range(64):  # usable again after the clear
        assert lib.lsvfs_cache_put(cache, 1, i * PS, page, PS) == 0
    assert _stats(cache)["entries"] == 64
