"""NATS ranged reads: an object's bytes are chunk messages, and `read` fetches
only the chunks covering a range (direct get by sequence) where the object's
layout pins every chunk down. These tests write objects with nats-py's own
object-store put on the session's nats-server, with the chunk sizes chosen by
a reader that returns short reads where told (as Litestream's readers do), and
check every read against the slice of the whole object.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from servers import NATS_PASSWORD, NATS_USER

from lsvfs.errors import StorageError
from lsvfs.storage import open_storage
from lsvfs.storage.base import FileInfo, format_filename

pytestmark = pytest.mark.backends

CS = 1000
"""The max chunk size of most objects here (nats-py's default is 128 KiB)."""


class Scripted(io.RawIOBase):
    """`data`, read in pieces of `sizes` (then as much as asked): the chunk sizes of a put."""

    def __init__(self, data: bytes, sizes: Sequence[int] = ()) -> None:
        self.data, self.sizes, self.pos = data, list(sizes), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), len(self.data) - self.pos, self.sizes.pop(0) if self.sizes else len(b))
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def _name(lo: int) -> str:
    return f"ltx/0/{format_filename(lo, lo)}"


def _put(server: Any, bucket: str, objects: dict[int, tuple[bytes, Sequence[int], int]]) -> None:
    """Put objects named L0 lo-lo, all at once (so their chunks interleave in the stream)."""
    from nats.js import api

    async def put(js: Any) -> None:
        obs = await js.object_store(bucket)
        await asyncio.gather(*(
            obs.put(_name(lo), Scripted(data, sizes),
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
        assert st.fetched == {"chunk_gets": 2, "chunk_bytes": cs + 5000, "object_gets": 0, "object_bytes": 0}
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
