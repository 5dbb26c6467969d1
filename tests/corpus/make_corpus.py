"""Regenerate the LTX corpus with the real litestream binary (0.5.17).

Not run by the tests: the committed .ltx files are the corpus. Run
`python tests/corpus/make_corpus.py OUTDIR` to make fresh ones; it writes
a WAL database per page size (512, 4096, 65536), replicates it to a
directory replica for a few seconds and prints the LTX files written.
Files are named <pagesize>-L<level>-<min>-<max>.ltx when copied here.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time

import apsw


def make(base: str, page_size: int) -> list[str]:
    d = os.path.join(base, f"p{page_size}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    db = os.path.join(d, "p.db")
    con = apsw.Connection(db)
    # apsw's execute is lazy: list() runs every statement
    list(con.execute(f"PRAGMA page_size={page_size}"))
    list(con.execute("PRAGMA journal_mode=WAL"))
    list(con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b BLOB)"))
    cfg = os.path.join(d, "cfg.yml")
    with open(cfg, "w") as f:
        f.write(f"dbs:\n  - path: {db}\n    replica:\n      url: file://{d}/rep\n      sync-interval: 100ms\n")
    proc = subprocess.Popen(["litestream", "replicate", "-config", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        rnd = random.Random(page_size)
        nrows = {512: 60, 4096: 80, 65536: 20}[page_size]
        for r in range(3):
            with con:
                for i in range(nrows):
                    if i % 3 == 0:
                        blob = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 200)))
                    else:
                        blob = b"x" * rnd.randint(0, 100)
                    text = f"row {r} {i} " + "hello world " * rnd.randint(0, 8)
                    list(con.execute("INSERT INTO t(a,b) VALUES(?,?)", (text, blob)))
            time.sleep(0.5)
        list(con.execute("UPDATE t SET a = a || '!' WHERE id % 7 = 0"))
        time.sleep(1.2)
    finally:
        proc.terminate()
        proc.wait()
        con.close()
    found = []
    for root, _, files in os.walk(os.path.join(d, "rep")):
        found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".ltx")]
    return found


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lsvfs-corpus"
    for ps in (512, 4096, 65536):
        for path in make(out, ps):
            print(ps, path, os.path.getsize(path))
