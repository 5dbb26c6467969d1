"""Typed Python face of the C core (lsvfs._core, built from csrc/).

The C side does the byte work (LZ4 blocks, CRC-64, index varints, frames,
the copy-on-write page table) with every access bounds-checked; this module
turns its status codes into `LTXError`s whose reason names the page or
index entry that failed, so a bad byte is never served as data.

Inputs are passed to C without copying (bytes directly, other buffers via
`ffi.from_buffer`); outputs are written into uninitialised C memory and
copied out once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from ._core import ffi, lib
from .errors import LTXError

Buffer = bytes | bytearray | memoryview

__all__ = [
    "CHECKSUM_FLAG", "LegacyFrame", "IndexEntries", "Buffer",
    "crc64", "page_checksum", "pages_checksum_xor", "lock_pgno", "strerror", "valid_page_size",
    "lz4_block_decode", "locate_index", "decode_index", "decode_frame",
    "decode_frames", "decode_file", "fill_cache",
]

CHECKSUM_FLAG: int = lib.LSVFS_CHECKSUM_FLAG
"""Bit 63, set on every stored LTX checksum."""

ETRUNCATED = lib.LSVFS_ETRUNCATED
ECORRUPT = lib.LSVFS_ECORRUPT
EPGNO = lib.LSVFS_EPGNO
EFLAGS = lib.LSVFS_EFLAGS
ESIZE = lib.LSVFS_ESIZE
ENOMEM = lib.LSVFS_ENOMEM
ERANGE = lib.LSVFS_ERANGE
ELEGACY = lib.LSVFS_ELEGACY
EORDER = lib.LSVFS_EORDER

# The LTX format's sizes and flags: csrc/lsvfs_core.h is their one home.
HEADER_SIZE: int = lib.LSVFS_LTX_HEADER_SIZE
TRAILER_SIZE: int = lib.LSVFS_LTX_TRAILER_SIZE
FRAME_HEADER_SIZE: int = lib.LSVFS_LTX_PAGE_HEADER_SIZE
FRAME_PREFIX: int = lib.LSVFS_LTX_FRAME_PREFIX  # frame header + u32 compressed size
FLAG_NO_CHECKSUM: int = lib.LSVFS_LTX_FLAG_NO_CHECKSUM
FRAME_FLAG_LZ4_BLOCK: int = lib.LSVFS_LTX_FRAME_FLAG_LZ4_BLOCK

# Output buffers are fully overwritten by C before anyone reads them, so
# skip the zero fill.
_alloc = ffi.new_allocator(should_clear_after_alloc=False)
_lib_frame_decode = lib.lsvfs_frame_decode
_ffi_buffer = ffi.buffer
_U8ARR = ffi.typeof("uint8_t[]")


class LegacyFrame(LTXError):
    """The frame holds a legacy LZ4 *frame* payload (flags 0), not a block.

    Raised instead of returning data so callers (lsvfs/ltx.py) fall back to
    `lz4.frame` explicitly; the pgno has already been checked.
    """


def strerror(status: int) -> str:
    """The C core's name for a status code."""
    return str(ffi.string(lib.lsvfs_strerror(status)).decode())


def _in(data: Buffer) -> Any:
    """A C pointer to the bytes of `data` without copying."""
    if type(data) is bytes:
        return data
    return ffi.from_buffer(data)


def _nbytes(data: Buffer) -> int:
    return len(data) if type(data) is bytes else memoryview(data).nbytes


_PAGE_SIZES = frozenset(n for n in (1 << i for i in range(17)) if lib.lsvfs_valid_page_size(n))


def valid_page_size(n: int) -> bool:
    """A power of two in 512..65536 (the C core's rule)."""
    return n in _PAGE_SIZES


def _check_page_size(page_size: int, file: str | None) -> None:
    if not valid_page_size(page_size):
        raise LTXError(f"invalid page size {page_size} (want a power of two in 512..65536)", file)


# ---- checksums -----------------------------------------------------------

def crc64(data: Buffer, crc: int = 0) -> int:
    """CRC-64/ISO exactly as Go's crc64.Update(crc, crc64.MakeTable(crc64.ISO), data)."""
    return int(lib.lsvfs_crc64_update(crc, _in(data), _nbytes(data)))


def page_checksum(pgno: int, page: Buffer) -> int:
    """CRC-64(pgno as u32 BE || page) with CHECKSUM_FLAG set (LTX page checksum)."""
    return int(lib.lsvfs_page_checksum(pgno, _in(page), _nbytes(page)))


