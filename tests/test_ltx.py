"""LTX codec: our encoder, the whole-file decoder, and the Go VFS reading our files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import apsw
import pytest
import ltx_writer

from lsvfs import ChecksumError, LTXError, ltx
from lsvfs.storage.base import format_filename

CORPUS = Path(__file__).parent / "corpus"


def make_db(page_size: int = 4096, rows: int = 200) -> bytes:
    """A real SQLite image with a table and an index spanning several pages."""
    conn = apsw.Connection(":memory:")
    conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX tv ON t(v)")
    with conn:
        conn.executemany("INSERT INTO t(v) VALUES (?)", [(f"value-{i:05d}-" + "x" * (i % 50),) for i in range(rows)])
    return conn.serialize("main")


def pages_of(image: bytes, page_size: int) -> list[tuple[int, bytes]]:
    lock = ltx.lock_pgno(page_size)
    return [(i // page_size + 1, image[i:i + page_size]) for i in range(0, len(image), page_size)
            if i // page_size + 1 != lock]


def snapshot_file(image: bytes, page_size: int, txid: int = 1, **kw: object) -> bytes:
    hdr = ltx.Header(flags=0, page_size=page_size, commit=len(image) // page_size, min_txid=1,
                     max_txid=txid, timestamp=1_700_000_000_000)
    return ltx_writer.encode(hdr, pages_of(image, page_size),
                      post_apply_checksum=ltx_writer.database_checksum(image, page_size), **kw)


@pytest.mark.parametrize("page_size", [512, 1024, 4096, 65536])
def test_encode_decode_roundtrip(page_size: int) -> None:
    image = make_db(page_size)
    data = snapshot_file(image, page_size)
    d = ltx.decode(data, "snap")
    assert d.header.page_size == page_size and d.header.is_snapshot and d.header.has_checksums
    assert b"".join(bytes(p) for _, p in d.items()) == image
    assert d.trailer.post_apply_checksum == ltx_writer.database_checksum(image, page_size)
    assert d.trailer.file_checksum & ltx.CHECKSUM_FLAG


def test_legacy_lz4_frame_payloads_decode() -> None:
    image = make_db(4096)
    d = ltx.decode(snapshot_file(image, 4096, legacy_frames=True), "legacy")
    assert b"".join(bytes(p) for _, p in d.items()) == image
    assert ltx.frame_page(snapshot_file(image, 4096, legacy_frames=True)[100:], 1, 4096)[:16] == image[:16]


def test_real_litestream_files_decode_and_checksum() -> None:
    files = sorted(CORPUS.rglob("*.ltx"))
    assert files, "corpus missing"
    for path in files:
        d = ltx.decode(path.read_bytes(), path.name)
        assert not d.header.has_checksums  # Litestream 0.5 writes NoChecksum files
        assert len(d.pages) == len(d.entries) * d.header.page_size


def test_database_checksum_matches_page_checksums() -> None:
    image = make_db(1024)
    xor = 0
    for pgno, page in pages_of(image, 1024):
        xor ^= ltx.core.page_checksum(pgno, page)
    assert ltx_writer.database_checksum(image, 1024) == xor | ltx.CHECKSUM_FLAG


@pytest.mark.parametrize("where,reason", [
    (0, "bad magic"), (5, "unknown header flags"), (10, "invalid page size"), (23, "invalid TXID range"),
])
def test_header_corruption_is_a_typed_error(where: int, reason: str) -> None:
    data = bytearray(snapshot_file(make_db(), 4096))
    data[where] ^= 0x40
    with pytest.raises(LTXError, match=reason) as exc:
        ltx.decode(bytes(data), "bad.ltx")
    assert exc.value.file == "bad.ltx"


def test_bit_flips_anywhere_give_an_error_or_the_same_pages() -> None:
    """A flipped bit (header, frame, index, trailer) never yields different pages.

    The file checksum covers decompressed pages, so a flip in an LZ4 block that
    still decodes to the same page (an equivalent match offset) is harmless."""
    good = snapshot_file(make_db(512, rows=40), 512)
    pages = bytes(ltx.decode(good).pages)
    step = max(1, len(good) // 300)
    errors = 0
    for pos in range(0, len(good), step):
        bad = bytearray(good)
        bad[pos] ^= 1 << (pos % 8)
        try:
            assert bytes(ltx.decode(bytes(bad), "flip").pages) == pages
        except LTXError:
            errors += 1
    assert errors >= 0.95 * len(range(0, len(good), step))


def test_flipped_literal_caught_only_by_file_checksum() -> None:
    """LTX v3 has no per-page checksum: a literal flipped inside an LZ4 block decodes
    structurally, and only the whole-file CRC-64 proves it wrong."""
    image = bytes(4096) + os.urandom(4096)  # page 2 is incompressible: all literals
    hdr = ltx.Header(ltx.FLAG_NO_CHECKSUM, 4096, 2, 1, 1, 0)
    data = bytearray(ltx_writer.encode(hdr, pages_of(image, 4096)))
    d = ltx.decode(bytes(data))
    _, offset, size = d.entries[1]
    data[offset + size - 100] ^= 0x01
    with pytest.raises(ChecksumError, match="file checksum mismatch"):
        ltx.decode(bytes(data), "lit")
    # The frame alone decodes: structural checks cannot see it.
    page = ltx.frame_page(bytes(data[offset:offset + size]), 2, 4096)
    assert page != image[4096:]


@pytest.mark.parametrize("cut", [1, 8, 16, 30, 200])
def test_truncated_file(cut: int) -> None:
    data = snapshot_file(make_db(), 4096)
    with pytest.raises(LTXError):
        ltx.decode(data[:-cut], "cut")


def test_encoder_rejects_bad_pages() -> None:
    hdr = ltx.Header(0, 4096, 2, 1, 1, 0)
    with pytest.raises(LTXError, match="bytes, want 4096"):
        ltx_writer.encode(hdr, [(1, b"x" * 100)])
    with pytest.raises(LTXError, match="duplicate"):
        ltx_writer.encode(hdr, [(1, bytes(4096)), (1, bytes(4096))])
    with pytest.raises(LTXError, match="invalid page size"):
        ltx_writer.encode(ltx.Header(0, 1000, 1, 1, 1, 0), [])


def test_filenames() -> None:
    assert ltx.format_filename(1, 0x1F) == "0000000000000001-000000000000001f.ltx"
    assert ltx.parse_filename("0000000000000001-000000000000001f.ltx") == (1, 0x1F)
    for bad in ["1-2.ltx", "0000000000000002-0000000000000001.ltx", "0000000000000001-0000000000000001.ltx.tmp"]:
        with pytest.raises(LTXError):
            ltx.parse_filename(bad)


GO_QUERY = textwrap.dedent("""
    import apsw, json, litestream_vfs, sys
    c = apsw.Connection(":memory:")
    c.enable_load_extension(True)
    c.load_extension(litestream_vfs.loadable_path())
    r = apsw.Connection("file:db?vfs=litestream", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
                        vfs="litestream")
    out = {"rows": r.execute(sys.argv[1]).fetchall(),
           "txid": r.execute("PRAGMA litestream_txid").fetchall()[0][0]}
    print(json.dumps(out))
