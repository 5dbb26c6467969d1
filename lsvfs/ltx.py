"""LTX version 3: header and trailer types, and whole-file decode.

lsvfs only reads LTX; the writer tests use is tests/ltx_writer.py.

The C core does the byte-level work (LZ4, CRC-64, index varints); this module
holds the format's rules and the one place where a whole file is proven by
its CRC-64.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import lz4.frame

from . import core
from .errors import ChecksumError, LTXError
from .storage.base import FileInfo, format_filename, parse_filename

MAGIC = b"LTX1"
HEADER_SIZE = core.HEADER_SIZE
TRAILER_SIZE = core.TRAILER_SIZE
FRAME_HEADER_SIZE = core.FRAME_HEADER_SIZE
FLAG_NO_CHECKSUM = core.FLAG_NO_CHECKSUM
FRAME_FLAG_LZ4_BLOCK = core.FRAME_FLAG_LZ4_BLOCK
CHECKSUM_FLAG = core.CHECKSUM_FLAG

_HEADER = struct.Struct(">4sIIIQQqQqqIIQ20x")
_TRAILER = struct.Struct(">QQ")

__all__ = [
    "Header", "Trailer", "DecodedFile", "decode", "lock_pgno",
    "format_filename", "parse_filename", "HEADER_SIZE", "TRAILER_SIZE",
]


def parse_txid(text: str) -> int:
    """A TXID as users write it: hex as shown everywhere (0x optional), or
    decimal after '#'. ValueError otherwise."""
    t = text.strip().strip("'\"").lower()
    try:
        txid = int(t[1:], 10) if t.startswith("#") else int(t.removeprefix("0x"), 16)
    except ValueError:
        raise ValueError(f"not a TXID: {text!r} (hex, e.g. 0000000000000012, or #decimal)") from None
    if not 0 <= txid < 1 << 64:
        raise ValueError(f"not a TXID: {text!r} (64 bits)")
    return txid


def check_name(f: FileInfo, header: Header) -> None:
    """A file's header TXIDs must be the ones its name says."""
    if (header.min_txid, header.max_txid) != (f.min_txid, f.max_txid):
        raise LTXError(f"header TXIDs {header.min_txid:016x}-{header.max_txid:016x} disagree with the file name",
                       f.name)


def lock_pgno(page_size: int) -> int:
    return core.lock_pgno(page_size)


@dataclass(frozen=True)
class Header:
    flags: int
    page_size: int
    commit: int
    min_txid: int
    max_txid: int
    timestamp: int
    pre_apply_checksum: int = 0
    wal_offset: int = 0
    wal_size: int = 0
    wal_salt1: int = 0
    wal_salt2: int = 0
    node_id: int = 0

    @property
    def is_snapshot(self) -> bool:
        return self.min_txid == 1

    @property
    def has_checksums(self) -> bool:
        """False for files written with NoChecksum (Litestream 0.5 does this)."""
        return not self.flags & FLAG_NO_CHECKSUM

    @classmethod
    def decode(cls, data: bytes, file: str | None = None) -> Header:
        if len(data) < HEADER_SIZE:
            raise LTXError(f"header truncated: {len(data)} of {HEADER_SIZE} bytes", file)
        magic, *fields = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise LTXError(f"bad magic {magic!r}, want {MAGIC!r}", file)
        hdr = cls(*fields)
        hdr.validate(file)
        return hdr

    def validate(self, file: str | None = None) -> None:
        if self.flags & ~FLAG_NO_CHECKSUM:
            raise LTXError(f"unknown header flags 0x{self.flags:x}", file)
        if not core.valid_page_size(self.page_size):
            raise LTXError(f"invalid page size {self.page_size}", file)
        if self.min_txid < 1 or self.max_txid < self.min_txid:
            raise LTXError(f"invalid TXID range {self.min_txid:016x}-{self.max_txid:016x}", file)
        if self.wal_offset < 0 or self.wal_size < 0:
            raise LTXError("negative WAL offset or size", file)
        if self.is_snapshot and self.pre_apply_checksum:
            raise LTXError("snapshot carries a pre-apply checksum", file)
        if self.has_checksums and not self.is_snapshot and not self.pre_apply_checksum & CHECKSUM_FLAG:
            raise LTXError("pre-apply checksum missing its flag bit", file)

    def encode(self) -> bytes:
        return _HEADER.pack(
            MAGIC, self.flags, self.page_size, self.commit, self.min_txid, self.max_txid,
            self.timestamp, self.pre_apply_checksum, self.wal_offset, self.wal_size,
            self.wal_salt1, self.wal_salt2, self.node_id,
        )


