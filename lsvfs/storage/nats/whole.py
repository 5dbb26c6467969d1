"""Whole NATS objects, read by one ephemeral push consumer on their chunk subject.

Litestream's compactions and snapshots stream through a pipe, one chunk per
write: thousands of chunks of a few bytes, interleaved with another upload's,
so no layout pins their chunks down and they are read whole. nats-py's own get
appends each chunk to the result (quadratic in the chunk count) behind an
ordered consumer's per-message bookkeeping; a push consumer without acks, with
flow control, collects the chunks in one pass instead (see bench/README.md).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

from nats.js import api
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_DIGEST_TYPE

from ...errors import StorageError
from .chunks import ChunkMap, Chunks
from .connection import CALL_TIMEOUT, Connection


async def read_whole(conn: Connection, chunks: Chunks, obj: Any, name: str, size: int, where: str) -> bytes:
    """The whole object `name` (`obj` its listed info, if any), checked for
    chunk count, order, length and SHA-256 digest. The consumer's sequence
    numbers say whether a chunk went missing; flow control keeps a big object
    from overrunning the server's buffer for this client. For an object too big
    to keep whole, the chunks' sequences and offsets are kept, so ranged reads
    can fetch just the chunks covering them (`Chunks.mapped`)."""
    if obj is None or int(obj.size or 0) != size:
        obj = await conn.obs.get_info(name)
    if obj.is_link() or not obj.nuid:
        res = await conn.obs.get(name)  # a link (Litestream writes none): nats-py follows it
        data = bytes(res.data or b"")
        chunks.count("object", data)
        return data
    n, total = int(obj.chunks or 0), int(obj.size or 0)
    if total == 0:
        return b""
    subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=conn.bucket, obj=obj.nuid)
    parts, seqs = await _deliver(conn, subject, n, total, where)
    data = b"".join(parts)
    chunks.count("object", data, msgs=len(parts))
    if len(data) != total:
        raise StorageError(f"{where}: get failed: {n} chunks of {subject} hold {len(data)} bytes, "
                           f"the object's metadata says {total}")
    digest = str(obj.digest or "")
    if digest.upper().startswith(OBJ_DIGEST_TYPE.upper()):
        want = base64.urlsafe_b64decode(digest[len(OBJ_DIGEST_TYPE):])
        if hashlib.sha256(data).digest() != want:
            raise StorageError(f"{where}: get failed: the chunks of {subject} do not match the object's "
                               f"SHA-256 digest")
    if not chunks.keeps(len(data)):  # not kept whole: keep where each chunk is
        offsets = [0]
        for part in parts:
            offsets.append(offsets[-1] + len(part))
        chunks.keep_map(ChunkMap(obj.nuid, subject, tuple(offsets), tuple(seqs)))
    return data


async def _deliver(conn: Connection, subject: str, n: int, total: int, where: str) -> tuple[list[bytes], list[int]]:
    """The `n` chunk messages on `subject`, in order, and their stream sequences."""
    parts: list[bytes] = []
    seqs: list[int] = []
    bad: list[str] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    nc = conn.nc

    async def on_msg(msg: Any) -> None:
        if msg.headers and msg.headers.get("Status") == "100":  # flow control (answered) or heartbeat
            if msg.reply:
                await nc.publish(msg.reply, b"")
            return
        if done.done():
            return
        sseq, dseq = delivery_sequences(msg.reply)
        if msg.subject != subject or dseq != len(parts) + 1:
            bad.append(f"delivery {len(parts) + 1} of {n} was {msg.subject} (consumer sequence {dseq})")
        else:
            parts.append(msg.data)
            seqs.append(sseq)
        if bad or len(parts) == n:
            done.set_result(None)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=max(n + 16, 65536),
                             pending_bytes_limit=max(2 * total, 64 << 20))
    consumer = None
    try:
        ci = await conn.js.add_consumer(conn.stream, api.ConsumerConfig(
            deliver_subject=inbox, filter_subject=subject, ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.ALL, replay_policy=api.ReplayPolicy.INSTANT,
            mem_storage=True, num_replicas=1, inactive_threshold=CALL_TIMEOUT, max_deliver=1,
            flow_control=True, idle_heartbeat=5.0))
        consumer = ci.name
        if int(ci.num_pending or 0) + int(ci.delivered.consumer_seq or 0) != n:
            raise StorageError(f"{where}: get failed: the object's metadata says {n} chunks, stream "
                               f"{conn.stream} has {int(ci.num_pending or 0)} on {subject}")
        await done
    finally:
        await sub.unsubscribe()
        if consumer is not None:  # gone by itself after inactive_threshold; no need to wait for this
            await nc.publish(f"$JS.API.CONSUMER.DELETE.{conn.stream}.{consumer}", b"")
    if bad:
        raise StorageError(f"{where}: get failed: chunks of {subject} out of order or missing: {bad[0]}")
    return parts, seqs


def delivery_sequences(reply: str | None) -> tuple[int, int]:
    """(stream sequence, consumer sequence) from a JetStream delivery's ack subject, in either
    form: `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>`, or with
    `<domain>.<account hash>` after `ACK` and a random token at the end; (0, -1) for anything else."""
    tokens = (reply or "").split(".")
    if tokens[:2] != ["$JS", "ACK"] or len(tokens) not in (9, 11, 12):  # 11: v2 without the token
        return 0, -1
    first = 5 if len(tokens) == 9 else 7
    try:
        return int(tokens[first]), int(tokens[first + 1])
    except ValueError:
        return 0, -1
