"""A small, fast, read-only S3 server over files on disk, for benchmarks.

    python bench/s3_server.py ROOT        # prints {"port": N}, serves until stdin closes

`ROOT/<bucket>/<key>` is object `<key>` of bucket `<bucket>`. It answers what
readers of a Litestream replica send, path-style: GetObject (whole, or one
`Range: bytes=a-b | a- | -n`, with `?x-id=GetObject` as the Go SDK adds it),
HeadObject, and ListObjectsV2 (prefix, start-after, continuation-token,
max-keys, encoding-type=url), with S3's error documents (NoSuchBucket,
NoSuchKey, InvalidRange). Signatures are not checked.

Why: moto spends ~5-6 ms of CPU per request on this machine, on the same two
cores as the client, so a figure such as "open 500 L0 files" measured moto
as much as the client. This server is an asyncio protocol with a hand-rolled
HTTP/1.1 parser and a sorted key index made once at start (the objects are
static for a benchmark run), ~0.1 ms of CPU a request. tests/test_bench_s3_server.py
checks that it answers like moto for the same objects.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape

log = logging.getLogger("lsvfs.bench.s3_server")

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_KEYS = 1000


@dataclass(frozen=True)
class Obj:
    key: str
    path: str
    size: int
    mtime: float
    etag: str


class Store:
    """Every bucket's objects, sorted by key, read from ROOT once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.buckets: dict[str, tuple[list[str], dict[str, Obj]]] = {}
        for bucket in sorted(p for p in root.iterdir() if p.is_dir()):
            objs: dict[str, Obj] = {}
            for dirpath, _, files in os.walk(bucket):
                for name in files:
                    path = os.path.join(dirpath, name)
                    st = os.stat(path)
                    key = os.path.relpath(path, bucket).replace(os.sep, "/")
                    tag = hashlib.md5(f"{key}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
                    objs[key] = Obj(key, path, st.st_size, st.st_mtime, f'"{tag}"')
            self.buckets[bucket.name] = (sorted(objs), objs)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def read(self, obj: Obj, offset: int, length: int) -> bytes:
        fd = self._fds.get(obj.path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(obj.path)
                if fd is None:
                    fd = self._fds[obj.path] = os.open(obj.path, os.O_RDONLY)
        return os.pread(fd, length, offset)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _error(status: int, code: str, message: str, resource: str) -> tuple[int, dict[str, str], bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}</Message>'
            f"<Resource>{escape(resource)}</Resource><RequestId>0</RequestId></Error>").encode()
    return status, {"Content-Type": "application/xml"}, body


_REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            416: "Requested Range Not Satisfiable"}


