"""Count the HTTP requests a client sends, from the raw bytes of its connections.

The remote benchmark compares lsvfs with the Go VFS, whose requests we cannot
hook from Python, so the counting happens on the wire: `LatencyProxy` hands
every client->server chunk of a connection to that connection's
`RequestParser`, which splits the byte stream into requests (keep-alive and
pipelined requests included, bodies skipped by Content-Length or chunked
encoding) and tallies each one in a shared `RequestCounts`.

S3 kinds: a GET whose query names `list-type` or `prefix` is a LIST
(ListObjectsV2 / ListObjects); any other GET is a GET (`GET_RANGE` counts the
ranged ones among them too); other methods count under their own name.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("lsvfs.bench.requests")

MAX_HEAD = 64 * 1024
"""A request head longer than this is not HTTP/1.x: counting stops on that connection."""


def classify(method: str, target: str) -> str:
    """The S3 kind of one request: LIST, GET or the method's name."""
    if method != "GET":
        return method
    keys = parse_qs(urlsplit(target).query, keep_blank_values=True)
    return "LIST" if "list-type" in keys or "prefix" in keys else "GET"


class RequestCounts:
    """Thread-safe tallies by kind; `snapshot()` and `diff()` give one run's share."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, kind: str, ranged: bool = False) -> None:
        with self._lock:
            self._counts[kind] += 1
            if ranged:
                self._counts[f"{kind}_RANGE"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @staticmethod
    def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
        """What was counted between two snapshots (kinds with zero left out)."""
        return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}

    def parser(self) -> RequestParser:
        """A parser for one new connection, counting into these tallies."""
        return RequestParser(self)


class RequestParser:
    """Incremental HTTP/1.x request splitter for one connection's client->server bytes.

    Fed chunks in order as they arrive (`feed`), so a request split across
    chunks, or several requests in one chunk, are both counted exactly once.
    """

    def __init__(self, counts: RequestCounts) -> None:
        self.counts = counts
        self._buf = bytearray()
        self._body_left = 0          # bytes of a Content-Length body (or of a chunk plus its CRLF) still to skip
        self._state = "head"         # head | body | chunk_size | chunk_data | trailer | broken

    def feed(self, data: bytes) -> None:
        if self._state == "broken" or not data:
            return
        self._buf += data
        while self._step():
            pass

    def _step(self) -> bool:
        """Consume what the buffer allows in the current state; False when it needs more bytes."""
        if self._state in ("body", "chunk_data"):
            n = min(self._body_left, len(self._buf))
            del self._buf[:n]
            self._body_left -= n
            if self._body_left:
                return False
            self._state = "head" if self._state == "body" else "chunk_size"
            return True
        if self._state == "head":
            while self._buf.startswith(b"\r\n"):  # tolerated between requests
                del self._buf[:2]
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    self._give_up("request head too long")
                return False
            head = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[:end + 4]
            self._request(head)
            return True
        line_end = self._buf.find(b"\r\n")
        if line_end < 0:
            if len(self._buf) > MAX_HEAD:
                self._give_up("chunk line too long")
            return False
        line = bytes(self._buf[:line_end]).decode("latin-1")
        del self._buf[:line_end + 2]
        if self._state == "chunk_size":
            try:
                size = int(line.split(";", 1)[0].strip(), 16)
            except ValueError:
                self._give_up(f"bad chunk size {line!r}")
                return False
            if size == 0:
                self._state = "trailer"
            else:
                self._state, self._body_left = "chunk_data", size + 2  # the data and its CRLF
            return True
        if not line:  # the empty line that ends the trailer section
            self._state = "head"
        return True

    def _request(self, head: str) -> None:
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._give_up(f"not a request line: {lines[0][:80]!r}")
            return
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.counts.add(classify(method, target), ranged="range" in headers)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = "chunk_size"
        elif int(headers.get("content-length", "0") or 0) > 0:
            self._state, self._body_left = "body", int(headers["content-length"])

    def _give_up(self, why: str) -> None:
        log.warning("request counting stopped on a connection: %s", why)
        self._state = "broken"
        self._buf.clear()
