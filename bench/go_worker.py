"""A query worker process: one SQLite "system" served over JSON lines on stdin/stdout.

The Go VFS (`litestream-vfs`) reads LITESTREAM_REPLICA_URL from the
environment the process *started* with, so it must live in a process started
with that variable: this one. The same worker can also serve lsvfs or a
plain local file, which gives every system the same harness for memory (RSS)
measurements.

    python go_worker.py --system go     # LITESTREAM_REPLICA_URL in the environment
    python go_worker.py --system lsvfs --target file:///path/to/replica
    python go_worker.py --system local  --target /path/to/local.db

Requests (one JSON object per line) and replies:

    {"op": "open"}                                   -> {"rss_kb": ...}
    {"op": "batch", "sql": Q, "params": [P, ...]}    -> {"elapsed": s, "checksum": h, "rows": n}
    {"op": "cold",  "sql": Q, "params": [P, ...]}    -> same; a new connection per P
    {"op": "open_extra", "n": N, "sql": Q}           -> {"open": N}  (extra connections, kept)
    {"op": "batch_extra", "sql": Q}                  -> {"open": N}  (Q once on each extra connection)
    {"op": "close_extra"}                            -> {"open": 0}
    {"op": "threads", "sql": Q, "params": [[P, ...], ...], "check": bool}
                                                     -> {"elapsed": s, "queries": n, "rows": n, "checksum": h|null}
                                                        (one thread and connection per parameter list; kept)
    {"op": "rss"}                                    -> {"rss_kb": ..., "baseline_kb": ...}
    {"op": "quit"}

`elapsed` is measured inside the worker around the queries only (not the
checksum, not the IPC). Errors come back as {"error": "..."}.

`run_batch` and `checksum` are imported by the benchmarks so that in-process
systems run exactly the same code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import apsw

log = logging.getLogger("lsvfs.bench.worker")

Row = tuple[Any, ...]
Params = Sequence[Any]
GO_VFS = "litestream"


def checksum(rows: Sequence[Row]) -> str:
    """A digest of result rows that is identical across processes and systems."""
    h = hashlib.blake2b(digest_size=16)
    for row in rows:
        for v in row:
            if isinstance(v, bytes):
                h.update(b"b%d:" % len(v))
                h.update(v)
            else:
                h.update(f"{type(v).__name__}:{v!r};".encode())
        h.update(b"\n")
    return h.hexdigest()


def run_batch(conn: apsw.Connection, sql: str, params: Sequence[Params]) -> dict[str, Any]:
    """Run `sql` once per parameter set (each its own autocommit transaction)."""
    rows: list[Row] = []
    start = time.perf_counter()
    for p in params:
        rows.extend(conn.execute(sql, p).fetchall())
    elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "checksum": checksum(rows), "rows": len(rows)}


def run_cold(open_conn: Callable[[], apsw.Connection], sql: str, params: Sequence[Params]) -> dict[str, Any]:
    """For each parameter set: open a new connection, run `sql`, close it."""
    rows: list[Row] = []
    start = time.perf_counter()
    for p in params:
        conn = open_conn()
        try:
            rows.extend(conn.execute(sql, p).fetchall())
        finally:
            conn.close()
    elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "checksum": checksum(rows), "rows": len(rows)}


def run_threads(conns: Sequence[Any], sql: str, params: Sequence[Sequence[Params]],
                check: bool = True) -> dict[str, Any]:
    """Thread i runs `sql` once per parameter set of params[i] on conns[i]
    (apsw or sqlite3 connections, each used by one thread only).

    The threads start together at a barrier; `elapsed` runs from the barrier
    to the last thread's end (thread start-up is not in it). The checksum
    (of every thread's rows, in thread order) is computed only if `check`.
    """
    n = len(params)
    if len(conns) < n:
        raise ValueError(f"{n} threads but {len(conns)} connections")
    barrier = threading.Barrier(n + 1)
    ends = [0.0] * n
    rows: list[list[Row]] = [[] for _ in range(n)]
    counts = [0] * n
    errors: list[BaseException] = []

    def work(i: int) -> None:
        conn, out, keep = conns[i], rows[i], check
        count = 0
        try:
            barrier.wait(60)
            for p in params[i]:
                r = conn.execute(sql, p).fetchall()
                count += len(r)
                if keep:
                    out.extend(r)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)
            barrier.abort()
        finally:
            ends[i] = time.perf_counter()
            counts[i] = count

    threads = [threading.Thread(target=work, args=(i,), name=f"bench-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    try:
        barrier.wait(60)
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {"elapsed": max(ends) - start, "queries": sum(len(p) for p in params), "rows": sum(counts),
            "checksum": checksum([r for rs in rows for r in rs]) if check else None}


def rss_kb(pid: int | str = "self") -> int:
    """VmRSS of a process in KiB (from /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def go_uri(options: Mapping[str, Any]) -> str:
    """The Go VFS main-db URI; `options` (cache_size, poll_interval) become URI parameters."""
    extra = "".join(f"&{k}={v}" for k, v in options.items())
    return f"file:db?vfs={GO_VFS}{extra}"


def load_go_vfs() -> None:
    """Load the litestream-vfs extension, which registers the `litestream` VFS process-wide."""
    import litestream_vfs

    mem = apsw.Connection(":memory:")
    mem.enable_load_extension(True)
    mem.load_extension(litestream_vfs.loadable_path())
    mem.close()


class Worker:
    """Owns the connections of one system in this process."""

    def __init__(self, system: str, target: str | None, options: dict[str, Any]) -> None:
        self.system = system
        self.target = target
        self.options = options
        self.conn: apsw.Connection | None = None
        self.extra: list[apsw.Connection] = []
        self.thread_conns: list[apsw.Connection] = []
        if system == "go":
            load_go_vfs()
        elif system == "lsvfs":
            import lsvfs  # noqa: F401 - imported before the baseline RSS is taken
        self.baseline_kb = rss_kb()

    def new_conn(self) -> apsw.Connection:
        flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
        if self.system == "go":
            return apsw.Connection(go_uri(self.options), flags=flags, vfs=GO_VFS)
        if self.system == "lsvfs":
            import lsvfs

            return lsvfs.connect(self.target, **self.options)
        assert self.target
        return apsw.Connection(self.target, flags=apsw.SQLITE_OPEN_READONLY)

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op == "open":
            if self.conn is None:
                self.conn = self.new_conn()
            return {"rss_kb": rss_kb()}
        if op == "batch":
            if self.conn is None:
                self.conn = self.new_conn()
            return run_batch(self.conn, req["sql"], req["params"])
        if op == "cold":
            return run_cold(self.new_conn, req["sql"], req["params"])
        if op == "open_extra":
            for _ in range(int(req["n"])):
                c = self.new_conn()
                c.execute(req["sql"]).fetchall()
                self.extra.append(c)
            return {"open": len(self.extra)}
        if op == "batch_extra":
            for c in self.extra:
                c.execute(req["sql"]).fetchall()
            return {"open": len(self.extra)}
        if op == "close_extra":
            for c in self.extra:
                c.close()
            self.extra.clear()
            return {"open": 0}
        if op == "threads":
            while len(self.thread_conns) < len(req["params"]):
                self.thread_conns.append(self.new_conn())
            return run_threads(self.thread_conns, req["sql"], req["params"], bool(req.get("check", True)))
        if op == "rss":
            return {"rss_kb": rss_kb(), "baseline_kb": self.baseline_kb}
        raise ValueError(f"unknown op {op!r}")

    def close(self) -> None:
        for c in [*self.extra, *self.thread_conns, *([self.conn] if self.conn else [])]:
            c.close()


def serve(worker: Worker, inp: IO[str], out: IO[str]) -> None:
    for line in inp:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "quit":
            break
        try:
            reply = worker.handle(req)
        except Exception as exc:  # noqa: BLE001 - reported to the client
            log.exception("request %s failed", req.get("op"))
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    worker.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", choices=("go", "lsvfs", "local"), required=True)
    ap.add_argument("--target", help="replica URL (lsvfs) or database path (local)")
    ap.add_argument("--options", default="{}", help="JSON object of connection options")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="worker %(process)d %(levelname)s %(message)s")
    # The protocol owns the real stdout; anything the Go runtime or SQLite
    # prints goes to stderr instead of corrupting it.
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    worker = Worker(args.system, args.target, json.loads(args.options))
    proto.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    proto.flush()
    serve(worker, sys.stdin, proto)
    return 0


class WorkerError(RuntimeError):
    """The worker replied with an error, died, or timed out."""


class WorkerClient:
    """Start a worker and talk to it: `request(op, **fields)` returns the reply dict."""

    def __init__(self, system: str, target: str | None = None, *, env: Mapping[str, str] | None = None,
                 options: Mapping[str, Any] | None = None, stderr_path: str | os.PathLike[str] | None = None,
                 timeout: float = 300.0) -> None:
        self.system = system
        self.timeout = timeout
        cmd = [sys.executable, str(Path(__file__).resolve()), "--system", system,
               "--options", json.dumps(dict(options or {}))]
        if target is not None:
            cmd += ["--target", target]
        self._stderr = open(stderr_path, "ab") if stderr_path else None  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr if self._stderr else subprocess.DEVNULL,
                                     env=dict(env) if env is not None else None, text=True, bufsize=1)
        hello = self._read()
        self.pid = int(hello["pid"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            raise WorkerError(f"{self.system} worker: no reply within {self.timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(f"{self.system} worker exited (status {self.proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise WorkerError(f"{self.system} worker: {reply['error']}")
        return reply

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def rss_kb(self) -> int:
        """The worker's VmRSS, read from /proc (no request needed)."""
        return rss_kb(self.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
