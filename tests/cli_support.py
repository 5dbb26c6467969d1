"""What every CLI test checks of a failing command."""

from __future__ import annotations

import subprocess


def one_error_line(r: subprocess.CompletedProcess[str], command: str) -> str:
    """Exit 1 (not a signal), exactly one `lsvfs CMD: error:` line on stderr, no traceback anywhere."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lsvfs {command}: error: "), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return lines[0]
