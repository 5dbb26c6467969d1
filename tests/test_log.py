"""Logging: silent as a library, LITESTREAM_LOG_LEVEL honoured as the Go VFS does, and the CLI's
-v / --debug. Each case runs in a fresh interpreter, because the variable is read at import.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from replication import ReplicatedPrimary

PROBE = """
import logging, sys
import lsvfs
probe = logging.getLogger("lsvfs.probe")
for level in ("debug", "info", "warning", "error"):
    getattr(probe, level)("probe-%s", level)
logging.getLogger("elsewhere").warning("not lsvfs")
if len(sys.argv) > 1:
    conn = lsvfs.connect(sys.argv[1])
    conn.execute("SELECT count(*) FROM t").fetchall()
    conn.close()
"""


def env_with(level: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LITESTREAM_LOG_LEVEL"}
    if level is not None:
        env["LITESTREAM_LOG_LEVEL"] = level
    return env


def probe(level: str | None, *args: str) -> str:
    """stderr of a library user that logs one probe record per level through `lsvfs.probe`."""
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60,
                       env=env_with(level), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return r.stderr


def shown(stderr: str) -> list[str]:
    return re.findall(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR) lsvfs\.probe: probe-\w+$", stderr, re.MULTILINE)


@pytest.fixture(scope="module")
def replica_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    p = ReplicatedPrimary(tmp_path_factory.mktemp("log-primary"), storage="file")
    try:
        p.insert_rows(10, 100)
        p.wait_replicated()
        p.stop()
        assert p.replica_dir is not None
        yield str(p.replica_dir)
    finally:
        p.close()


def test_library_is_silent_by_default() -> None:
    """Without LITESTREAM_LOG_LEVEL lsvfs prints nothing, not even warnings and errors (its NullHandler
    keeps Python's last-resort handler quiet), and leaves other loggers alone."""
    err = probe(None)
    assert "probe" not in err
    assert "not lsvfs" in err  # Python's last resort still serves loggers that are not ours
    assert probe("").count("probe") == 0


@pytest.mark.parametrize(("value", "levels"), [
    ("DEBUG", ["DEBUG", "INFO", "WARNING", "ERROR"]),
    ("info", ["INFO", "WARNING", "ERROR"]),
    ("Warn", ["WARNING", "ERROR"]),
    ("WARNING", ["WARNING", "ERROR"]),
    ("error", ["ERROR"]),
])
def test_litestream_log_level_in_a_library(value: str, levels: list[str]) -> None:
    """LITESTREAM_LOG_LEVEL gives the lsvfs logger that level and one stderr handler, any case."""
    assert shown(probe(value)) == levels


def test_litestream_log_level_shows_real_records(replica_url: str) -> None:
    """At DEBUG, opening and reading a replica logs through `lsvfs.*` loggers to stderr."""
    err = probe("DEBUG", replica_url)
    assert re.search(r"^\S+ \S+ (DEBUG|INFO) lsvfs\.(?!probe)\w+", err, re.MULTILINE), err


def test_bad_litestream_log_level_is_ignored_with_one_warning() -> None:
    err = probe("loud")
    warnings = [line for line in err.splitlines() if "LITESTREAM_LOG_LEVEL" in line]
    assert len(warnings) == 1 and "'loud'" in warnings[0] and " WARNING lsvfs: " in warnings[0], err
    assert shown(err) == ["WARNING", "ERROR"]  # the level stays at the default


def cli(*args: str, level: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lsvfs", *args], capture_output=True, text=True, timeout=60,
                          env=env_with(level), stdin=subprocess.DEVNULL)


def test_cli_log_levels(replica_url: str, tmp_path: Path) -> None:
    """The CLI logs warnings by default, INFO with -v, DEBUG with --debug (before or after the
    command); LITESTREAM_LOG_LEVEL applies when no flag is given; every record is printed once."""
    sql = "SELECT count(*) FROM t"
    info = re.compile(r"^\S+ \S+ INFO lsvfs\.cli: .* reading TXID [0-9a-f]{16}, committed ", re.MULTILINE)
    debug = re.compile(r"^\S+ \S+ DEBUG lsvfs\.", re.MULTILINE)

    r = cli("query", replica_url, sql)
    assert r.returncode == 0 and r.stdout.splitlines()[2].strip() == "10" and r.stderr == ""
    for args in (("-v", "query", replica_url, sql), ("query", replica_url, sql, "--verbose")):
        r = cli(*args)
        assert r.returncode == 0 and len(info.findall(r.stderr)) == 1 and not debug.search(r.stderr), r.stderr
    for args in (("--debug", "query", replica_url, sql), ("query", replica_url, sql, "-vv")):
        r = cli(*args)
        assert r.returncode == 0 and info.search(r.stderr) and debug.search(r.stderr), r.stderr
    r = cli("query", replica_url, sql, level="info")
    assert len(info.findall(r.stderr)) == 1 and not debug.search(r.stderr), r.stderr
    r = cli("-v", "query", replica_url, sql, level="ERROR")  # the flag wins over the variable
    assert len(info.findall(r.stderr)) == 1, r.stderr
    r = cli("restore", replica_url, str(tmp_path / "out.db"), level="loud")
    assert r.returncode == 0 and r.stderr.count("LITESTREAM_LOG_LEVEL") == 1 and len(r.stderr.splitlines()) == 1
