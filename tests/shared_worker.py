"""A reader process for tests/test_shared.py: opens a replica with shared_dir and
checks the bank invariant in every read transaction until told to stop.

    python tests/shared_worker.py URL SHARED_DIR CONTROL_DIR NAME [HANG]

It writes CONTROL_DIR/NAME.ready once open, reads until CONTROL_DIR/stop
exists (holding the primary's final TXID in hex), waits to reach that TXID,
then writes CONTROL_DIR/NAME.json: reads, violations, the final rows, and its
`shared` stats; it closes once CONTROL_DIR/release exists. HANG (`download` or `rename`) makes this process, when it
leads, write CONTROL_DIR/NAME.hung and sleep at that point of its next file
after open; `pages` there, after it wrote some pages of the shared page file:
the test SIGKILLs it there. With hydration (LSVFS_HYDRATION=1) it also waits
for the shared page file to hold the final state and reports what a full
scan on a fresh connection took from the cache and the mirror (`scan_reads`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import lsvfs
from lsvfs import core, registry
from lsvfs.shared.mirror import Mirror

TOTAL = 100 * 1000
POLL = 0.2
MAX_SECONDS = 120.0


def row(conn: Any, sql: str) -> Any:
    """The one row `sql` returns."""
    r = conn.execute(sql).fetchone()
    assert r is not None, sql
    return r


def one(conn: Any, sql: str) -> Any:
    """The one value `sql` returns."""
    return row(conn, sql)[0]


def _hang_at(point: str, control: Path, name: str) -> None:
    """Patch the mirror so the first file written after open stops at `point`."""
    armed = {"on": False}
    install, publish = Mirror.install, Mirror.publish

    def stop_here(what: str) -> None:
        if armed["on"] and point == what:
            (control / f"{name}.hung").write_text(str(os.getpid()))
            time.sleep(MAX_SECONDS)

    def hung_install(self: Mirror, path: Path, data: bytes, modified: Any) -> None:
        stop_here("download")  # the bytes arrived; nothing written yet
        install(self, path, data, modified)

    def hung_publish(self: Mirror, tmp: Path, path: Path) -> None:
        stop_here("rename")  # the temp file is written and fsynced, not renamed
        publish(self, tmp, path)

    fill = core.fill_shared_pages

    def hung_fill(*args: Any, **kwargs: Any) -> None:
        fill(*args, **kwargs)
        stop_here("pages")  # one read's pages written to the page file, the rest of the step not

    Mirror.install = hung_install  # type: ignore[method-assign]
    Mirror.publish = hung_publish  # type: ignore[method-assign]
    core.fill_shared_pages = hung_fill
    _ARMS.append(armed)


_ARMS: list[dict[str, bool]] = []


def reads_outside_shared_pages(stats: dict[str, Any]) -> int:
    """Pages read from anywhere but the shared page file: the cache (hits and
    misses) and the mirror's files."""
    return int(stats["cache"]["hits"] + stats["cache"]["misses"] + stats["storage"]["local_read"]["requests"])


def main(url: str, shared_dir: str, control_dir: str, name: str, hang: str = "") -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"{name} %(asctime)s %(name)s %(levelname)s %(message)s")
    control = Path(control_dir)
    if hang:
        _hang_at(hang, control, name)
    conn = lsvfs.connect(url, shared_dir=shared_dir, poll_interval=POLL)
    for armed in _ARMS:
        armed["on"] = True
    (control / f"{name}.ready").write_text(str(os.getpid()))
    reads = 0
    bad: list[str] = []
    txids: set[int] = set()
    deadline = time.monotonic() + MAX_SECONDS
    while not (control / "stop").exists() and time.monotonic() < deadline:
        conn.execute("BEGIN")  # deferred: the snapshot is pinned by the first read
        total, n = row(conn, "SELECT sum(balance), count(*) FROM bank")
        t1 = int(one(conn, "PRAGMA litestream_txid"), 16)
        time.sleep(0.005)  # let the leader and the poller move on meanwhile
        again = one(conn, "SELECT sum(balance) FROM bank")
        t2 = int(one(conn, "PRAGMA litestream_txid"), 16)
        conn.execute("COMMIT")
        total = total if again == total else f"{total} then {again}"
        reads += 1
        txids.add(t1)
        if total != TOTAL or n != 100 or t1 != t2:
            bad.append(f"TXID {t1:x}/{t2:x}: total {total}, {n} accounts")
        time.sleep(0.01)
    final = int((control / "stop").read_text() or "0", 16) if (control / "stop").exists() else 0
    while time.monotonic() < deadline:
        if int(one(conn, "PRAGMA litestream_txid"), 16) >= final:
            break
        time.sleep(0.05)
    rows = conn.execute("SELECT id, balance FROM bank ORDER BY id").fetchall()
    rep = next(iter(registry.open_replicas().values()))
    scan_reads = None
    if rep.stats()["hydration"] is not None:
        while rep.stats()["hydration"]["progress"] < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = reads_outside_shared_pages(rep.stats())
        fresh = lsvfs.connect(url, shared_dir=shared_dir, poll_interval=POLL)  # an empty SQLite page cache
        assert fresh.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert row(fresh, "SELECT sum(balance) FROM bank")[0] == TOTAL
        fresh.close()
        scan_reads = reads_outside_shared_pages(rep.stats()) - before
    stats = rep.stats()
    lag = float(one(conn, "PRAGMA litestream_lag"))
    result = {"pid": os.getpid(), "reads": reads, "bad": bad, "txids": len(txids), "rows": rows,
              "txid": f"{int(one(conn, 'PRAGMA litestream_txid'), 16):016x}",
              "shared": stats["shared"], "storage": stats["storage"], "lag": lag,
              "hydration": stats["hydration"], "scan_reads": scan_reads}
    tmp = control / f".{name}.json.tmp"
    tmp.write_text(json.dumps(result))
    tmp.rename(control / f"{name}.json")
    # Stay open until every worker has reported: who leads is then still who led.
    while not (control / "release").exists() and time.monotonic() < deadline + MAX_SECONDS:
        time.sleep(0.05)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
