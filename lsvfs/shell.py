"""`lsvfs shell`: apsw's SQLite shell on a replica connection.

apsw's Shell gives the dot-commands, output modes and completion people know
from sqlite3; this adds the replica's own controls (`.txid`, `.time`, `.lag`)
as thin wrappers over the `litestream_*` PRAGMAs, so there is one
implementation of pinning and time travel, and counts errors so that a
script piped in fails the command like sqlite3 does.
"""

from __future__ import annotations

from typing import Any, TextIO

import apsw
import apsw.shell

from .pragmas import named, pragma, usage

DOT_COMMANDS = ("txid", "time", "lag")
"""The replica PRAGMAs the shell has a dot-command for."""


def banner(url: str, conn: apsw.Connection) -> str:
    """What an interactive session starts with: where it is, and how to move in time."""
    lines = "".join(f"  {p:<39}  {dot:<19}  {what}\n" for p, dot, what in map(usage, DOT_COMMANDS))
    return (f"lsvfs shell on {url} (read-only), SQLite {apsw.sqlite_lib_version()}\n"
            f"at TXID {pragma(conn, named('txid'))}, committed {pragma(conn, named('time'))}\n"
            f"{lines}"
            'Enter ".help" for all commands.\n')


class ReplicaShell(apsw.shell.Shell):
    """apsw's Shell with `.txid`, `.time` and `.lag`, and an error count."""

    def __init__(self, url: str, conn: apsw.Connection, *, stdin: TextIO | None = None,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        super().__init__(stdin=stdin, stdout=stdout, stderr=stderr, db=conn)
        self.url = url
        self.errors = 0
        self.prompt = "lsvfs> "
        self.history_file = "~/.lsvfs_history"

    def handle_exception(self) -> Any:
        self.errors += 1
        return super().handle_exception()

    def _show_or_set(self, name: str, cmd: list[str]) -> None:
        if len(cmd) > 1:
            raise self.Error(f"too many arguments: .{name.removeprefix('litestream_')} takes at most one")
        if cmd:
            pragma(self.db, name, cmd[0])
        self.write(self.stdout, pragma(self.db, name) + "\n")

    def command_txid(self, cmd: list[str]) -> None:
        """txid ?HEX|LATEST?: Show the TXID read, or pin one (PRAGMA litestream_txid)

        With an argument, later reads see exactly that TXID until `.txid LATEST`.
        """
        self._show_or_set(named("txid"), cmd)

    def command_time(self, cmd: list[str]) -> None:
        """time ?TIME|LATEST?: Show the commit time read, or travel to TIME (PRAGMA litestream_time)

        TIME is RFC 3339 (2024-01-02T03:04:05Z) or relative ('5 minutes ago'); `.time LATEST` returns.
        """
        self._show_or_set(named("time"), cmd)

    def command_lag(self, cmd: list[str]) -> None:
        """lag: Seconds since the replica was last polled (PRAGMA litestream_lag)"""
        if cmd:
            raise self.Error(".lag takes no arguments")
        self.write(self.stdout, pragma(self.db, named("lag")) + "\n")


def run_shell(url: str, conn: apsw.Connection, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
              stderr: TextIO | None = None, interactive: bool | None = None) -> int:
    """Run the shell until end of input or `.exit`; the exit status.

    Non-interactive input that hit any error exits 1 (as sqlite3 does), so a
    piped script that fails is noticed.
    """
    shell = ReplicaShell(url, conn, stdin=stdin, stdout=stdout, stderr=stderr)
    if interactive is not None:
        shell.interactive = interactive
    try:
        shell.cmdloop(intro=banner(url, conn) if shell.interactive else None)
    except SystemExit as exc:  # .exit / .quit
        return exc.code if isinstance(exc.code, int) else 0
    return 1 if shell.errors and not shell.interactive else 0
