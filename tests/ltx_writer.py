"""Writing LTX files, for tests: lsvfs only reads them.

`encode` writes a valid version-3 file (the bytes Litestream would), so tests
and synthetic replicas can make exactly the files they need; the others are
the small format helpers only such tests want.
"""

from __future__ import annotations

import struct

import lz4.block
import lz4.frame

from lsvfs import core, ltx
from lsvfs.errors import LTXError

_U64 = struct.Struct(">Q")
_FRAME_HDR = struct.Struct(">IH")


def encode(header: ltx.Header, pages: list[tuple[int, bytes]], *, post_apply_checksum: int = 0,
           legacy_frames: bool = False) -> bytes:
    """Write a valid version-3 file; `pages` are (pgno, page) in any order.

    The lock page is never stored. Makes the replicas lsvfs and the Go VFS
    both read in tests, and precise fixtures.
    """
    header.validate()
    ps = header.page_size
    lock = ltx.lock_pgno(ps)
    out = bytearray(header.encode())
    crc = core.crc64(out)
    index: list[tuple[int, int, int]] = []
    last = 0
    for pgno, page in sorted(pages, key=lambda p: p[0]):
        if pgno <= last or pgno == lock:
            raise LTXError(f"page {pgno}: duplicate, unsorted or the lock page")
        if len(page) != ps:
            raise LTXError(f"page {pgno}: {len(page)} bytes, want {ps}")
        last = pgno
        offset = len(out)
        if legacy_frames:
            fhdr = _FRAME_HDR.pack(pgno, 0)
            payload = lz4.frame.compress(bytes(page))
        else:
            payload = lz4.block.compress(bytes(page), store_size=False)
            fhdr = _FRAME_HDR.pack(pgno, ltx.FRAME_FLAG_LZ4_BLOCK) + struct.pack(">I", len(payload))
        crc = core.crc64(page, core.crc64(fhdr, crc))
        out += fhdr
        out += payload
        index.append((pgno, offset, len(out) - offset))
    tail = bytearray(ltx.FRAME_HEADER_SIZE)
    varints = bytearray()
    for triple in index:
        for v in triple:
            varints += uvarint(v)
    varints += b"\x00"
    tail += varints
    tail += _U64.pack(len(varints))
    tail += _U64.pack(post_apply_checksum)
    crc = core.crc64(tail, crc) | ltx.CHECKSUM_FLAG
    out += tail
    out += _U64.pack(crc)
    return bytes(out)


def uvarint(v: int) -> bytes:
    """Unsigned LEB128, as the page index stores pgnos, offsets and sizes."""
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def database_checksum(pages: bytes | memoryview, page_size: int) -> int:
    """Rolling checksum of a whole database image (pgno 1 first)."""
    n = len(pages) // page_size
    return core.pages_checksum_xor(1, pages, page_size) | ltx.CHECKSUM_FLAG if n else ltx.CHECKSUM_FLAG


def index_bounds(data_tail: bytes, file_size: int, file: str | None = None) -> tuple[int, int]:
    """(offset, length) of the page index, from the tail of a file."""
    return core.locate_index(data_tail, file_size, file=file)