@dataclass(frozen=True)
class Trailer:
    post_apply_checksum: int
    file_checksum: int

    @classmethod
    def decode(cls, data: bytes, header: Header, file: str | None = None) -> Trailer:
        if len(data) < TRAILER_SIZE:
            raise LTXError("trailer truncated", file)
        post, fcs = _TRAILER.unpack_from(data, len(data) - TRAILER_SIZE)
        if not fcs & CHECKSUM_FLAG:
            raise LTXError("file checksum missing its flag bit (file truncated or trailer corrupt)", file)
        if header.has_checksums and not post & CHECKSUM_FLAG:
            raise LTXError("post-apply checksum missing its flag bit", file)
        return cls(post, fcs)


@dataclass
class DecodedFile:
    """A whole LTX file, decoded and verified."""

    header: Header
    trailer: Trailer
    entries: core.IndexEntries
    pages: memoryview = field(repr=False)  # len(entries) * page_size bytes, in pgno order

    def page(self, i: int) -> memoryview:
        ps = self.header.page_size
        return self.pages[i * ps:(i + 1) * ps]

    def items(self) -> list[tuple[int, memoryview]]:
        return [(pgno, self.page(i)) for i, (pgno, _, _) in enumerate(self.entries)]


def decode(data: bytes, file: str | None = None, *, want_pages: bool = True) -> DecodedFile:
    """Decode a whole file, proving it with the file CRC-64; LTXError otherwise."""
    header = Header.decode(data, file)
    if len(data) < HEADER_SIZE + FRAME_HEADER_SIZE + 9 + TRAILER_SIZE:
        raise LTXError(f"file truncated: {len(data)} bytes", file)
    trailer = Trailer.decode(data, header, file)
    idx_off, idx_len = core.locate_index(data, len(data), file=file)
    entries = core.decode_index(data[idx_off:idx_off + idx_len], idx_off, file=file)
    pages: bytes | memoryview | None
    try:
        pages, checksum = core.decode_file(data, entries, header.page_size, want_pages=want_pages, file=file)
    except core.LegacyFrame:
        pages, checksum = _decode_legacy(data, entries, header.page_size, file)
    if checksum != trailer.file_checksum:
        raise ChecksumError(
            f"file checksum mismatch: computed {checksum:016x}, stored {trailer.file_checksum:016x}", file)
    return DecodedFile(header, trailer, entries, memoryview(pages) if pages is not None else memoryview(b""))


def _decode_legacy(data: bytes, entries: core.IndexEntries, page_size: int,
                   file: str | None) -> tuple[bytes, int]:
    """Files written before the LZ4-block flag hold an LZ4 frame per page."""
    crc = core.crc64(data[:HEADER_SIZE])
    out = bytearray()
    pos = HEADER_SIZE
    for pgno, offset, size in entries:
        if offset != pos:
            raise LTXError(f"page {pgno}: frame at {offset}, page block has it at {pos}", file)
        frame = data[offset:offset + size]
        page = frame_page(frame, pgno, page_size, file)
        hdr_len = FRAME_HEADER_SIZE + (4 if frame[5] & FRAME_FLAG_LZ4_BLOCK else 0)
        crc = core.crc64(frame[:hdr_len], crc)
        crc = core.crc64(page, crc)
        out += page
        pos += size
    end = len(data) - 8
    if data[pos:pos + FRAME_HEADER_SIZE] != bytes(FRAME_HEADER_SIZE):
        raise LTXError("page block not ended by a zero page header", file)
    crc = core.crc64(data[pos:end], crc)
    return bytes(out), crc | CHECKSUM_FLAG


def frame_page(frame: bytes, pgno: int, page_size: int, file: str | None = None) -> bytes:
    """One frame to one page, legacy LZ4-frame payloads included (core.decode_frame
    takes only LZ4 blocks)."""
    try:
        return core.decode_frame(frame, pgno, page_size, file=file)
    except core.LegacyFrame:
        pass
    try:
        page: bytes = lz4.frame.decompress(frame[FRAME_HEADER_SIZE:])
    except RuntimeError as exc:
        raise LTXError(f"page {pgno}: corrupt LZ4 frame: {exc}", file) from None
    if len(page) != page_size:
        raise LTXError(f"page {pgno}: decoded {len(page)} bytes, want {page_size}", file)
    return page
