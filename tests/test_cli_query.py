"""`lsvfs query` and `lsvfs shell` on a real litestream replica, every command's --help,
and failures as one stderr line (a traceback only with --debug).

Expected rows come from the standard library's sqlite3 on the primary file,
read right after each TXID was replicated, so a query at that TXID (or at its
commit time) must print exactly them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_support import one_error_line
from replication import AuthMotoS3, ReplicatedPrimary

import lsvfs
from lsvfs import cli, ltx
from lsvfs.shell import run_shell
from lsvfs.storage.file import FileStorage
from lsvfs.timeutil import format_time

QUERY = "SELECT id, name, price, data, note FROM items ORDER BY id"
Row = tuple[Any, ...]


@dataclass(frozen=True)
class State:
    txid: int
    time: str  # commit time of the TXID, RFC 3339 as the PRAGMA prints it
    rows: list[Row]


@dataclass(frozen=True)
class Replica:
    url: str  # a plain directory path
    states: list[State]  # oldest first; the last is the newest


def _ltx_time(replica: Path, txid: int) -> str:
    """The commit time of `txid`: the header timestamp of the file that ends at it."""
    st = FileStorage(replica)
    try:
        f = next(f for lvl in (0, 1, 2, 9) for f in st.list_files(lvl) if f.max_txid == txid)
        return format_time(ltx.Header.decode(st.read(f, 0, ltx.HEADER_SIZE), f.name).timestamp)
    finally:
        st.close()


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """Three replicated states of a table with every SQLite type, then litestream stopped."""
    p = ReplicatedPrimary(tmp_path_factory.mktemp("cli-query-primary"), storage="file", page_size=4096)
    try:
        p.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL, data BLOB, note TEXT)")
        steps = [
            "INSERT INTO items(name, price, data, note) VALUES ('apple', 1.25, x'00ff10', NULL), "
            "('pear, green', 0.1, NULL, 'say \"hi\"'), ('fig', -3.0, randomblob(8), 'line1\nline2')",
            "INSERT INTO items(name, price, data, note) VALUES ('kiwi', 1e20, x'', 'ünïcode'); "
            "UPDATE items SET price = price * 2 WHERE name = 'apple'",
            "DELETE FROM items WHERE name = 'fig'",
        ]
        states = []
        for sql in steps:
            p.execute(sql)
            txid = p.wait_replicated()
            with sqlite3.connect(f"file:{p.db_path}?mode=ro", uri=True) as primary:
                rows = primary.execute(QUERY).fetchall()
            states.append((txid, rows))
        p.stop()
        assert p.replica_dir is not None
        yield Replica(str(p.replica_dir), [State(t, _ltx_time(p.replica_dir, t), r) for t, r in states])
    finally:
        p.close()


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lsvfs", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)




def hexed(row: Row) -> list[Any]:
    return [v.hex().upper() if isinstance(v, bytes) else v for v in row]


# ---- query -----------------------------------------------------------------------

def test_query_json_equals_primary_at_every_txid_and_time(replica: Replica) -> None:
    """--json rows equal the primary's; --txid and --timestamp each select exactly their state."""
    newest = replica.states[-1]
    assert len({s.txid for s in replica.states}) == 3 and replica.states[0].rows != newest.rows

    def json_rows(*extra: str) -> list[list[Any]]:
        r = run("query", replica.url, QUERY, "--json", *extra)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        objs = [json.loads(line) for line in r.stdout.splitlines()]
        assert all(list(o) == ["id", "name", "price", "data", "note"] for o in objs)
        return [list(o.values()) for o in objs]

    assert json_rows() == [hexed(r) for r in newest.rows]
    for s in replica.states:
        assert json_rows("--txid", f"{s.txid:016x}") == [hexed(r) for r in s.rows], s.txid
        assert json_rows("--timestamp", s.time) == [hexed(r) for r in s.rows], s.time


