"""NATS ranged reads: an object's bytes are chunk messages, and `read` fetches
only the chunks covering a range (direct get by sequence) where the object's
layout pins every chunk down. These tests write objects with nats-py's own
object-store put on the session's nats-server, with the chunk sizes chosen by
a reader that returns short reads where told (as Litestream's readers do), and
check every read against the slice of the whole object.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import ltx_writer
from servers import NATS_PASSWORD, NATS_USER, ShortReads

from lsvfs.errors import StorageError
from lsvfs.storage import open_storage
from lsvfs.storage.base import FileInfo, format_filename
from lsvfs.storage.nats import _delivery_sequences

pytestmark = pytest.mark.backends

CS = 1000
"""The max chunk size of most objects here (nats-py's default is 128 KiB)."""


def _name(lo: int) -> str:
    return f"ltx/0/{format_filename(lo, lo)}"


def _put(server: Any, bucket: str, objects: dict[int, tuple[bytes, Sequence[int], int]]) -> None:
    """Put objects named L0 lo-lo, all at once (so their chunks interleave in the stream)."""
    from nats.js import api

    async def put(js: Any) -> None:
        obs = await js.object_store(bucket)
        await asyncio.gather(*(
            obs.put(_name(lo), ShortReads(data, sizes),
                    meta=api.ObjectMeta(name=_name(lo), options=api.ObjectMetaOptions(max_chunk_size=cs)))
            for lo, (data, sizes, cs) in objects.items()))

    server._run(put)


@pytest.fixture
def bucket(nats_server: Any) -> Iterator[tuple[Any, str]]:
    yield nats_server, nats_server.create_bucket()


def _storage(server: Any, bucket: str) -> Any:
    return open_storage(f"nats://{NATS_USER}:{NATS_PASSWORD}@127.0.0.1:{server.port}/{bucket}")


def _boundary_ranges(size: int, offsets: Sequence[int]) -> list[tuple[int, int]]:
    """Ranges starting, ending and crossing at each chunk boundary, plus the ends."""
    out = [(0, 1), (0, min(size, 64)), (size - 1, 1), (0, size)]
    for o in offsets:
        if 0 < o < size:
            out += [(o, 1), (o - 1, 2), (o - 1, 1), (max(0, o - 10), min(size - o, 900) + 10)]
    return out


LAYOUTS = {
    # name: (size, chunk sizes of the put)
    "full chunks": (10 * CS + 500, ()),
    "exact multiple": (6 * CS, ()),
    "short first chunk (Litestream L0)": (7 * CS + 321, (100,)),
    "one chunk": (CS - 1, ()),
    "two chunks": (CS + 1, ()),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ranged_reads_equal_the_slice_of_the_whole(bucket: tuple[Any, str], layout: str) -> None:
    """First chunk, a range across two chunks, the last partial chunk, up to
    the exact end: each read equals the slice, and none fetched a whole object."""
    server, b = bucket
    size, sizes = LAYOUTS[layout]
    data = random.Random(size).randbytes(size)
    _put(server, b, {1: (data, sizes, CS)})
    st = _storage(server, b)
    try:
        (f,) = st.list_files(0)
        assert f.size == size
        first = sizes[0] if sizes else CS
        bounds = [first + k * CS for k in range(size // CS + 1)]
        ranges = _boundary_ranges(size, bounds) + [(first, CS), (first + CS - 5, CS + 10), (size - 7, 7)]
        for off, n in [(o, n) for o, n in ranges if o + n <= size]:
            assert st.read(f, off, n) == data[off:off + n], (off, n)
        assert st.fetched["chunk_bytes"] == size  # each chunk fetched once, then kept
        assert st.read_all(f) == data
        assert st.fetched["object_gets"] == 0
    finally:
        st.close()
    st = _storage(server, b)
    try:
        (f,) = st.list_files(0)
        assert st.read_all(f) == data  # all chunks at once
        assert st.fetched["object_gets"] == 0 and st.fetched["chunk_bytes"] == size
    finally:
        st.close()


def test_a_head_read_fetches_a_fraction_of_the_object(bucket: tuple[Any, str]) -> None:
    """Opening reads an LTX file's head and tail: with nats-py's default 128 KiB
    chunks, 64 KiB of a 2 MiB object costs its first and last chunk only."""
    server, b = bucket
    size, cs = (2 << 20) + 5000, 128 << 10
    data = random.Random(3).randbytes(size)
    _put(server, b, {1: (data, (), cs)})
    st = _storage(server, b)
    try:
        (f,) = st.list_files(0)
        assert st.read(f, 0, 64 << 10) == data[:64 << 10]
        assert st.read(f, size - 300, 300) == data[-300:]
        assert st.fetched == {"chunk_gets": 2, "chunk_bytes": cs + 5000, "object_gets": 0, "object_bytes": 0,
                              "object_msgs": 0, "batch_gets": 0}
        assert st.read(f, 5 * cs - 10, 20) == data[5 * cs - 10:5 * cs + 10]  # two more chunks
        assert st.fetched["chunk_gets"] == 4 and st.fetched["chunk_bytes"] == 3 * cs + 5000
    finally:
        st.close()


def test_interleaved_and_irregular_chunks_still_read_right(bucket: tuple[Any, str]) -> None:
    """Chunks of two objects put at once interleave in the stream, and a writer
    reading through a pipe leaves chunks of any size (Litestream's compactions):
    neither layout says where chunk k is, so those objects are read whole, and
    every range is right."""
    server, b = bucket
    rnd = random.Random(5)
    objects = {lo: (rnd.randbytes(20 * CS + lo), (), CS) for lo in (1, 2)}
    objects[3] = (rnd.randbytes(6000), [rnd.randrange(1, 400) for _ in range(40)], CS)
    _put(server, b, objects)
    st = _storage(server, b)
    try:
        files = st.list_files(0)
        assert [f.min_txid for f in files] == [1, 2, 3]
        for f in files:
            data = objects[f.min_txid][0]
            for off, n in _boundary_ranges(f.size, range(0, f.size, 777)):
                assert st.read(f, off, n) == data[off:off + n], (f.name, off, n)
        assert st.fetched["object_gets"] == 3
    finally:
        st.close()


def test_reads_past_the_end_fail_as_on_every_backend(bucket: tuple[Any, str]) -> None:
    server, b = bucket
    data = random.Random(7).randbytes(3 * CS + 10)
    _put(server, b, {1: (data, (), CS)})
    st = _storage(server, b)
    try:
        (f,) = st.list_files(0)
        for off, n in ((f.size - 10, 20), (f.size, 1), (f.size + 5000, 10)):
            with pytest.raises(StorageError, match=r"short read .* wanted \d+ bytes"):
                st.read(f, off, n)
        assert st.read(f, f.size - 10, 10) == data[-10:]
        with pytest.raises(StorageError):
            st.read(FileInfo(0, 9, 9, 100), 0, 10)  # no such object
    finally:
        st.close()


def test_a_chunk_not_where_the_metadata_says_is_an_error(bucket: tuple[Any, str]) -> None:
    """Metadata saying 1000-byte chunks over chunks of 1000, 500, 1500, 1000
    bytes adds up as if every middle chunk were full; the fetched chunk's
    length gives it away: an error, never wrong bytes."""
    from nats.js import api

    server, b = bucket
    data = random.Random(11).randbytes(4000)
    _put(server, b, {1: (data, (1000, 500, 1500, 1000), 1500)})

    async def lie(js: Any) -> None:
        obs = await js.object_store(b)
        info = await obs.get_info(_name(1))
        info.options.max_chunk_size = 1000
        meta = await js.get_last_msg(f"OBJ_{b}", f"$O.{b}.M.>")
        await js.publish(meta.subject, json.dumps(info.as_dict()).encode(),
                         headers={api.Header.ROLLUP: "sub"})

    server._run(lie)
    st = _storage(server, b)
    try:
        (f,) = st.list_files(0)
        assert st.read(f, 0, 1000) == data[:1000]  # the first chunk is as said
        with pytest.raises(StorageError, match="chunk 1 of 4 is not where"):
            st.read(f, 1200, 10)
    finally:
        st.close()


def test_without_direct_get_objects_are_read_whole(bucket: tuple[Any, str]) -> None:
    server, b = bucket
    data = random.Random(13).randbytes(5 * CS + 1)
    _put(server, b, {1: (data, (), CS)})

    async def no_direct(js: Any) -> None:
        si = await js.stream_info(f"OBJ_{b}")
        si.config.allow_direct = False
        await js.update_stream(si.config)

    server._run(no_direct)
    st = _storage(server, b)
    try:
        (f,) = st.list_files(0)
        assert st.read(f, CS - 5, 10) == data[CS - 5:CS + 5]
        assert st.read(f, 0, f.size) == data
        assert st.fetched["chunk_gets"] == 0 and st.fetched["object_gets"] == 1
    finally:
        st.close()


# -- Litestream's own layout: compactions and snapshots in thousands of tiny chunks --


def _snapshot(lo: int, pages: int, seed: int) -> bytes:
    """An LTX file of `pages` 4 KiB pages, half-compressible (so its LZ4 blocks vary in size)."""
    from lsvfs import ltx

    rnd = random.Random(seed)
    body = [(p, rnd.randbytes(2048) + bytes([p % 251]) * 2048) for p in range(1, pages + 1)]
    return ltx_writer.encode(ltx.Header(flags=0, page_size=4096, commit=pages, min_txid=lo, max_txid=lo,
                                 timestamp=1_700_000_000_000), body)


LITESTREAM_OBJECTS = {9: (300, 1), 1: (200, 2), 0: (40, 3)}
"""Level: (pages, seed) of the objects `_litestream_bucket` puts."""


def _litestream_bucket(server: Any, b: str, levels: Sequence[int] = (0, 1, 9)) -> dict[str, bytes]:
    """An L9 snapshot and an L1 compaction put as `litestream replicate` does (their
    chunks interleaved, a few bytes each), and an L0 file in 128 KiB chunks."""
    from servers import litestream_chunks

    objects = {f"ltx/{lvl}/{format_filename(1, 1)}": _snapshot(1, *LITESTREAM_OBJECTS[lvl]) for lvl in levels}
    assert all(len(litestream_chunks(n, d)) > 800 for n, d in objects.items() if not n.startswith("ltx/0/"))
    server.put_as_litestream(b, objects)
    return objects


@pytest.fixture(scope="module")
def litestream_bucket(nats_server: Any) -> tuple[Any, str, dict[str, bytes]]:
    """One bucket of `_litestream_bucket`'s objects for the tests that only read it."""
    b = nats_server.create_bucket()
    return nats_server, b, _litestream_bucket(nats_server, b)


def _nats(server: Any, b: str, **kw: Any) -> Any:
    from lsvfs.storage.nats import NATSStorage

    return NATSStorage("127.0.0.1", b, port=server.port, user=NATS_USER, password=NATS_PASSWORD, **kw)


def test_litestream_tiny_interleaved_chunks_read_right_in_one_fetch(
        litestream_bucket: tuple[Any, str, dict[str, bytes]]) -> None:
    """A snapshot of ~1,500 chunks of 1 to ~2,000 bytes, interleaved with a
    compaction's: every range (the header, chunk boundaries, across hundreds of
    chunks, the tail) equals the slice, all from one consumer delivering each
    chunk once; past the end is the short read every backend reports."""
    from servers import litestream_chunks

    server, b, objects = litestream_bucket
    st = _nats(server, b)
    try:
        files = {f.level: f for lvl in (0, 1, 9) for f in st.list_files(lvl)}
        snap = files[9]
        data = objects[f"ltx/9/{format_filename(1, 1)}"]
        sizes = litestream_chunks("ltx/9/x", data)
        bounds = [sum(sizes[:k]) for k in range(1, len(sizes), 37)]
        for off, n in _boundary_ranges(snap.size, bounds) + [(100, 300_000), (snap.size - 5000, 5000)]:
            assert st.read(snap, off, n) == data[off:off + n], (off, n)
        assert st.fetched["object_gets"] == 1 and st.fetched["object_msgs"] == len(sizes)
        assert st.fetched["chunk_gets"] == 0  # no probing of a layout that cannot be regular
        for off, n in ((snap.size - 10, 20), (snap.size, 1)):
            with pytest.raises(StorageError, match=r"short read .* wanted \d+ bytes"):
                st.read(snap, off, n)
        for lvl in (0, 1):
            assert st.read_all(files[lvl]) == objects[f"ltx/{lvl}/{format_filename(1, 1)}"]
        assert st.fetched["object_gets"] == 2  # L1 whole; L0's regular chunks by direct get
    finally:
        st.close()


def test_a_big_tiny_chunked_object_is_read_by_its_chunk_map(
        litestream_bucket: tuple[Any, str, dict[str, bytes]]) -> None:
    """Too big to keep whole, a tiny-chunked object is fetched whole once, and
    its chunk map (sequence and offset of each chunk) then lets a ranged read
    fetch just the chunks covering it, in one batched direct get, where it was
    refetched whole (~1,500 messages) for every read."""
    server, b, objects = litestream_bucket
    data = objects[f"ltx/9/{format_filename(1, 1)}"]
    st = _nats(server, b, cache_bytes=len(data))  # keeps chunks, not the whole object
    try:
        (snap,) = st.list_files(9)
        assert st.read(snap, 0, 100) == data[:100]
        assert st.fetched["object_gets"] == 1
        msgs = st.fetched["object_msgs"]
        for off, n in ((snap.size - 4096, 4096), (150_000, 9000), (0, 200), (snap.size - 1, 1)):
            assert st.read(snap, off, n) == data[off:off + n], (off, n)
        assert st.fetched["object_gets"] == 1
        # Three batches (the last read was kept); the tail is the page index, one chunk an entry.
        assert st.fetched["batch_gets"] == 3 and st.fetched["chunk_gets"] < msgs // 3
        before = dict(st.fetched)
        assert st.read(snap, 150_000, 9000) == data[150_000:159_000]  # kept
        assert st.fetched == before
        with pytest.raises(StorageError, match=r"short read"):
            st.read(snap, snap.size - 1, 2)
    finally:
        st.close()


def test_tiny_chunks_that_do_not_add_up_are_an_error(bucket: tuple[Any, str]) -> None:
    """Metadata whose digest or chunk count the chunks do not match: an error, never bytes."""
    from nats.js import api

    server, b = bucket
    _litestream_bucket(server, b, (1,))
    name = f"ltx/1/{format_filename(1, 1)}"

    def lie(field: str, value: Any) -> None:
        async def go(js: Any) -> None:
            obs = await js.object_store(b)
            info = await obs.get_info(name)
            setattr(info, field, value)
            meta = f"$O.{b}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
            await js.publish(meta, json.dumps(info.as_dict()).encode(), headers={api.Header.ROLLUP: "sub"})

        server._run(go)

    for field, value, error in (("digest", "SHA-256=" + base64.urlsafe_b64encode(bytes(32)).decode(), "SHA-256 digest"),
                                ("chunks", 7, "says 7 chunks")):
        lie(field, value)
        st = _nats(server, b)
        try:
            (f,) = st.list_files(1)
            with pytest.raises(StorageError, match=error):
                st.read(f, 0, 100)
        finally:
            st.close()


@pytest.mark.parametrize(("reply", "want"), [
    ("$JS.ACK.OBJ_b.c1.1.4070.12.1700000000000000000.3", (4070, 12)),
    ("$JS.ACK.hub.ACCHASH.OBJ_b.c1.1.4070.12.1700000000000000000.3", (4070, 12)),
    ("$JS.ACK.hub.ACCHASH.OBJ_b.c1.1.4070.12.1700000000000000000.3.r4nd", (4070, 12)),
    ("$JS.ACK.OBJ_b.c1.1.x.12.1700000000000000000.3", (0, -1)),
    ("_INBOX.abc", (0, -1)),
    (None, (0, -1)),
])
def test_delivery_sequences_from_both_ack_subject_forms(reply: str | None, want: tuple[int, int]) -> None:
    """Both forms of a JetStream delivery's ack subject give its stream and consumer sequence;
    anything else gives a consumer sequence no delivery has, which the reader reports as wrong."""
    assert _delivery_sequences(reply) == want