def pages_checksum_xor(first_pgno: int, pages: Buffer, page_size: int) -> int:
    """XOR of the page checksums of consecutive pages starting at first_pgno.

    The lock page is skipped and the flag is not applied, so results over
    pieces of a database can be XORed and flagged once at the end.
    """
    n = _nbytes(pages)
    if page_size <= 0 or n % page_size:
        raise ValueError(f"buffer of {n} bytes is not a whole number of {page_size}-byte pages")
    return int(lib.lsvfs_pages_checksum_xor(first_pgno, _in(pages), n // page_size, page_size))


def lock_pgno(page_size: int) -> int:
    """The pgno SQLite never stores: the page holding byte 0x40000000."""
    return int(lib.lsvfs_lock_pgno(page_size))


# ---- LZ4 -----------------------------------------------------------------

def lz4_block_decode(src: Buffer, page_size: int, file: str | None = None) -> bytes:
    """Decode one LZ4 block that must expand to exactly `page_size` bytes."""
    if page_size not in _PAGE_SIZES and not 0 < page_size <= 1 << 20:
        raise LTXError(f"invalid decoded size {page_size}", file)
    out = _alloc(_U8ARR, page_size)
    rc = lib.lsvfs_lz4_decode_exact(_in(src), _nbytes(src), out, page_size)
    if rc:
        raise LTXError(_lz4_reason(rc, page_size), file)
    return bytes(_ffi_buffer(out, page_size))


def _lz4_reason(rc: int, page_size: int) -> str:
    if rc == ETRUNCATED:
        return "LZ4 block ends in the middle of a sequence"
    if rc == ESIZE:
        return f"LZ4 block does not decode to exactly {page_size} bytes"
    if rc == ECORRUPT:
        return "LZ4 block is corrupt (bad match offset or no final literals)"
    return f"LZ4 block rejected: {strerror(rc)}"


# ---- page index ----------------------------------------------------------

class IndexEntries(Sequence[tuple[int, int, int]]):
    """The decoded page index of one LTX file: (pgno, offset, size) triples.

    Backed by a C array so it can go straight to the decode and page-table
    calls; slicing (step 1) gives a view sharing that array.
    """

    __slots__ = ("_owner", "_ptr", "_n")

    def __init__(self, owner: Any, n: int, ptr: Any = None) -> None:
        self._owner = owner  # keeps the C array alive
        self._ptr = owner if ptr is None else ptr
        self._n = n

    @classmethod
    def from_tuples(cls, triples: Iterable[tuple[int, int, int]]) -> IndexEntries:
        """Build entries from (pgno, offset, size) triples (tests, encoders)."""
        items = list(triples)
        arr = _alloc("lsvfs_index_entry[]", max(len(items), 1))
        for i, (pgno, offset, size) in enumerate(items):
            e = arr[i]
            e.pgno, e.offset, e.size = pgno, offset, size
        return cls(arr, len(items))

    @property
    def cdata(self) -> Any:
        """`lsvfs_index_entry *` to the first entry (valid while self lives)."""
        return self._ptr

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> tuple[int, int, int]: ...
    @overload
    def __getitem__(self, i: slice) -> IndexEntries: ...

    def __getitem__(self, i: int | slice) -> tuple[int, int, int] | IndexEntries:
        if isinstance(i, slice):
            start, stop, step = i.indices(self._n)
            if step != 1:
                raise ValueError("IndexEntries slices must be contiguous")
            return IndexEntries(self._owner, max(stop - start, 0), self._ptr + start)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        e = self._ptr[i]
        return (e.pgno, e.offset, e.size)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        p = self._ptr
        for i in range(self._n):
            e = p[i]
            yield (e.pgno, e.offset, e.size)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (IndexEntries, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(map(str, list(self[:3])))
        return f"IndexEntries({self._n} entries: {head}{', ...' if self._n > 3 else ''})"

    @property
    def pgnos(self) -> list[int]:
        return [self._ptr[i].pgno for i in range(self._n)]

    @property
    def offsets(self) -> list[int]:
        return [self._ptr[i].offset for i in range(self._n)]

    @property
    def sizes(self) -> list[int]:
        return [self._ptr[i].size for i in range(self._n)]

    def span(self) -> tuple[int, int]:
        """(offset, length) of the byte range covering all these frames."""
        if not self._n:
            return (0, 0)
        first, last = self._ptr[0], self._ptr[self._n - 1]
        return (first.offset, last.offset + last.size - first.offset)


def locate_index(tail: Buffer, file_size: int, file: str | None = None) -> tuple[int, int]:
    """(index_offset, index_len) from the last bytes of a file of `file_size`.

    `tail` must be at least the last 24 bytes (index length + trailer); if
    index_offset < file_size - len(tail), read more tail to get the index.
    """
    n = _nbytes(tail)
    off = ffi.new("uint64_t *")
    ln = ffi.new("uint64_t *")
    rc = lib.lsvfs_index_locate(_in(tail), n, file_size, off, ln)
    if rc:
        if rc == ERANGE:
            raise LTXError(f"tail of {n} bytes is longer than the file ({file_size} bytes)", file)
        if rc == ETRUNCATED:
            raise LTXError(f"file too short for an index and trailer ({file_size} bytes, tail {n})", file)
        raise LTXError("page index length in the tail does not fit in the file", file)
    return int(off[0]), int(ln[0])


_INDEX_REASONS = {
    ETRUNCATED: "ends inside a varint or before the terminating 0",
    ECORRUPT: "is malformed (overlong varint, overlapping frames, or bytes after the terminating 0)",
    ERANGE: "has a pgno beyond 32 bits or a frame outside the page block",
    ESIZE: "has a frame size of 6 bytes or less, or beyond 32 bits",
    EORDER: "has a pgno not above the previous one",
}


def decode_index(buf: Buffer, index_offset: int, file: str | None = None) -> IndexEntries:
    """Decode the page index varints (exactly, up to the terminating 0).

    `index_offset` is where `buf` starts in the file; frames must lie in
    the page block [100, index_offset - 6) without overlapping.
    """
    n = _nbytes(buf)
    cap = n // 3 + 1
    arr = _alloc("lsvfs_index_entry[]", cap)
    count = ffi.new("size_t *")
    rc = lib.lsvfs_index_decode(_in(buf), n, index_offset, arr, cap, count)
    good = int(count[0])
    if rc:
        after = f" (after page {arr[good - 1].pgno})" if good else ""
        raise LTXError(f"page index entry {good}{after} {_INDEX_REASONS.get(rc, strerror(rc))}", file)
    if good < cap // 2 and good < cap - 64:
        # real entries take ~7 bytes, not 3: keep only what is used
        exact = _alloc("lsvfs_index_entry[]", max(good, 1))
        ffi.memmove(exact, arr, good * ffi.sizeof("lsvfs_index_entry"))
        arr = exact
    return IndexEntries(arr, good)


def _as_entries(entries: IndexEntries | Sequence[tuple[int, int, int]]) -> IndexEntries:
    return entries if isinstance(entries, IndexEntries) else IndexEntries.from_tuples(entries)


# ---- frames --------------------------------------------------------------

def _frame_reason(rc: int, frame: Any, frame_len: int, pgno: int, page_size: int,
                  where: str) -> str:
    """A sentence naming the page and what is wrong; only on the error path."""
    mv = memoryview(ffi.buffer(frame, frame_len)) if frame_len else memoryview(b"")
    if rc == ETRUNCATED:
        return f"frame for page {pgno}{where} is truncated ({frame_len} bytes)"
    if rc == EPGNO:
        got = int.from_bytes(mv[:4], "big")
        return f"frame{where} carries page {got}, expected page {pgno}"
    if rc == EFLAGS:
        flags = int.from_bytes(mv[4:6], "big")
        return f"frame for page {pgno}{where} has invalid flags 0x{flags:x}"
    if rc == ESIZE and frame_len >= FRAME_PREFIX:
        stored = int.from_bytes(mv[6:10], "big")
        if stored != frame_len - FRAME_PREFIX:
            return (f"frame for page {pgno}{where} stores compressed size {stored}, "
                    f"but the frame holds {frame_len - FRAME_PREFIX} bytes")
    if rc == ERANGE:
        return f"frame for page {pgno}{where} is outside the bytes given"
    return f"frame for page {pgno}{where}: {_lz4_reason(rc, page_size)}"


def _raise_frame(rc: int, frame: Any, frame_len: int, pgno: int, page_size: int,
                 where: str, file: str | None) -> None:
    if rc == ELEGACY:
        raise LegacyFrame(f"frame for page {pgno}{where} uses a legacy LZ4-frame payload", file)
    raise LTXError(_frame_reason(rc, frame, frame_len, pgno, page_size, where), file)


def decode_frame(frame: Buffer, pgno: int, page_size: int, file: str | None = None) -> bytes:
    """Decode one frame (from its 6-byte header) to exactly one page.

    Checks the pgno, flags and stored size. Raises LegacyFrame (an
    LTXError) for a legacy LZ4-frame payload so the caller can use lz4.frame.
    This is the per-page hot path, so it does no more Python work than the
    one C call needs; argument problems surface from C as ERANGE.
    """
    if page_size not in _PAGE_SIZES:
        _check_page_size(page_size, file)
    if type(frame) is bytes:
        src, n = frame, len(frame)
    else:
        src, n = ffi.from_buffer(frame), memoryview(frame).nbytes
    out = _alloc(_U8ARR, page_size)
    try:
        rc = _lib_frame_decode(src, n, pgno, page_size, out)
    except (OverflowError, ValueError):  # negative or > 32-bit pgno
        rc = ERANGE
    if rc:
        if rc == ERANGE:
            _check_page_size(page_size, file)
            raise LTXError(f"invalid page number {pgno}", file)
        _raise_frame(rc, ffi.from_buffer(frame), n, pgno, page_size, "", file)
    return bytes(_ffi_buffer(out, page_size))


def decode_frames(buf: Buffer, buf_offset: int,
                  entries: IndexEntries | Sequence[tuple[int, int, int]],
                  page_size: int, file: str | None = None) -> list[bytes]:
    """Decode a run of frames held in `buf` (file bytes from `buf_offset`) in one C call.

    Returns one page per entry, in entry order. Read-ahead fetches the
    span of adjacent frames once and decodes them together.
    """
    _check_page_size(page_size, file)
    ents = _as_entries(entries)
    n = len(ents)
    if n == 0:
        return []
    blen = _nbytes(buf)
    out = _alloc("uint8_t[]", n * page_size)
    failed = ffi.new("size_t *")
    rc = lib.lsvfs_frames_decode(_in(buf), blen, buf_offset, ents.cdata, n, page_size, out, failed)
    if rc:
        _raise_run(rc, int(failed[0]), ents, buf, buf_offset, page_size, file)
    whole = ffi.buffer(out)
    return [whole[i * page_size:(i + 1) * page_size] for i in range(n)]


def _raise_run(rc: int, i: int, ents: IndexEntries, buf: Buffer, buf_offset: int, page_size: int,
               file: str | None) -> None:
    """The LTXError for entry `i` of a run that failed to decode from `buf`."""
    if rc == ENOMEM:
        raise MemoryError("decoding frames: out of memory")
    pgno, offset, size = ents[i]
    where = f" (index entry {i}, offset {offset})"
    if rc == ERANGE:
        raise LTXError(f"frame for page {pgno}{where}, {size} bytes, is outside the "
                       f"buffer [{buf_offset}, {buf_offset + _nbytes(buf)})", file)
    src = ffi.from_buffer(buf)
    _raise_frame(rc, src + (offset - buf_offset), size, pgno, page_size, where, file)


def fill_cache(cache: Any, slot: int, buf: Buffer, buf_offset: int, ents: IndexEntries, page_size: int,
               file: str | None = None, *, asked: bool = False) -> bytes:
    """Decode a run read from storage straight into the C page cache; the first page.
    `asked`: a reader asked for that first page now (a miss), rather than
    nobody yet (read-ahead, prefetch); the cache keeps a sequential reader's
    pages apart from the ones used again (csrc/cache.c)."""
    _check_page_size(page_size, file)
    first = _alloc(_U8ARR, page_size)
    failed = ffi.new("size_t *")
    how = lib.LSVFS_FILL_ASKED if asked else lib.LSVFS_FILL_AHEAD
    rc = lib.lsvfs_cache_fill(cache, slot, _in(buf), _nbytes(buf), buf_offset, ents.cdata, len(ents),
                              page_size, first, how, failed)
    if rc:
        _raise_run(rc, int(failed[0]), ents, buf, buf_offset, page_size, file)
    return bytes(_ffi_buffer(first, page_size))


def fill_hydration(h: Any, slot: int, buf: Buffer, buf_offset: int, ents: IndexEntries, page_size: int,
                   file: str | None = None, keep: Any = None) -> None:
    """Decode frames read from storage into a hydration file (lsvfs_hydration_fill);
    pages it replaces go to the cache `keep` if given."""
    failed = ffi.new("size_t *")
    rc = lib.lsvfs_hydration_fill(h, slot, _in(buf), _nbytes(buf), buf_offset, ents.cdata, len(ents),
                                  ffi.NULL if keep is None else keep, failed)
    if rc == ESIZE and int(failed[0]) == len(ents):
        raise OSError("hydration file: write failed (disk full?)")
    if rc:
        _raise_run(rc, int(failed[0]), ents, buf, buf_offset, page_size, file)


def fill_shared_pages(sp: Any, txid: int, key: int, buf: Buffer, buf_offset: int, ents: IndexEntries,
                      page_size: int, file: str | None = None) -> None:
    """Decode frames of the file (txid, key) into a shared page file (lsvfs_shared_pages_fill)."""
    failed = ffi.new("size_t *")
    rc = lib.lsvfs_shared_pages_fill(sp, txid, key, _in(buf), _nbytes(buf), buf_offset, ents.cdata, len(ents),
                                     failed)
    if rc == ESIZE and int(failed[0]) == len(ents):
        raise OSError("shared pages: write failed (disk full?)")
    if rc:
        _raise_run(rc, int(failed[0]), ents, buf, buf_offset, page_size, file)


def decode_file(data: Buffer, entries: IndexEntries | Sequence[tuple[int, int, int]],
                page_size: int, want_pages: bool = True,
                file: str | None = None) -> tuple[memoryview | None, int]:
    """Walk a whole LTX file: decode every frame, compute the file checksum.

    `entries` come from the file's own index. Returns (pages, checksum):
    pages is len(entries) * page_size bytes in entry order (None unless
    want_pages); checksum has CHECKSUM_FLAG set and is to be compared with
    the trailer's file checksum by the caller. Raises LegacyFrame if a frame
    uses the legacy payload.
    """
    _check_page_size(page_size, file)
    ents = _as_entries(entries)
    n = len(ents)
    if want_pages:
        out = _alloc("uint8_t[]", max(n * page_size, 1))
        out_pages = n
    else:
        out = _alloc("uint8_t[]", page_size)
        out_pages = 1
    checksum = ffi.new("uint64_t *")
    failed = ffi.new("size_t *")
    dlen = _nbytes(data)
    rc = lib.lsvfs_file_decode(_in(data), dlen, ents.cdata, n, page_size, out, out_pages,
                               checksum, failed)
    if rc:
        _raise_file(rc, data, dlen, ents, int(failed[0]), page_size, file)
    pages = memoryview(ffi.buffer(out, n * page_size)) if want_pages else None
    return pages, int(checksum[0])


def _raise_file(rc: int, data: Buffer, dlen: int, ents: IndexEntries, i: int,
                page_size: int, file: str | None) -> None:
    n = len(ents)
    mv = memoryview(data).cast("B")
    if i >= n:  # not tied to an entry: header or what follows the frames
        if dlen < HEADER_SIZE:
            raise LTXError(f"file truncated: {dlen} bytes, header needs {HEADER_SIZE}", file)
        if bytes(mv[:4]) != b"LTX1":
            raise LTXError(f"bad magic {bytes(mv[:4])!r}, want b'LTX1'", file)
        if rc == EFLAGS:
            raise LTXError(f"invalid header flags 0x{int.from_bytes(mv[4:8], 'big'):x}", file)
        if rc == ESIZE:
            raise LTXError(f"header page size {int.from_bytes(mv[8:12], 'big')} is not {page_size}", file)
        if rc == ETRUNCATED:
            raise LTXError("file truncated after the last frame (no room for zero page header, "
                           "index and trailer)", file)
        raise LTXError("page block is not followed by a 6-byte zero page header and exactly "
                       "the page index", file)
    pgno, offset, size = ents[i]
    where = f" (index entry {i}, offset {offset})"
    if rc == ECORRUPT and not _frame_ok_position(ents, i):
        raise LTXError(f"frame for page {pgno}{where} is not where the page block puts it", file)
    if rc == ETRUNCATED and offset + size > dlen:
        raise LTXError(f"frame for page {pgno}{where} runs past the end of the file", file)
    src = ffi.from_buffer(data)
    _raise_frame(rc, src + offset, size, pgno, page_size, where, file)


def _frame_ok_position(ents: IndexEntries, i: int) -> bool:
    expect = HEADER_SIZE if i == 0 else ents[i - 1][1] + ents[i - 1][2]
    return ents[i][1] == expect
