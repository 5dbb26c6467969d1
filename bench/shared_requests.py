"""Storage requests and bytes for 1 and 4 reader processes, with and without shared_dir (issue 17).

    python bench/shared_requests.py [--seconds 10] [--mb 4] [--poll 0.25]

One S3 replica (moto, a real `litestream replicate`) behind the latency proxy
(5 ms each way), which counts the readers' requests on the wire (litestream
writes to moto directly, so only readers are counted). Each reader process:
open, full scan, then SECONDS of polling (poll_interval --poll) and point
lookups while the primary commits once a second. Bytes are what the
processes' storage clients downloaded (with shared_dir: the leader's).
Then the failover: three shared readers, the leader SIGKILLed, the time until
another process has published a good poll, in poll intervals.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

POLL = 0.25


def reader(url: str, shared_dir: str, seconds: float, ready: str) -> None:
    """One reader process: its numbers as one JSON line on stdout."""
    import lsvfs
    from lsvfs import registry

    options: dict[str, Any] = {"poll_interval": float(os.environ.get("SHARED_BENCH_POLL", POLL))}
    if shared_dir:
        options["shared_dir"] = shared_dir
    conn = lsvfs.connect(url, **options)
    conn.execute("SELECT count(*), sum(length(payload)) FROM t").fetchall()
    Path(ready).write_text(str(os.getpid()))
    rng = random.Random(os.getpid())
    lookups = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        conn.execute("SELECT payload FROM t WHERE id = ?", (rng.randint(1, 4000),)).fetchall()
        lookups += 1
        time.sleep(0.002)
    stats = next(iter(registry.open_replicas().values())).stats()
    shared = stats["shared"]
    counts = stats["storage"] if shared is None else (shared["remote"] or {})  # a follower's is None
    nbytes = sum(v["bytes"] for k, v in counts.items() if k != "local_read")
    requests = sum(v["requests"] for k, v in counts.items() if k != "local_read")
    # VmRSS now: ru_maxrss would carry the forking parent's peak across exec.
    status = Path("/proc/self/status").read_text().splitlines()
    rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    print(json.dumps({"pid": os.getpid(), "bytes": nbytes, "requests": requests, "lookups": lookups,
                      "leader": None if shared is None else shared["leader"], "rss_mib": round(rss, 1)}),
          flush=True)
    conn.close()


def run(url: str, n: int, shared_dir: str, seconds: float, work: Path) -> list[dict[str, Any]]:
    procs = []
    for i in range(n):
        ready = work / f"ready-{n}-{bool(shared_dir)}-{i}"
        procs.append((subprocess.Popen([sys.executable, __file__, "--reader", url, shared_dir, str(seconds),
                                        str(ready)], stdout=subprocess.PIPE, text=True), ready))
    try:
        out = []
        for proc, _ in procs:
            stdout, _ = proc.communicate(timeout=seconds + 120)
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()


def failover(url: str, work: Path) -> float:
    """Seconds from SIGKILL of the leader to another process's first good poll."""
    shared = work / "failover"
    readers = []
    try:
        for i in range(3):
            ready = work / f"ready-failover-{i}"
            readers.append(subprocess.Popen([sys.executable, __file__, "--reader", url, str(shared), "60",
                                             str(ready)], stdout=subprocess.DEVNULL))
            for _ in range(600):
                if ready.exists():
                    break
                time.sleep(0.1)
        leader = json.loads((shared / "status.json").read_text())["pid"]
        os.kill(leader, signal.SIGKILL)
        killed = time.time()
        for _ in range(600):
            status = json.loads((shared / "status.json").read_text())
            if status["pid"] != leader:
                return float(status["last_poll_ok"]) - killed
            time.sleep(0.01)
        raise RuntimeError("no follower took over within 6 s")
    finally:
        for proc in readers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def main() -> None:
    from latency_proxy import LatencyProxy
    from replication import TEST_ACCESS_KEY_ID, TEST_REGION, TEST_SECRET_ACCESS_KEY, MotoS3, ReplicatedPrimary, s3_url
    from request_count import RequestCounts

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--mb", type=int, default=4)
    ap.add_argument("--poll", type=float, default=POLL, help="the readers' poll_interval in seconds")
    args = ap.parse_args()
    os.environ["SHARED_BENCH_POLL"] = str(args.poll)
    os.environ.update(AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=TEST_SECRET_ACCESS_KEY,
                      AWS_DEFAULT_REGION=TEST_REGION, AWS_EC2_METADATA_DISABLED="true")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        moto = MotoS3().start()
        p = ReplicatedPrimary(work / "primary", storage="s3", s3=moto)
        counts = RequestCounts()
        proxy = LatencyProxy(int(moto.endpoint.rsplit(":", 1)[1]), 0.005, tap=lambda: counts.parser().feed)
        stop = threading.Event()
        try:
            p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB)")
            p.executemany("INSERT INTO t(payload) VALUES (randomblob(1000))", [()] * (args.mb * 1000))
            p.wait_replicated()
            assert p.bucket is not None
            url = s3_url(p.bucket, p.s3_path, f"http://127.0.0.1:{proxy.port}")

            def commits() -> None:
                while not stop.wait(1.0):
                    p.execute("UPDATE t SET payload = randomblob(1000) WHERE id = ?", (random.randint(1, 4000),))

            writer = threading.Thread(target=commits, daemon=True)
            writer.start()
            rows = []
            for shared in (False, True):
                for n in (1, 4):
                    before = counts.snapshot()
                    shared_dir = str(work / f"shared-{n}") if shared else ""
                    out = run(url, n, shared_dir, args.seconds, work)
                    wire = RequestCounts.diff(counts.snapshot(), before)
                    rows.append((n, shared, sum(v for k, v in wire.items() if not k.endswith("_RANGE")),
                                 wire, sum(r["bytes"] for r in out), sum(r["lookups"] for r in out),
                                 [r["rss_mib"] for r in out]))
            print("| readers | shared_dir | requests on the wire | kinds | bytes downloaded | lookups | RSS MiB |")
            print("|---|---|---|---|---|---|---|")
            for n, shared, total, wire, nbytes, lookups, rss in rows:
                print(f"| {n} | {'yes' if shared else 'no'} | {total} | {wire} | {nbytes} | {lookups} | {rss} |")
            took = failover(url, work)
            print(f"failover: {took:.2f} s from SIGKILL to the next leader's first good poll "
                  f"({took / args.poll:.1f} poll intervals of {args.poll:g} s)")
        finally:
            stop.set()
            proxy.close()
            p.close()
            moto.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--reader":
        reader(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
    else:
        main()
