"""The replica's PRAGMAs and SQL functions, as the C core lists them.

The table lives in C (`lsvfs_names`, csrc/extension.c), where the SQL
functions are dispatched; the VFS's PRAGMA handler, the shell and the CLI
read it from here, so a name is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._core import ffi, lib

if TYPE_CHECKING:
    import apsw


@dataclass(frozen=True)
class Name:
    """One entry of the C table (see `lsvfs_name` in lsvfs_core.h)."""

    name: str
    kind: int
    nargs: int
    integer: bool
    pragma: str | None
    value: str | None
    help: str

    @property
    def settable(self) -> bool:
        return self.kind == int(lib.LSVFS_PRAGMA_SETTABLE)


def _text(p: object) -> str | None:
    return None if p == ffi.NULL else ffi.string(p).decode()


def _load() -> tuple[Name, ...]:
    out = ffi.new("const lsvfs_name **")
    n = lib.lsvfs_names(out)
    return tuple(Name(_text(e.name) or "", e.kind, e.nargs, bool(e.integer), _text(e.pragma), _text(e.value),
                      _text(e.help) or "")
                 for e in (out[0][i] for i in range(n)))


ENTRIES = _load()
PRAGMAS: dict[str, Name] = {n.name: n for n in ENTRIES if n.kind in (lib.LSVFS_PRAGMA, lib.LSVFS_PRAGMA_SETTABLE)}
"""The litestream_* PRAGMAs by name."""
SQL_FUNCTIONS: dict[str, Name] = {n.name: n for n in ENTRIES if n.kind == lib.LSVFS_SQL_FUNCTION}
"""The Go VFS's SQL functions by name (each answers like its `pragma`)."""
READ_ONLY = frozenset(name for name, n in PRAGMAS.items() if not n.settable)


def named(short: str) -> str:
    """The full name of PRAGMA `short` ("txid" -> "litestream_txid"); KeyError if C has none."""
    return PRAGMAS["litestream_" + short].name


def usage(short: str) -> tuple[str, str, str]:
    """How to use PRAGMA `short` and its shell dot-command, and what it does: the banner's columns."""
    n = PRAGMAS["litestream_" + short]
    return (f"PRAGMA {n.name}" + (f" [= {n.value}]" if n.value else ""),
            f".{short}" + (f" [{n.value}]" if n.value else ""), n.help)


def pragma(conn: apsw.Connection, name: str, value: str | None = None) -> str:
    """Read one replica PRAGMA on an apsw connection, or set it to `value`; its text."""
    if value is not None:
        quoted = value.replace("'", "''")
        conn.execute(f"PRAGMA {name} = '{quoted}'").fetchall()
        return ""
    rows = conn.execute(f"PRAGMA {name}").fetchall()
    return str(rows[0][0]) if rows else ""