""")


def go_vfs_query(url: str, sql: str) -> dict:
    """Run a query through the reference Go VFS in a fresh process (it reads the
    environment the process started with)."""
    env = {**os.environ, "LITESTREAM_REPLICA_URL": url}
    res = subprocess.run([sys.executable, "-c", GO_QUERY, sql], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_go_vfs_reads_files_we_encode(tmp_path: Path) -> None:
    pytest.importorskip("litestream_vfs")
    ps = 4096
    image1 = make_db(ps, rows=300)
    conn = apsw.Connection(":memory:")
    conn.deserialize("main", image1)
    with conn:
        conn.execute("UPDATE t SET v = 'changed' WHERE id <= 10; DELETE FROM t WHERE id > 250")
    image2 = conn.serialize("main")
    l0 = tmp_path / "ltx" / "0"
    l0.mkdir(parents=True)
    (l0 / format_filename(1, 1)).write_bytes(snapshot_file(image1, ps))
    changed = [(pgno, page) for pgno, page in pages_of(image2, ps)
               if image1[(pgno - 1) * ps:pgno * ps] != page]
    hdr2 = ltx.Header(0, ps, len(image2) // ps, 2, 2, 1_700_000_001_000,
                      pre_apply_checksum=ltx_writer.database_checksum(image1, ps))
    (l0 / format_filename(2, 2)).write_bytes(
        ltx_writer.encode(hdr2, changed, post_apply_checksum=ltx_writer.database_checksum(image2, ps)))
    got = go_vfs_query(f"file://{tmp_path}", "SELECT count(*), sum(v = 'changed'), max(id) FROM t")
    assert got["rows"] == [[250, 10, 250]]
    assert got["txid"] == "0000000000000002"