def test_query_table_is_aligned_and_holds_every_value(replica: Replica) -> None:
    """The default table: a header, a dash rule, one line per row; every cell sits in its column's span."""
    rows = replica.states[-1].rows
    r = run("query", replica.url, QUERY)
    assert r.returncode == 0, r.stderr
    header, rule, *lines = r.stdout.splitlines()
    assert len(lines) == len(rows)
    spans = []
    pos = 0
    for dashes in rule.split("  "):
        spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    assert [header[a:b].strip() for a, b in spans] == ["id", "name", "price", "data", "note"]
    for line, row in zip(lines, rows):
        cells = [line[a:b].strip() for a, b in spans]
        want = ["NULL" if v is None else v.hex().upper() if isinstance(v, bytes) else
                str(v).replace("\n", "\\n") for v in row]
        assert cells == want, (line, row)
        assert line[spans[0][0]:spans[0][1]].endswith(str(row[0]))  # numbers right-aligned


def test_query_csv_round_trips(replica: Replica) -> None:
    """--csv parses back (quotes, commas, newlines) to the primary's rows; NULL is an empty field."""
    rows = replica.states[-1].rows
    r = run("query", replica.url, QUERY, "--csv")
    assert r.returncode == 0, r.stderr
    header, *got = list(csv.reader(io.StringIO(r.stdout)))
    assert header == ["id", "name", "price", "data", "note"]
    assert got == [["" if v is None else str(v) for v in hexed(row)] for row in rows]


def test_query_several_statements_and_options(replica: Replica) -> None:
    """Each statement with columns prints its own result; -o passes options to connect(); an
    unknown option is a usage error."""
    r = run("query", replica.url, "SELECT count(*) AS n FROM items; SELECT name FROM items WHERE 0",
            "-o", "cache_size=1MiB", "--option", "verify=files")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["n", "-", str(len(replica.states[-1].rows)), "", "name", "----"]
    r = run("query", replica.url, "SELECT 1", "-o", "nonsense=1")
    assert r.returncode == 2 and "unknown option" in r.stderr and "Traceback" not in r.stderr


# ---- shell -----------------------------------------------------------------------

def test_shell_driven_by_stdin(replica: Replica) -> None:
    """Piped SQL and .txid/.time run against the replica; pinning changes what SELECT sees."""
    old, newest = replica.states[0], replica.states[-1]
    script = (f"SELECT count(*) FROM items;\n.txid\n.txid {old.txid:016x}\nSELECT count(*) FROM items;\n"
              f".time\n.txid LATEST\n.time {old.time}\n.txid\nSELECT name FROM items ORDER BY id;\n")
    r = run("shell", replica.url, stdin=script)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.splitlines() == [
        str(len(newest.rows)), f"{newest.txid:016x}",  # latest
        f"{old.txid:016x}", str(len(old.rows)), old.time,  # pinned by .txid
        f"{newest.txid:016x}",  # .txid LATEST
        old.time, f"{old.txid:016x}", *[row[1] for row in old.rows],  # travelled by .time
    ]


def test_shell_errors_fail_a_piped_script_and_start_pinned(replica: Replica) -> None:
    """Bad SQL in piped input is reported and the exit status is 1; --txid starts the shell pinned."""
    old = replica.states[0]
    r = run("shell", replica.url, "--txid", f"{old.txid:x}", stdin="SELEC 1;\nSELECT count(*) FROM items;\n")
    assert r.returncode == 1
    assert "syntax error" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout.splitlines() == [str(len(old.rows))]
    r = run("shell", replica.url, stdin="INSERT INTO items(name) VALUES ('x');\n")
    assert r.returncode == 1 and "readonly" in r.stderr.lower().replace("-", "")


