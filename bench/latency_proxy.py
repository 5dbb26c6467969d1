"""A TCP proxy on 127.0.0.1 that delays every byte by a fixed one-way latency.

Put one in front of each storage server so every backend pays the same added
round-trip time. Each direction of each connection is a queue of
(due time, chunk): chunks are forwarded in order once due, so latency is added
without throttling bandwidth (a 1 MB response still streams). Runs an asyncio
loop on a daemon thread; `close()` stops it.

`tap`, if given, is called once per accepted connection and returns a
function that sees that connection's client->server bytes in order, as they
arrive (before the delay): `request_count.RequestCounts.parser` counts HTTP
requests that way. `proxy_process` runs a proxy in a process of its own, so
that its CPU and its share of the GIL are not the measured client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("lsvfs.bench.proxy")

CHUNK = 256 * 1024


class LatencyProxy:
    """Listen on 127.0.0.1:<port>, forward to 127.0.0.1:`upstream_port`, `delay` seconds each way."""

    def __init__(self, upstream_port: int, delay: float,
                 tap: Callable[[], Callable[[bytes], None]] | None = None) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.tap = tap
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="latency-proxy", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _start(self) -> asyncio.base_events.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            c_writer.close()
            return
        feed = self.tap() if self.tap is not None else None
        await asyncio.gather(self._pipe(c_reader, u_writer, feed), self._pipe(u_reader, c_writer),
                             return_exceptions=True)
        for w in (c_writer, u_writer):
            with contextlib.suppress(Exception):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    feed: Callable[[bytes], None] | None = None) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(Exception):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(forward())
        try:
            while True:
                data = await reader.read(CHUNK)
                if feed is not None:
                    feed(data)
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        except Exception:  # noqa: BLE001 - a reset connection ends this direction
            sender.cancel()
            raise

    def close(self) -> None:
        """Stop listening, cancel every connection's tasks and wait for them, stop the loop."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


def proxy_process(upstream_port: int, delay: float) -> Any:
    """A LatencyProxy in a process of its own (this file run as a script), so its
    CPU is not the client's; `.port`, `.stop()` (a tests/servers.ChildProcess)."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from servers import ChildProcess

    return ChildProcess([sys.executable, __file__, str(upstream_port), repr(delay)], "latency proxy")


def _serve(upstream_port: int, delay: float) -> None:
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # connections cut at stop are expected
    proxy = LatencyProxy(upstream_port, delay)
    print(json.dumps({"port": proxy.port}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    proxy.close()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), float(sys.argv[2]))
