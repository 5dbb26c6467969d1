"""What every CLI test checks of a failing command, and running one with stderr on a terminal."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Callable


def one_error_line(r: subprocess.CompletedProcess[str], command: str) -> str:
    """Exit 1 (not a signal), exactly one `lsvfs CMD: error:` line on stderr, no traceback anywhere."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lsvfs {command}: error: "), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return lines[0]


def ctrl_c_works() -> None:
    """A child's preexec_fn: SIGINT as at a terminal. A suite started in the background by a
    non-interactive shell (`pytest &` in a script) passes SIGINT on ignored, and Python then
    installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_with_pty_stderr(args: list[str], timeout: float = 60,
                        until: Callable[[str], bool] | None = None) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal; returns (status, stdout, everything written to the pty).

    A command that runs until stopped is given `until`: once it holds for what
    the pty has shown, the command gets SIGINT (Ctrl-C) and what it writes
    then is kept too."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                                preexec_fn=ctrl_c_works)
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    interrupted = False
    try:
        while time.monotonic() < deadline:
            if until is not None and not interrupted and until(b"".join(chunks).decode(errors="replace")):
                proc.send_signal(signal.SIGINT)
                interrupted = True
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        if proc.poll() is None:  # still running at the deadline: its status says so (-9)
            proc.kill()
        out = proc.stdout.read() if proc.stdout else b""
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        os.close(master)
    return rc, out.decode(), b"".join(chunks).decode(errors="replace")
