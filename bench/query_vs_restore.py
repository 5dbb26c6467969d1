"""Issue 19: `lsvfs query s3://…` from a shell against `litestream restore` + `sqlite3` on the same replica.

    python bench/query_vs_restore.py REPLICA_DIR [--rounds 5] [--rtt-ms 20] [--sql SQL]

REPLICA_DIR is a directory replica (`<dir>/ltx/<level>/…`, e.g. a bench replica's
`replica/` under LSVFS_BENCH_DIR). Its files are laid out in the S3 layout, served
by bench/s3_server.py behind a latency proxy (both in processes of their own),
and each round times, as a shell would see them (wall, and the children's CPU):
`lsvfs query URL SQL`, and `litestream restore -o DB URL` followed by `sqlite3 DB SQL`.
The two must print the same rows. Rounds alternate, on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from latency_proxy import proxy_process  # noqa: E402
from s3_server import server_process  # noqa: E402

from lsvfs.demo import find_litestream  # noqa: E402
from lsvfs.storage.base import LAYOUTS, level_dir  # noqa: E402


def timed(cmds: list[list[str]], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds and CPU seconds of running `cmds` one after another, and the last one's output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = ""
    for cmd in cmds:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed: {p.stderr[-2000:]}")
        out = p.stdout
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("replica_dir", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--sql", default="SELECT count(*), max(id) FROM items")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "LITESTREAM_", "LSVFS_")) and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true")
    lsvfs_bin = shutil.which("lsvfs") or "lsvfs"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "s3"
        for level_path in sorted((args.replica_dir / "ltx").iterdir()):
            for f in level_path.glob("*.ltx"):
                dest = root / "bench" / (level_dir("db", int(level_path.name), LAYOUTS["s3"]) + f.name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
        server = server_process(root)
        proxy = proxy_process(server.port, args.rtt_ms / 2000)  # type: ignore[attr-defined]
        url = (f"s3://bench/db?endpoint=http://127.0.0.1:{proxy.port}&region=us-east-1"  # type: ignore[attr-defined]
               "&force-path-style=true")
        results: dict[str, list[tuple[float, float]]] = {"lsvfs query": [], "litestream restore + sqlite3": []}
        try:
            for i in range(args.rounds + 1):  # round 0 warms the OS cache; not kept
                wall, cpu, a = timed([[lsvfs_bin, "query", "--csv", url, args.sql]], env)
                if i:
                    results["lsvfs query"].append((wall, cpu))
                db = Path(tmp) / f"restored-{i}.db"
                wall, cpu, b = timed([[find_litestream(), "restore", "-o", str(db), url],
                                      ["sqlite3", "-csv", str(db), args.sql]], env)
                if i:
                    results["litestream restore + sqlite3"].append((wall, cpu))
                a_rows = [line for line in a.splitlines() if line and not line.startswith("count")]
                assert a_rows == b.splitlines(), (a, b)
        finally:
            proxy.stop()  # type: ignore[attr-defined]
            server.stop()  # type: ignore[attr-defined]
    print(f"\nmedians of {args.rounds} rounds, {args.rtt_ms:g} ms RTT, `{args.sql}`\n")
    print("| command | wall s | CPU s |\n|---|---|---|")
    for name, rs in results.items():
        print(f"| {name} | {statistics.median(w for w, _ in rs):.3f} | {statistics.median(c for _, c in rs):.3f} |")


if __name__ == "__main__":
    main()