class S3App:
    """Requests to responses: (method, target, headers) -> (status, headers, body)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def handle(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        bucket, _, key = path.lstrip("/").partition("/")
        if method not in ("GET", "HEAD"):
            return _error(405, "MethodNotAllowed", "this server is read-only", path)
        found = self.store.buckets.get(bucket)
        if found is None:
            return _error(404, "NoSuchBucket", "The specified bucket does not exist", bucket)
        if not key:
            if query.get("list-type") != "2":
                return _error(400, "InvalidArgument", "only ListObjectsV2 (list-type=2) is served", bucket)
            return self.list_v2(bucket, found, query)
        obj = found[1].get(key)
        if obj is None:
            return _error(404, "NoSuchKey", "The specified key does not exist.", key)
        return self.get(obj, headers.get("range"), method == "HEAD")

    def get(self, obj: Obj, range_: str | None, head: bool) -> tuple[int, dict[str, str], bytes]:
        out = {"Content-Type": "application/octet-stream", "ETag": obj.etag, "Accept-Ranges": "bytes",
               "Last-Modified": formatdate(obj.mtime, usegmt=True)}
        first, last, status = 0, obj.size - 1, 200
        if range_ and range_.startswith("bytes=") and "," not in range_:
            lo, _, hi = range_[6:].strip().partition("-")
            try:
                if lo:
                    first = int(lo)
                    last = min(int(hi), obj.size - 1) if hi else obj.size - 1
                elif hi:
                    first = max(0, obj.size - int(hi))
                status = 206
            except ValueError:
                first, last, status = 0, obj.size - 1, 200  # unparsable: S3 serves the whole object
            if status == 206 and (first >= obj.size or (lo and hi and int(hi) < first)):
                err = _error(416, "InvalidRange", "The requested range is not satisfiable", obj.key)
                err[1]["Content-Range"] = f"bytes */{obj.size}"
                return err
            if status == 206:
                out["Content-Range"] = f"bytes {first}-{last}/{obj.size}"
        length = max(0, last - first + 1)
        out["Content-Length"] = str(length)
        if head:
            return status, out, b""
        return status, out, self.store.read(obj, first, length)

    def list_v2(self, bucket: str, found: tuple[list[str], dict[str, Obj]],
                query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        keys, objs = found
        prefix = query.get("prefix", "")
        start_after = query.get("start-after", "")
        token = query.get("continuation-token")
        url = query.get("encoding-type") == "url"
        try:
            max_keys = min(MAX_KEYS, int(query.get("max-keys", MAX_KEYS)))
        except ValueError:
            return _error(400, "InvalidArgument", "max-keys must be an integer", bucket)
        after = start_after
        if token is not None:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode()
            except (ValueError, UnicodeDecodeError):
                return _error(400, "InvalidArgument", "The continuation token provided is incorrect", bucket)
        i = bisect.bisect_right(keys, after) if after else 0
        i = max(i, bisect.bisect_left(keys, prefix))
        picked: list[Obj] = []
        while i < len(keys) and keys[i].startswith(prefix) and len(picked) < max_keys:
            picked.append(objs[keys[i]])
            i += 1
        truncated = i < len(keys) and keys[i].startswith(prefix) and bool(picked)

        def enc(text: str) -> str:
            return escape(quote(text, safe="/~") if url else text)

        parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{NS}"><Name>{escape(bucket)}</Name>'
                 f"<Prefix>{enc(prefix)}</Prefix><MaxKeys>{max_keys}</MaxKeys><KeyCount>{len(picked)}</KeyCount>"
                 f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if url:
            parts.append("<EncodingType>url</EncodingType>")
        if start_after:
            parts.append(f"<StartAfter>{enc(start_after)}</StartAfter>")
        if token is not None:
            parts.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
        for o in picked:
            parts.append(f"<Contents><Key>{enc(o.key)}</Key><LastModified>{_iso(o.mtime)}</LastModified>"
                         f"<ETag>{escape(o.etag)}</ETag><Size>{o.size}</Size><StorageClass>STANDARD</StorageClass>"
                         "</Contents>")
        if truncated:
            nxt = base64.urlsafe_b64encode(picked[-1].key.encode()).decode()
            parts.append(f"<NextContinuationToken>{nxt}</NextContinuationToken>")
        parts.append("</ListBucketResult>")
        return 200, {"Content-Type": "application/xml"}, "".join(parts).encode()


class HTTPProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining; request bodies (none expected) are skipped."""

    def __init__(self, app: S3App) -> None:
        self.app = app
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            lines = head.split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self.transport.close()
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            skip = int(headers.get("content-length", "0") or 0)
            if len(rest) < skip:
                return
            self.buf = rest[skip:]
            status, out, body = self.app.handle(method, target, headers)
            close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            out.setdefault("Content-Length", str(len(body)))
            out["Server"] = "lsvfs-bench-s3"
            out["x-amz-request-id"] = "0"
            if close:
                out["Connection"] = "close"
            lines_out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
            lines_out += [f"{k}: {v}" for k, v in out.items()]
            self.transport.write(("\r\n".join(lines_out) + "\r\n\r\n").encode("latin-1") +
                                 (body if method != "HEAD" else b""))
            if close:
                self.transport.close()
                return


class S3Server:
    """The server on 127.0.0.1 on an asyncio loop in a daemon thread (in process); `close()` stops it."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.app = S3App(Store(Path(root)))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-s3", daemon=True)
        self._thread.start()

        async def start() -> asyncio.base_events.Server:
            return await self._loop.create_server(lambda: HTTPProtocol(self.app), "127.0.0.1", port)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def server_process(root: Path) -> object:
    """The server in a process of its own (this file as a script), so its CPU is not the client's:
    a tests/servers.ChildProcess with `.port` and `.stop()`."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from servers import ChildProcess

    return ChildProcess([sys.executable, __file__, str(root)], "bench S3 server")


def _serve(root: str) -> None:
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    server = S3Server(Path(root))
    print(json.dumps({"port": server.port, "endpoint": server.endpoint}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    server.close()


if __name__ == "__main__":
    _serve(sys.argv[1])
