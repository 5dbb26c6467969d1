"""A TCP proxy on 127.0.0.1 that can hold answers: a storage call in flight, on demand.

Every connection is forwarded both ways to 127.0.0.1:`upstream_port`. While
`hold()` is on, what the server sends is read from it and kept, not passed on:
the request reached the server and its answer exists, but the client waits
for it as it would for a stalled server or network. `release()` passes every
kept byte on, in order, and stops holding. A client that drops its connection
(or shuts its socket down) ends that connection on both sides, whatever is
kept. Runs an asyncio loop on a daemon thread; `close()` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

CHUNK = 256 * 1024


class HoldingProxy:
    """Listen on 127.0.0.1:<port>, forward to 127.0.0.1:`upstream_port`, answers held on demand."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="holding-proxy", daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._held = 0
        self._connections = 0
        self._open: asyncio.Event = self._call(self._make_gate())
        server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self._server: asyncio.base_events.Server = server
        self.port = int(server.sockets[0].getsockname()[1])

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    @staticmethod
    async def _make_gate() -> asyncio.Event:
        gate = asyncio.Event()
        gate.set()
        return gate

    @property
    def held(self) -> int:
        """Connections with an answer kept from their client now."""
        with self._lock:
            return self._held

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        with self._lock:
            return self._connections

    def hold(self) -> None:
        """From now on, keep what servers send (answers already passed on stay passed)."""
        self._call(self._set(False))

    def release(self) -> None:
        """Pass on everything kept, and stop holding."""
        self._call(self._set(True))

    async def _set(self, open_: bool) -> None:
        if open_:
            self._open.set()
        else:
            self._open.clear()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # close() ends every connection: no error
            await self._serve(c_reader, c_writer)

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            c_writer.close()
            return
        with self._lock:
            self._connections += 1
        answers = asyncio.ensure_future(self._answers(u_reader, c_writer))
        try:
            with contextlib.suppress(OSError):
                while data := await c_reader.read(CHUNK):
                    u_writer.write(data)
                    await u_writer.drain()
        finally:  # the client is gone: so is the connection, kept answers and all
            answers.cancel()
            with contextlib.suppress(BaseException):
                await answers
            for w in (c_writer, u_writer):
                w.close()
            with self._lock:
                self._connections -= 1

    async def _answers(self, u_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        kept: list[bytes] = []
        holding = False
        try:
            while data := await u_reader.read(CHUNK):
                if not self._open.is_set():
                    kept.append(data)
                    if not holding:
                        holding = True
                        with self._lock:
                            self._held += 1
                    await self._open.wait()
                    data, kept = b"".join(kept), []
                c_writer.write(data)
                await c_writer.drain()
                if holding:
                    holding = False
                    with self._lock:
                        self._held -= 1
        finally:
            if holding:
                with self._lock:
                    self._held -= 1

    def close(self) -> None:
        """Stop listening, end every connection, stop the loop."""

        async def stop() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
