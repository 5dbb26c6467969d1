"""The two SQLite drivers a replica serves: apsw and the standard library's sqlite3.

Tests about SQL behaviour take a `driver` and open their connection here, so
the same assertions run against apsw's SQLite (3.54) and the system's (3.40).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import apsw

import lsvfs

DRIVERS = ("apsw", "sqlite3")
READ_ONLY = {"apsw": apsw.ReadOnlyError, "sqlite3": sqlite3.OperationalError}
"""What a write raises on each driver (SQLite's 'attempt to write a readonly database')."""
CORRUPT = {"apsw": apsw.CorruptError, "sqlite3": sqlite3.DatabaseError}
IO_ERROR = {"apsw": apsw.IOError, "sqlite3": sqlite3.OperationalError}


def connect(driver: str, url: str, **options: Any) -> Any:
    """A replica connection through `driver`; both have execute(...).fetchall() and close()."""
    if driver == "apsw":
        return lsvfs.connect(url, **options)
    return sqlite3.connect(lsvfs.uri(url, **options), uri=True, check_same_thread=False)


def script(conn: Any, sql: str) -> None:
    """Several statements (sqlite3's execute takes one)."""
    if isinstance(conn, sqlite3.Connection):
        conn.executescript(sql)
    else:
        conn.execute(sql)


def fd_targets() -> list[str]:
    """What this process's descriptors point at."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile (the listing's own descriptor, at least)
            pass
    return out


def sqlite_temp_fds(directory: str | os.PathLike[str] | None = None) -> int:
    """Open descriptors of SQLite temp files (in `directory` if given): the unix
    VFS unlinks them at once, naming them etilqs_* (3.40) or opening them with
    O_TMPFILE (3.54: "#<inode>")."""
    prefix = None if directory is None else os.fspath(directory) + os.sep
    return sum(1 for t in fd_targets()
               if t.endswith(" (deleted)") and os.path.basename(t).startswith(("etilqs_", "#"))
               and (prefix is None or t.startswith(prefix)))
