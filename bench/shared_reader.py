"""One reader process of test_bench_shared.py (issue 17): its figures in CONTROL/NAME.json.

    python bench/shared_reader.py CONFIG_JSON

CONFIG_JSON: {"url", "shared_dir" ("" for none), "hydration" (optional), "poll", "mode", "control",
"name", and for modes "bench" and "local": "poll_seconds", "lookups", "rows"; "path" for "local"}.

- `bench`: open, full scan, POLL_SECONDS of polling (one small query each poll
  interval, so every read transaction sees what the poller found) while the
  primary commits (with hydration, until the shared page file holds the
  snapshot), then `CONTROL/NAME.polled`; wait for `CONTROL/go` (the
  barrier: its JSON names the primary's final TXID and `count(*), sum(v)`),
  then LOOKUPS point lookups (the burst), then VmRSS, and catch up to the final
  TXID and check the rows against the primary's. Storage requests and bytes are
  what this process's storage client made (with shared_dir, a follower has
  none: only the leader talks to storage), after the scan, the polling and at the end.
- `idle` (the failover benchmark): open and full scan only.
- `local` (the baseline): local SQLite (apsw) on the database file at PATH,
  read-only: open, full scan, `CONTROL/NAME.polled`, then the same burst.

Either way the process then writes CONTROL/NAME.json and stays open until its
stdin closes (or it is killed), so no leader leaves while others still measure.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import apsw

import lsvfs

SCAN_SQL = "SELECT count(*), sum(length(payload)) FROM t"
CHECK_SQL = "SELECT count(*), sum(v) FROM t"
LOOKUP_SQL = "SELECT v, payload FROM t WHERE id = ?"
GO_WAIT = 300.0
CATCH_UP_WAIT = 60.0
HYDRATED_WAIT = 120.0


def client_counts(url: str) -> dict[str, Any]:
    """Requests and bytes this process's storage client made, and whether it leads."""
    stats = lsvfs.open_replicas()[url].stats()
    shared = stats["shared"]
    counts = stats["storage"] if shared is None else (shared["remote"] or {})  # a follower's is None
    counts = {k: v for k, v in counts.items() if k != "local_read"}
    return {"requests": sum(v["requests"] for v in counts.values()),
            "bytes": sum(v["bytes"] for v in counts.values()),
            "leader": None if shared is None else shared["leader"],
            "remote_none": shared is not None and shared["remote"] is None}


def vm_rss() -> int:
    """VmRSS now, in bytes (ru_maxrss would carry the forking parent's peak across exec)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) * 1024


def txid(conn: Any) -> int:
    return int(conn.execute("PRAGMA litestream_txid").fetchall()[0][0], 16)


def lookup_ids(cfg: dict[str, Any], rng: random.Random) -> array[int]:
    """The burst's row ids, drawn before the barrier: drawn after it, a million
    draws per process would count in the span as lookups, and more so the more
    processes share the cores. An array, not a list: a list would add ~30 MiB
    to the RSS measured after the burst."""
    return array("q", (rng.randint(1, cfg["rows"]) for _ in range(cfg["lookups"])))


def burst(cfg: dict[str, Any], conn: Any, control: Path, out: dict[str, Any], ids: array[int]) -> Any:
    """Wait for the barrier (`CONTROL/go`), then the point lookups; the go file's JSON."""
    go = control / "go"
    deadline = time.monotonic() + GO_WAIT
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{cfg['name']}: no go file after {GO_WAIT:g}s")
        time.sleep(0.001)
    want = json.loads(go.read_text())
    start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the host
    for i in ids:
        conn.execute(LOOKUP_SQL, (i,)).fetchall()
    out.update(burst_start=start, burst_end=time.monotonic(), lookups=len(ids))
    return want


def bench(cfg: dict[str, Any], conn: Any, control: Path, out: dict[str, Any]) -> None:
    url, name = cfg["url"], cfg["name"]
    rng = random.Random(os.getpid())
    out["scanned"] = client_counts(url)
    end = time.monotonic() + cfg["poll_seconds"]
    while time.monotonic() < end:
        conn.execute(LOOKUP_SQL, (rng.randint(1, cfg["rows"]),)).fetchall()
        time.sleep(cfg["poll"])
    if cfg.get("hydration"):  # the burst reads the shared page file: wait until it holds the snapshot
        rep = lsvfs.open_replicas()[url]
        deadline = time.monotonic() + HYDRATED_WAIT
        while rep.stats()["hydration"]["progress"] < 100:
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: the shared page file is not complete after {HYDRATED_WAIT:g}s")
            time.sleep(0.05)
    out["polled"] = client_counts(url)
    ids = lookup_ids(cfg, rng)
    (control / f"{name}.polled").write_text(str(os.getpid()))
    want = burst(cfg, conn, control, out, ids)
    del ids
    out["rss_bytes"] = vm_rss()
    rep = lsvfs.open_replicas()[url]
    out["page_table_bytes"] = rep.current().table.memory
    out["cache_max_bytes"] = rep.stats()["cache"]["max_bytes"]
    deadline = time.monotonic() + CATCH_UP_WAIT
    while txid(conn) < want["txid"] and time.monotonic() < deadline:
        time.sleep(0.05)
    out["txid"] = txid(conn)
    out["rows"] = list(conn.execute(CHECK_SQL).fetchall()[0])
    out["final"] = client_counts(url)


def main(cfg: dict[str, Any]) -> None:
    control = Path(cfg["control"])
    options: dict[str, Any] = {"poll_interval": cfg["poll"]}
    if cfg["shared_dir"]:
        options["shared_dir"] = cfg["shared_dir"]
    if cfg.get("hydration"):
        options["hydration"] = True
    started = time.monotonic()
    if cfg["mode"] == "local":
        conn = apsw.Connection(cfg["path"], flags=apsw.SQLITE_OPEN_READONLY)
    else:
        conn = lsvfs.connect(cfg["url"], **options)
    scan = conn.execute(SCAN_SQL).fetchall()[0]
    out: dict[str, Any] = {"pid": os.getpid(), "name": cfg["name"], "open_scan_s": time.monotonic() - started,
                           "scan": list(scan)}
    try:
        if cfg["mode"] == "bench":
            bench(cfg, conn, control, out)
        elif cfg["mode"] == "local":
            ids = lookup_ids(cfg, random.Random(os.getpid()))
            (control / f"{cfg['name']}.polled").write_text(str(os.getpid()))
            burst(cfg, conn, control, out, ids)
        tmp = control / f".{cfg['name']}.tmp"
        tmp.write_text(json.dumps(out))
        os.replace(tmp, control / f"{cfg['name']}.json")
        sys.stdin.read()  # until the parent has every reader's figures: a leader closing sooner hands over mid-run
    finally:
        conn.close()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
