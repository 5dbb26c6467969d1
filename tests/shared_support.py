"""Helpers of tests/test_shared.py: the bank, reader processes, checks of the mirror,
moto's request log."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from replication import ReplicatedPrimary, wait_until

from lsvfs import ltx
from lsvfs.plan import list_all
from lsvfs.shared.mirror import FULL_SCAN_EVERY
from lsvfs.storage.base import LEVELS
from lsvfs.storage.file import FileStorage

WORKER = Path(__file__).with_name("shared_worker.py")
ACCOUNTS = 100
POLL = 0.2  # the workers' poll_interval


def bank(p: ReplicatedPrimary) -> None:
    p.execute("CREATE TABLE bank(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
    p.executemany("INSERT INTO bank VALUES (?, 1000)", [(i,) for i in range(ACCOUNTS)])


def transfer(p: ReplicatedPrimary, rng: random.Random, n: int = 5) -> None:
    """`n` transfers in one transaction: the total never changes."""
    with p.transaction() as c:
        for _ in range(n):
            a, b = rng.sample(range(ACCOUNTS), 2)
            amount = rng.randint(1, 50)
            c.execute("UPDATE bank SET balance = balance - ? WHERE id = ?", (amount, a))
            c.execute("UPDATE bank SET balance = balance + ? WHERE id = ?", (amount, b))


class Workers:
    """Reader processes on one shared_dir, killed at teardown whatever happens."""

    def __init__(self, url: str, shared: Path, control: Path) -> None:
        self.url, self.shared, self.control = url, shared, control
        control.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, hang: str = "", env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A worker; `env` adds to its environment (LSVFS_HYDRATION=1, say)."""
        log = open(self.control / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, str(WORKER), self.url, str(self.shared), str(self.control), name,
                                 hang], stdout=log, stderr=subprocess.STDOUT, cwd=WORKER.parent.parent,
                                env={**os.environ, **(env or {})})
        log.close()
        self.procs[name] = proc
        wait_until(lambda: (self.control / f"{name}.ready").exists() or proc.poll() is not None, 60,
                   what=f"{name} open")
        assert proc.poll() is None, self.log(name)
        return proc

    def log(self, name: str) -> str:
        return (self.control / f"{name}.log").read_text(errors="replace")[-3000:]

    def finish(self, txid: int) -> dict[str, dict[str, Any]]:
        """Tell every live worker the final TXID; their results by name."""
        tmp = self.control / ".stop.tmp"  # whole or absent: a worker seeing it empty would take TXID 0
        tmp.write_text(f"{txid:016x}")
        tmp.rename(self.control / "stop")
        out: dict[str, dict[str, Any]] = {}
        live = {name: proc for name, proc in self.procs.items() if proc.returncode is None or proc.returncode >= 0}
        for name, proc in live.items():  # each reports while all are still open
            path = self.control / f"{name}.json"
            wait_until(lambda path=path, proc=proc: path.exists() or proc.poll() is not None, 90,
                       what=f"{name} reporting")
            assert path.exists(), self.log(name)
            out[name] = json.loads(path.read_text())
        (self.control / "release").write_text("")
        for name, proc in live.items():
            assert proc.wait(timeout=30) == 0, self.log(name)
        return out

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def status(shared: Path) -> dict[str, Any]:
    st: dict[str, Any] = json.loads((shared / "status.json").read_text())
    return st


def mirror_within(shared: Path, p: ReplicatedPrimary) -> bool:
    """Whether every file of the mirror is listed by the replica, as it is there."""
    theirs = {(f.level, f.min_txid, f.max_txid, f.size) for fs in p.replica_files().values() for f in fs}
    mine = FileStorage(shared)
    try:
        return {(f.level, f.min_txid, f.max_txid, f.size) for f in list_all(mine)} <= theirs
    finally:
        mine.close()


def check_mirror(shared: Path) -> int:
    """Every LTX file in the mirror is whole (its CRC-64 checks) and no temp file is left; how many."""
    st = FileStorage(shared)
    try:
        files = list_all(st)
        for f in files:
            data = st.read_all(f)
            ltx.check_name(f, ltx.Header.decode(data, f.name))
            ltx.decode(data, f.name, want_pages=False)
    finally:
        st.close()
    assert not [p for p in (shared / "ltx").rglob("*") if p.is_file() and not p.name.endswith(".ltx")]
    return len(files)


class ServerLog(logging.Handler):
    """Requests moto's server (in this process) answers for one bucket, counted from its request log."""

    def __init__(self, bucket: str) -> None:
        super().__init__(logging.INFO)
        self.bucket = bucket
        self.requests = 0

    def emit(self, record: logging.LogRecord) -> None:
        if f"/{self.bucket}" in record.getMessage():
            self.requests += 1


def quiet_requests_are_one_pollers(p: ReplicatedPrimary, seconds: float = 3.0) -> None:
    """While the primary is idle, the server sees one poller's requests (one
    LIST per poll interval, plus a listing of every level now and then), not four."""
    assert p.bucket is not None
    counter = ServerLog(p.bucket)
    server_log = logging.getLogger("werkzeug")
    old_level = server_log.level
    server_log.setLevel(logging.INFO)
    server_log.addHandler(counter)
    try:
        start = time.monotonic()
        time.sleep(seconds)
        polls = (time.monotonic() - start) / POLL
    finally:
        server_log.removeHandler(counter)
        server_log.setLevel(old_level)
    # One leader: a LIST of L0 a poll, and every FULL_SCAN_EVERY polls a listing
    # of each level (on S3, one LIST per level). Four pollers make four times that.
    per_poll = 1 + len(LEVELS) / FULL_SCAN_EVERY
    assert 0 < counter.requests <= per_poll * polls + len(LEVELS) + 3, (counter.requests, polls)
