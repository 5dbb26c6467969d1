"""Ranged reads of NATS objects, chunk message by chunk message.

The object store has no ranged read, but an object is a run of chunk messages
on subject `$O.<bucket>.C.<nuid>` of stream `OBJ_<bucket>`, and JetStream's
direct get (`allow_direct`, on for object stores) fetches one message by
sequence. Where an object's metadata and its first and last chunks show every
chunk between them full (`max_chunk_size`) and consecutive in the stream (how
nats-py, nats.go's PutBytes and Litestream's L0 uploads write), a read fetches
just the chunks covering it, in parallel, each checked for its subject and
length. An object read whole but too big to keep leaves a chunk map (each
chunk's sequence and offset), so later reads fetch just their chunks by batched
direct get (nats-server 2.11+). Chunks and small whole objects are kept in one
LRU by bytes (an object never changes; read-ahead reads the neighbours), and
concurrent reads of one chunk share one fetch.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE

from ...errors import StorageError
from ...lru import LRU
from .connection import Connection

log = logging.getLogger(__name__)

CHUNK_GETS = 16
"""Direct gets of chunk messages one storage has in flight at once."""
LAYOUTS = 4096
"""Object layouts remembered (a few hundred bytes each)."""
MAPS = 64
"""Chunk maps of irregular objects too big to keep whole (~100 bytes a chunk)."""
BATCH_CHUNKS = 1024
"""Chunk messages one batched direct get asks for."""


@dataclass(frozen=True)
class Layout:
    """Where an object's bytes are: chunk 0 holds `head` bytes, the last chunk
    `tail`, every chunk between exactly `chunk`; chunk k is message
    `first_seq + k` of the stream (the last one `last_seq`)."""

    nuid: str
    subject: str
    n: int
    head: int
    tail: int
    chunk: int
    first_seq: int
    last_seq: int

    def index(self, pos: int) -> int:
        """The chunk holding byte `pos`."""
        return 0 if pos < self.head else min(self.n - 1, 1 + (pos - self.head) // self.chunk)

    def offset(self, k: int) -> int:
        return 0 if k == 0 else self.head + (k - 1) * self.chunk

    def length(self, k: int) -> int:
        return self.head if k == 0 else self.tail if k == self.n - 1 else self.chunk

    def seq(self, k: int) -> int:
        return self.last_seq if k == self.n - 1 else self.first_seq + k


@dataclass(frozen=True)
class ChunkMap:
    """Where the chunks of an object laid out any which way are: chunk k holds
    bytes [offsets[k], offsets[k + 1]) and is message seqs[k] of the stream."""

    nuid: str
    subject: str
    offsets: tuple[int, ...]
    seqs: tuple[int, ...]


class Chunks:
    """The kept bytes (whole objects by (level, min, max), chunks by (nuid,
    index)), what is known of objects' layouts, and the reads that use them."""

    def __init__(self, conn: Connection, cache_bytes: int) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._kept: LRU[tuple[Any, ...], bytes] = LRU(cache_bytes, len)
        self._layouts: LRU[str, Layout | None] = LRU(LAYOUTS)
        """By nuid: the object's layout, or None where it must be read whole."""
        self._maps: LRU[str, ChunkMap] = LRU(MAPS)
        """By nuid: where the chunks of an object read whole but too big to keep are."""
        self._layout_tasks: dict[str, asyncio.Future[Layout | None]] = {}
        self._chunk_tasks: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        """Fetches in flight on the loop (touched only there)."""
        self._gets = asyncio.Semaphore(CHUNK_GETS)
        self.fetched = {"chunk_gets": 0, "chunk_bytes": 0, "object_gets": 0, "object_bytes": 0, "object_msgs": 0,
                        "batch_gets": 0}
        """What reads fetched from the server: chunk messages (by direct get, one by one or
        `batch_gets` batches of them), whole objects and the chunk messages they came in."""

    # -- what is kept -------------------------------------------------------

    def kept(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            return self._kept.get(key)

    def keeps(self, size: int) -> bool:
        """Whether bytes of this size are worth keeping (a quarter of the cache at most)."""
        return size <= self._kept.limit // 4

    def remember(self, key: tuple[Any, ...], data: bytes) -> None:
        if not self.keeps(len(data)):
            return
        with self._lock:
            if key not in self._kept:
                self._kept.put(key, data)

    def count(self, kind: str, *datas: bytes, msgs: int = 0) -> None:
        with self._lock:
            self.fetched[f"{kind}_gets"] += len(datas)
            self.fetched[f"{kind}_bytes"] += sum(len(d) for d in datas)
            if msgs:
                self.fetched["object_msgs"] += msgs

    def keep_map(self, m: ChunkMap) -> None:
        with self._lock:
            self._maps.put(m.nuid, m)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    # -- by layout: chunk messages by direct get --------------------------

    def ranged(self, name: str, obj: Any, size: int, a: int, b: int, where: str) -> bytes | None:
        """Bytes [a, b) of object `name` (`obj` its listed info, if any) from
        just the chunks holding them; None where it must be read whole."""
        if not self._conn.direct:
            return None
        with self._lock:
            if obj is not None and obj.nuid in self._layouts:
                lay = self._layouts.get(obj.nuid)
                if lay is None:
                    return None
                keys = [(lay.nuid, k) for k in range(lay.index(a), lay.index(b - 1) + 1)]
                if all(key in self._kept for key in keys):
                    return _cut(lay, [self._kept.get(key) or b"" for key in keys], a, b)
        data: bytes | None = self._conn.run(self._range(name, obj, size, a, b, where), "get", where)
        return data

    async def _range(self, name: str, obj: Any, size: int, a: int, b: int, where: str) -> bytes | None:
        if obj is None:  # listed before the latest listing, or never listed
            obj = await self._conn.obs.get_info(name)
        if int(obj.size or 0) != size:
            return None  # not the object listed: the whole read says what it is
        lay = await self._layout(obj, where)
        if lay is None:
            return None
        parts = await asyncio.gather(*(self._chunk(lay, k, where)
                                       for k in range(lay.index(a), lay.index(b - 1) + 1)))
        return _cut(lay, parts, a, b)

    async def _layout(self, obj: Any, where: str) -> Layout | None:
        with self._lock:
            if obj.nuid in self._layouts:
                return self._layouts.get(obj.nuid)
        task = self._layout_tasks.get(obj.nuid)
        if task is None:
            task = self._layout_tasks[obj.nuid] = asyncio.ensure_future(self._find_layout(obj, where))
            task.add_done_callback(forget(self._layout_tasks, obj.nuid))
        return await asyncio.shield(task)

    async def _find_layout(self, obj: Any, where: str) -> Layout | None:
        """The object's layout from its metadata and its first and last chunk
        (which are kept: a replica reads an LTX file's head and tail first);
        None, also remembered, where that does not pin every chunk down."""
        lay = None
        n, size = int(obj.chunks or 0), int(obj.size or 0)
        cs = int(getattr(obj.options, "max_chunk_size", None) or 0)
        # Only a size these counts allow with full middle chunks is worth a look
        # (Litestream's compactions have thousands of chunks of a few bytes).
        if obj.nuid and not obj.is_link() and n >= 1 and cs >= 1 and max(n - 2, 0) * cs + min(n, 2) <= size <= n * cs:
            subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self._conn.bucket, obj=obj.nuid)
            js, stream = self._conn.js, self._conn.stream
            async with self._gets:
                if n == 1:  # its last chunk is its first
                    first = last = await js.get_msg(stream, subject=subject, direct=True)
                else:
                    first, last = await asyncio.gather(
                        js.get_msg(stream, seq=0, subject=subject, next=True, direct=True),
                        js.get_msg(stream, subject=subject, direct=True))
            head, tail = bytes(first.data or b""), bytes(last.data or b"")
            self.count("chunk", *((head,) if n == 1 else (head, tail)))
            if first.subject != subject or last.subject != subject:
                raise StorageError(f"{where}: get failed: the server answered a get of chunks {subject} "
                                   f"with {first.subject} and {last.subject}")
            if n == 1:
                regular = first.seq == last.seq and len(head) == size
            else:
                regular = (0 < len(head) <= cs and 0 < len(tail) <= cs
                           and size - len(head) - len(tail) == (n - 2) * cs  # so every middle chunk is full
                           and (last.seq - first.seq == n - 1 if n > 2 else last.seq > first.seq))
            if regular:
                lay = Layout(obj.nuid, subject, n, len(head), len(tail), cs, first.seq, last.seq)
                self.remember((obj.nuid, 0), head)
                self.remember((obj.nuid, n - 1), tail)
            else:
                log.debug("%s: chunks %s not laid out for ranged reads (%d chunks of %d bytes, sequences %d..%d, "
                          "first %d, last %d bytes); reading it whole", where, subject, n, size, first.seq, last.seq,
                          len(head), len(tail))
        with self._lock:
            self._layouts.put(obj.nuid, lay)
        return lay

    async def _chunk(self, lay: Layout, k: int, where: str) -> bytes:
        key = (lay.nuid, k)
        with self._lock:
            hit = self._kept.get(key)
        if hit is not None:
            return hit
        task = self._chunk_tasks.get(key)
        if task is None:
            task = self._chunk_tasks[key] = asyncio.ensure_future(self._fetch_chunk(lay, k, where))
            task.add_done_callback(forget(self._chunk_tasks, key))
        return await asyncio.shield(task)

    async def _fetch_chunk(self, lay: Layout, k: int, where: str) -> bytes:
        seq = lay.seq(k)
        async with self._gets:
            msg = await self._conn.js.get_msg(self._conn.stream, seq=seq, direct=True)
        data = bytes(msg.data or b"")
        self.count("chunk", data)
        if msg.subject != lay.subject or len(data) != lay.length(k):
            raise StorageError(f"{where}: get failed: chunk {k} of {lay.n} is not where the object's layout "
                               f"puts it: message {seq} is {len(data)} bytes on {msg.subject}, expected "
                               f"{lay.length(k)} bytes on {lay.subject}")
        self.remember((lay.nuid, k), data)
        return data

    # -- by chunk map: objects laid out any which way ----------------------

    def mapped(self, obj: Any, whole_key: tuple[int, int, int], size: int, a: int, b: int,
               where: str) -> bytes | None:
        """Bytes [a, b) of an object read whole before but too big to keep,
        from just the chunks holding them (batched direct gets); None where
        there is no chunk map, or the object is kept whole."""
        if not self._conn.direct or not self._conn.batching:
            return None
        with self._lock:
            m = self._maps.get(obj.nuid) if obj is not None else None
            if m is None or m.offsets[-1] != size or whole_key in self._kept:
                return None
            i, j = bisect.bisect_right(m.offsets, a) - 1, bisect.bisect_left(m.offsets, b)
            keys = [(m.nuid, k) for k in range(i, j)]
            if all(key in self._kept for key in keys):
                parts = [self._kept.get(key) or b"" for key in keys]
                return b"".join(parts)[a - m.offsets[i]:b - m.offsets[i]]
        data: bytes = self._conn.run(self._fetch_mapped(m, i, j, where), "get", where)
        return data[a - m.offsets[i]:b - m.offsets[i]]

    async def _fetch_mapped(self, m: ChunkMap, i: int, j: int, where: str) -> bytes:
        """Chunks i..j-1 of a mapped object joined: kept ones from the LRU, ones
        in flight shared, the rest by batched direct gets of consecutive runs."""
        loop = asyncio.get_running_loop()
        have: dict[int, bytes | asyncio.Future[bytes]] = {}
        missing: list[int] = []
        for k in range(i, j):
            key = (m.nuid, k)
            with self._lock:
                hit = self._kept.get(key)
            if hit is not None:
                have[k] = hit
            elif key in self._chunk_tasks:
                have[k] = self._chunk_tasks[key]
            else:
                fut: asyncio.Future[bytes] = loop.create_future()
                fut.add_done_callback(forget(self._chunk_tasks, key))
                have[k] = self._chunk_tasks[key] = fut
                missing.append(k)
        runs: list[list[int]] = []
        for k in missing:
            if runs and runs[-1][-1] == k - 1 and len(runs[-1]) < BATCH_CHUNKS:
                runs[-1].append(k)
            else:
                runs.append([k])
        await asyncio.gather(*(self._batch(m, run, have, where) for run in runs))
        parts = [v if isinstance(v, bytes) else await asyncio.shield(v) for _, v in sorted(have.items())]
        return b"".join(parts)

    async def _batch(self, m: ChunkMap, run: list[int], have: dict[int, Any], where: str) -> None:
        """Chunks `run` (consecutive) by one batched direct get: from the first
        one's sequence, the next `len(run)` messages on the object's subject,
        each checked for its sequence, subject and length; settles their futures."""
        got: list[Any] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_msg(msg: Any) -> None:
            if done.done():
                return
            status = (msg.headers or {}).get("Status")
            if status is None:
                pass
            elif status == "204" and len(got) == len(run):  # end of batch
                done.set_result(None)
                return
            else:
                what = f"{status} {(msg.headers or {}).get('Description', '')}".rstrip()
                done.set_exception(StorageError(f"{where}: get failed: batched direct get of {m.subject} "
                                                f"answered {what} after {len(got)} of {len(run)} chunks"))
                return
            got.append(msg)

        nc = self._conn.nc
        try:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, cb=on_msg)
            try:
                async with self._gets:
                    req = {"seq": m.seqs[run[0]], "next_by_subj": m.subject, "batch": len(run)}
                    await nc.publish(f"$JS.API.DIRECT.GET.{self._conn.stream}", json.dumps(req).encode(),
                                     reply=inbox)
                    await done
            finally:
                await sub.unsubscribe()
            with self._lock:
                self.fetched["batch_gets"] += 1
            self.count("chunk", *(bytes(g.data or b"") for g in got))
            for k, msg in zip(run, got):
                h = msg.headers or {}
                data = bytes(msg.data or b"")
                if (h.get("Nats-Subject") != m.subject or h.get("Nats-Sequence") != str(m.seqs[k])
                        or len(data) != m.offsets[k + 1] - m.offsets[k]):
                    raise StorageError(f"{where}: get failed: chunk {k} of {len(m.seqs)} is not where it was: "
                                       f"message {h.get('Nats-Sequence')} is {len(data)} bytes on "
                                       f"{h.get('Nats-Subject')}, expected message {m.seqs[k]}, "
                                       f"{m.offsets[k + 1] - m.offsets[k]} bytes on {m.subject}")
                self.remember((m.nuid, k), data)
                have[k].set_result(data)
        except BaseException as e:
            for k in run:
                if not have[k].done():
                    have[k].set_exception(e if isinstance(e, Exception) else StorageError(f"{where}: get cancelled"))
            raise


def _cut(lay: Layout, parts: list[bytes], a: int, b: int) -> bytes:
    """Bytes [a, b) from `parts`, the chunks from the one holding byte a on."""
    start = a - lay.offset(lay.index(a))
    if len(parts) == 1:
        return parts[0][start:start + b - a]
    return b"".join(parts)[start:start + b - a]


def forget(tasks: dict[Any, Any], key: Any) -> Any:
    """A done-callback dropping a finished fetch from `tasks` (and retrieving
    its error, which its waiters raise, or nobody if they all gave up)."""
    def done(task: asyncio.Future[Any]) -> None:
        if tasks.get(key) is task:
            del tasks[key]
        if not task.cancelled():
            task.exception()
    return done
