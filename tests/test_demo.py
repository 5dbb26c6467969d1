"""`lsvfs demo`: the README's first command, run as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from cli_support import ctrl_c_works


def demo_dirs() -> set[str]:
    return {d for d in os.listdir(tempfile.gettempdir()) if d.startswith("lsvfs-demo-")}


def parse_rows(out: str) -> list[tuple[int, int]]:
    """(txid, rows) of every status line the demo printed."""
    return [(int(m.group(1), 16), int(m.group(2)))
            for m in re.finditer(r"^\s*[\d.]+s\s+([0-9a-f]{16})\s+(\d+)", out, re.MULTILINE)]


def test_demo_shows_the_replica_advancing_and_cleans_up() -> None:
    before = demo_dirs()
    res = subprocess.run([sys.executable, "-m", "lsvfs", "demo", "--seconds", "5"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    seen = parse_rows(res.stdout)
    assert len(seen) >= 4, res.stdout
    txids = [t for t, _ in seen]
    counts = [n for _, n in seen]
    assert txids == sorted(txids) and txids[-1] > txids[0], res.stdout
    assert counts == sorted(counts) and counts[-1] > counts[0], res.stdout
    assert "done" in res.stdout
    assert demo_dirs() == before


def test_demo_cleans_up_on_ctrl_c() -> None:
    before = demo_dirs()
    proc = subprocess.Popen([sys.executable, "-m", "lsvfs", "demo", "--seconds", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_works,
                            start_new_session=True)  # its own group: a failed run takes litestream with it
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if re.match(r"^\s*[\d.]+s\s+[0-9a-f]{16}", line):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in out
    assert demo_dirs() == before
    # litestream was stopped with the demo: no child left running on its config
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not any("lsvfs-demo-" in line and "litestream" in line for line in ps.splitlines())