def test_shell_banner_names_the_replica_pragmas(replica: Replica) -> None:
    """An interactive session opens with where it is and how to time-travel."""
    newest = replica.states[-1]
    conn = lsvfs.connect(replica.url)
    out, err = io.StringIO(), io.StringIO()
    try:
        (when,), = conn.execute("PRAGMA litestream_time").fetchall()
        rc = run_shell(replica.url, conn, stdin=io.StringIO(".lag\n"), stdout=out, stderr=err, interactive=True)
    finally:
        conn.close()
    assert rc == 0, err.getvalue()
    text = out.getvalue()
    assert replica.url in text and f"TXID {newest.txid:016x}, committed {when}" in text
    for word in ("PRAGMA litestream_txid", "PRAGMA litestream_time", ".txid", ".time"):
        assert word in text


# ---- help --------------------------------------------------------------------------

def test_every_command_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    """`lsvfs CMD --help` says what CMD does and shows `lsvfs CMD ...` under "example:"."""
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    names = list(sub.choices)
    assert {"query", "shell", "ls", "restore", "verify", "demo"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert sub.choices[name].description and sub.choices[name].description.split("\n")[0] in text
        example = text.split("\nexample:\n", 1)[1]
        assert example.lstrip().startswith(f"lsvfs {name}"), (name, text)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "examples:" in capsys.readouterr().out


# ---- errors: one line, no traceback unless --debug ---------------------------------

def test_bad_replicas_urls_and_sql_are_one_line(replica: Replica, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "ltx" / "0").mkdir(parents=True)
    missing = str(tmp_path / "no" / "such")
    for cmd in (["ls"], ["query", "--json"], ["shell"], ["verify"]):
        extra = ["SELECT 1"] if cmd[0] == "query" else []
        line = one_error_line(run(cmd[0], missing, *extra, *cmd[1:]), cmd[0])
        assert missing in line and "does not exist" in line
        assert "empty" in one_error_line(run(cmd[0], str(empty), *extra, *cmd[1:]), cmd[0])
    assert "unsupported replica URL" in one_error_line(run("query", "ftp://host/x", "SELECT 1"), "query")
    line = one_error_line(run("query", replica.url, "SELEC name FROM items"), "query")
    assert "syntax error" in line
    assert "no such table: nope" in one_error_line(run("query", replica.url, "SELECT * FROM nope"), "query")
    line = one_error_line(run("query", replica.url, "SELECT 1", "--timestamp", "2001-01-01T00:00:00Z"), "query")
    assert "2001" in line

    r = run("query", replica.url, "SELEC 1", "--debug")
    assert r.returncode == 1 and "Traceback" in r.stderr and "syntax error" in r.stderr
    r = run("--debug", "ls", missing)
    assert r.returncode == 1 and "Traceback" in r.stderr and "ReplicaError" in r.stderr


@pytest.mark.s3
def test_s3_refused_missing_and_empty_are_one_line(moto_s3_auth: AuthMotoS3, tmp_path: Path) -> None:
    """Wrong credentials, a bucket that does not exist, a prefix with nothing in it: one line each."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITESTREAM_"))}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    wrong = dict(env, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1", AWS_SECRET_ACCESS_KEY="nope")
    right = dict(env, AWS_ACCESS_KEY_ID=moto_s3_auth.access_key_id,
                 AWS_SECRET_ACCESS_KEY=moto_s3_auth.secret_access_key)
    url = moto_s3_auth.url("creds")
    no_bucket = url.replace(f"s3://{moto_s3_auth.bucket}/", "s3://no-such-bucket-here/")
    # This moto checks signatures in its own process and answers slowly: one command per case.
    assert "InvalidAccessKeyId" in one_error_line(run("query", url, "SELECT 1", env=wrong), "query")
    assert "InvalidAccessKeyId" in one_error_line(run("ls", url, env=wrong), "ls")
    assert "empty" in one_error_line(run("query", url, "SELECT 1", env=right), "query")
    assert "NoSuchBucket" in one_error_line(run("ls", no_bucket, env=right), "ls")
