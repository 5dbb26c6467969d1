"""Independent pure-Python references for testing the C core (lsvfs.core).

Written from the format facts, not from the C code: a table CRC-64/ISO, an
LZ4 block decoder with the same acceptance rules as the C one (exact
output size, exact input consumption, last sequence literals only), LEB128
varints and a minimal LTX v3 writer.
"""

from __future__ import annotations

import os
import struct


CORPUS_DIR = os.path.join(os.path.dirname(__file__), "corpus")
CORPUS = sorted(os.path.join(CORPUS_DIR, f) for f in os.listdir(CORPUS_DIR) if f.endswith(".ltx"))
PAGE_SIZES = [512 << i for i in range(8)]  # 512 .. 65536
FLAG = 1 << 63

_POLY = 0xD800000000000000
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)
_M64 = (1 << 64) - 1


def ref_crc64(data: bytes, crc: int = 0) -> int:
    """Go crc64.Update with the ISO table, one byte at a time."""
    crc ^= _M64
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ _M64


def uvarint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def ref_lz4_decode(src: bytes, dst_len: int, zero_offset_ok: bool = False) -> bytes | None:
    """LZ4 block decode; None where the C decoder must reject.

    zero_offset_ok mimics liblz4, which does not detect offset 0 (invalid
    per the format: it copies from the byte being written); the match then
    yields zeros here.
    """
    out = bytearray()
    i, n = 0, len(src)
    while True:
        if i >= n:
            return None
        token = src[i]
        i += 1
        lit = token >> 4
        if lit == 15:
            while True:
                if i >= n:
                    return None
                b = src[i]
                i += 1
                lit += b
                if lit > dst_len:
                    return None
                if b != 255:
                    break
        if i + lit > n or len(out) + lit > dst_len:
            return None
        out += src[i:i + lit]
        i += lit
        if i == n:
            return bytes(out) if len(out) == dst_len else None
        if i + 2 > n:
            return None
        off = src[i] | src[i + 1] << 8
        i += 2
        if (off == 0 and not zero_offset_ok) or off > len(out):
            return None
        ml = token & 15
        if ml == 15:
            while True:
                if i >= n:
                    return None
                b = src[i]
                i += 1
                ml += b
                if ml > dst_len:
                    return None
                if b != 255:
                    break
        ml += 4
        if len(out) + ml > dst_len or i == n:
            return None
        if off == 0:
            out += bytes(ml)
            continue
        start = len(out) - off
        for k in range(ml):
            out.append(out[start + k])


def _len_bytes(extra: int) -> bytes:
    out = bytearray()
    while extra >= 255:
        out.append(255)
        extra -= 255
    out.append(extra)
    return bytes(out)


def lz4_seq(literals: bytes, offset: int | None = None, mlen: int = 0) -> bytes:
    """One hand-made LZ4 sequence: literals, then a match unless offset is None."""
    lit = len(literals)
    ml = 0 if offset is None else mlen - 4
    assert ml >= 0
    token = (min(lit, 15) << 4) | (min(ml, 15) if offset is not None else 0)
    out = bytearray([token])
    if lit >= 15:
        out += _len_bytes(lit - 15)
    out += literals
    if offset is not None:
        out += struct.pack("<H", offset)
        if ml >= 15:
            out += _len_bytes(ml - 15)
    return bytes(out)


def sqlite_like_page(rnd, page_size: int) -> bytes:
    """A page shaped like a SQLite b-tree leaf: header, cell pointers, free
    zeroes, then text/int records packed at the end."""
    page = bytearray(page_size)
    page[0] = 0x0D
    words = [b"alpha", b"beta", b"gamma", b"delta", b"row", b"hello", b"world", b"lsvfs"]
    pos = page_size
    ptrs = []
    while True:
        rec = bytearray([rnd.randrange(3, 9), 0x01, 0x17])
        rec += rnd.randrange(1 << 16).to_bytes(2, "big")
        rec += b" ".join(rnd.choice(words) for _ in range(rnd.randrange(2, 12)))
        if pos - len(rec) < 8 + 2 * (len(ptrs) + 1) + page_size // 4:
            break
        pos -= len(rec)
        page[pos:pos + len(rec)] = rec
        ptrs.append(pos)
    for k, p in enumerate(ptrs):
        page[8 + 2 * k:10 + 2 * k] = (p % 65536).to_bytes(2, "big")
    return bytes(page)


def build_ltx(page_size: int, pages: list[tuple[int, bytes]], *, commit: int | None = None,
              min_txid: int = 1, max_txid: int = 1, post_apply: int = 0,
              legacy: bool = False) -> bytes:
    """A valid LTX v3 file (LZ4-block frames unless legacy) with a correct checksum."""
    import lz4.block
    import lz4.frame

    hdr = struct.pack(">4sIIIQQqQqqIIQ20x", b"LTX1", 2, page_size,
                      commit if commit is not None else max((p for p, _ in pages), default=0),
                      min_txid, max_txid, 0, 0, 0, 0, 0, 0, 0)
    out = bytearray(hdr)
    crc = ref_crc64(hdr)
    index = bytearray()
    for pgno, page in sorted(pages):
        assert len(page) == page_size
        off = len(out)
        if legacy:
            fh = struct.pack(">IH", pgno, 0)
            payload = lz4.frame.compress(page)
        else:
            payload = lz4.block.compress(page, store_size=False)
            fh = struct.pack(">IHI", pgno, 1, len(payload))
        crc = ref_crc64(page, ref_crc64(fh, crc))
        out += fh + payload
        index += uvarint(pgno) + uvarint(off) + uvarint(len(out) - off)
    index += b"\x00"
    tail = bytes(6) + index + struct.pack(">QQ", len(index), post_apply)
    crc = ref_crc64(tail, crc) | FLAG
    out += tail + struct.pack(">Q", crc)
    return bytes(out)


def _ref_uvarint(buf: bytes, i: int) -> tuple[int, int] | None:
    """Go binary.Uvarint: (value, next index) or None (truncated/overflow)."""
    x = shift = 0
    for k in range(10):
        if i + k >= len(buf):
            return None
        b = buf[i + k]
        if b < 0x80:
            if k == 9 and b > 1:
                return None
            return x | b << shift, i + k + 1
        x |= (b & 0x7F) << shift
        shift += 7
    return None


def ref_index_decode(buf: bytes, index_offset: int) -> list[tuple[int, int, int]] | None:
    """The page-index rules from the format facts; None where decode must fail."""
    if index_offset < 106:
        return None
    block_end = index_offset - 6
    out: list[tuple[int, int, int]] = []
    i, prev_pg, prev_end = 0, 0, 100
    while True:
        r = _ref_uvarint(buf, i)
        if r is None:
            return None
        pgno, i = r
        if pgno == 0:
            return out if i == len(buf) else None
        vals = []
        for _ in range(2):
            r = _ref_uvarint(buf, i)
            if r is None:
                return None
            v, i = r
            vals.append(v)
        off, size = vals
        if pgno >= 1 << 32 or pgno <= prev_pg or size >= 1 << 32 or size <= 6:
            return None
        if off < prev_end or off + size > block_end:
            return None
        out.append((pgno, off, size))
        prev_pg, prev_end = pgno, off + size
