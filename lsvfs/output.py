"""Query results on stdout: an aligned table for people, CSV or JSON lines for programs.

Every statement of the SQL that returns columns starts a new result (header
included), so `SELECT ...; SELECT ...` prints both. BLOBs are shown as hex
(like SQL's `hex()`), which every format can carry unchanged.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from typing import Any, Protocol, TextIO

import apsw

FORMATS = ("table", "csv", "json")
_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


class Writer(Protocol):
    def start(self, columns: list[str]) -> None: ...
    def row(self, values: tuple[Any, ...]) -> None: ...
    def finish(self) -> None: ...


def _plain(value: Any) -> Any:
    """A value JSON and CSV can carry: BLOBs become hex, the rest pass through."""
    return value.hex().upper() if isinstance(value, (bytes, bytearray, memoryview)) else value


class TableWriter:
    """Columns padded to their widest cell, numbers right-aligned, NULL spelled out.
    Rows are held until the statement ends: widths depend on every row."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.columns: list[str] | None = None
        self.rows: list[list[str]] = []
        self.numeric: list[bool] = []
        self.printed = False

    def start(self, columns: list[str]) -> None:
        self.finish()
        self.columns, self.rows, self.numeric = columns, [], [True] * len(columns)

    def row(self, values: tuple[Any, ...]) -> None:
        cells = []
        for i, v in enumerate(values):
            if v is not None and not isinstance(v, (int, float)):
                self.numeric[i] = False
            cells.append("NULL" if v is None else str(_plain(v)).translate(_ESCAPES))
        self.rows.append(cells)

    def finish(self) -> None:
        if self.columns is None:
            return
        cols = [c.translate(_ESCAPES) for c in self.columns]
        widths = [max([len(c), *(len(r[i]) for r in self.rows)]) for i, c in enumerate(cols)]

        def line(cells: list[str], align: list[bool]) -> str:
            return "  ".join(c.rjust(w) if right else c.ljust(w)
                             for c, w, right in zip(cells, widths, align)).rstrip()

        if self.printed:
            self.out.write("\n")
        self.out.write(line(cols, [False] * len(cols)) + "\n")
        self.out.write(line(["-" * w for w in widths], [False] * len(cols)) + "\n")
        for r in self.rows:
            self.out.write(line(r, self.numeric) + "\n")
        self.columns, self.rows, self.printed = None, [], True


class CSVWriter:
    """RFC 4180 CSV with a header row per statement; NULL is an empty field."""

    def __init__(self, out: TextIO) -> None:
        self.writer = csv.writer(out, lineterminator="\n")

    def start(self, columns: list[str]) -> None:
        self.writer.writerow(columns)

    def row(self, values: tuple[Any, ...]) -> None:
        self.writer.writerow([_plain(v) for v in values])

    def finish(self) -> None:
        pass


class JSONWriter:
    """One JSON object per row, one per line. Keys are written as the columns come,
    so `SELECT 1 AS a, 2 AS a` keeps both, as sqlite3's JSON mode does."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.keys: list[str] = []

    def start(self, columns: list[str]) -> None:
        self.keys = [json.dumps(c, ensure_ascii=False) for c in columns]

    def row(self, values: tuple[Any, ...]) -> None:
        pairs = (f"{k}: {json.dumps(_plain(v), ensure_ascii=False)}" for k, v in zip(self.keys, values))
        self.out.write("{" + ", ".join(pairs) + "}\n")

    def finish(self) -> None:
        pass


def write_query(conn: apsw.Connection, sql: str, fmt: str, out: TextIO) -> int:
    """Run every statement of `sql` on `conn`, writing each result in `fmt`; returns rows written."""
    writers: dict[str, Callable[[TextIO], Writer]] = {"table": TableWriter, "csv": CSVWriter, "json": JSONWriter}
    writer = writers[fmt](out)
    cursor = conn.cursor()

    def each_statement(cur: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
        columns = [d[0] for d in cur.description]
        if columns:
            writer.start(columns)
        return True

    cursor.exec_trace = each_statement
    n = 0
    try:
        for row in cursor.execute(sql):
            writer.row(row)
            n += 1
    finally:
        cursor.close()
    writer.finish()
    return n
