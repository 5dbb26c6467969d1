"""Print ratio tables from a pytest-benchmark JSON file.

    python -m pytest bench --benchmark-enable --benchmark-json out.json
    python bench/report.py out.json [--markdown]

Ratios are lsvfs time / other time (medians by default, `--stat min` for the
fastest round, which is steadier on a busy machine): below 1 means lsvfs is faster.
The first two tables are issue 7's (test_bench_threads.py): threaded point
lookups, 20k warm lookups and warm/cold full scans against local SQLite
through the same driver (apsw or sqlite3), with each target and whether it is met.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

Bench = dict[str, Any]
STAT = "median"
"""Which pytest-benchmark statistic the tables use (set from --stat)."""


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.3f}" if ms < 1 else f"{ms:.1f}" if ms < 1000 else f"{ms:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def _kb(v: Any) -> str:
    return "-" if v is None else f"{v / 1024:,.1f} MB"


class Table:
    def __init__(self, title: str, header: Sequence[str], markdown: bool) -> None:
        self.title, self.header, self.markdown = title, list(header), markdown
        self.rows: list[list[str]] = []

    def add(self, *cells: Any) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        if not self.rows:
            return ""
        if self.markdown:
            lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |",
                     "|" + "|".join("---" for _ in self.header) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in self.rows]
            return "\n".join(lines) + "\n"
        widths = [max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))]

        def fmt(r: list[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        rule = "-" * len(fmt(self.header))
        return "\n".join([self.title, rule, fmt(self.header), rule, *map(fmt, self.rows), ""])


def query_table(benches: list[Bench], markdown: bool) -> Table:
    by: dict[tuple[str, str], dict[str, Bench]] = defaultdict(dict)
    order: list[tuple[str, str]] = []
    for b in benches:
        e = b["extra_info"]
        if e.get("kind") != "query":
            continue
        key = (e["op"], e["db"])
        if key not in by:
            order.append(key)
        by[key][e["system"]] = b
    t = Table(f"Queries: {STAT} ms per batch (ratio = lsvfs / other; < 1 means lsvfs is faster)",
              ["op", "db", "K", "lsvfs", "go", "local", "lsvfs/go", "lsvfs/local", "lsvfs/go (in-worker)",
               "lsvfs pages/query"], markdown)
    for key in order:
        s = by[key]
        med = {k: v["stats"][STAT] for k, v in s.items()}
        ikey = "internal_min_s" if STAT == "min" else "internal_median_s"
        internal = {k: v["extra_info"].get(ikey) for k, v in s.items()}
        any_b = next(iter(s.values()))
        t.add(key[0], key[1], any_b["extra_info"].get("queries", "-"), _ms(med.get("lsvfs")), _ms(med.get("go")),
              _ms(med.get("local")), _ratio(med.get("lsvfs"), med.get("go")),
              _ratio(med.get("lsvfs"), med.get("local")), _ratio(internal.get("lsvfs"), internal.get("go")),
              s.get("lsvfs", {}).get("extra_info", {}).get("vfs_page_reads_per_query", "-"))
    return t


def restore_table(benches: list[Bench], markdown: bool) -> Table:
    by: dict[str, dict[str, Bench]] = defaultdict(dict)
    for b in benches:
        e = b["extra_info"]
        if e.get("kind") == "restore":
            by[e["db"]][e["system"]] = b
    t = Table(f"Restore: {STAT} ms", ["db", "MB", "lsvfs", "litestream", "lsvfs/litestream"], markdown)
    for db, s in by.items():
        med = {k: v["stats"][STAT] for k, v in s.items()}
        size = next(iter(s.values()))["extra_info"].get("bytes", 0)
        t.add(db, f"{size / 1e6:.1f}", _ms(med.get("lsvfs")), _ms(med.get("litestream")),
              _ratio(med.get("lsvfs"), med.get("litestream")))
    return t


def memory_table(benches: list[Bench], markdown: bool) -> Table:
    t = Table("Memory (big replica, after point/range/text/count/full-scan queries)", ["measure", "value"], markdown)
    for b in benches:
        e = b["extra_info"]
        if e.get("kind") != "memory":
            continue
        t.add("database size", f"{e['db_bytes'] / 1e6:.1f} MB ({e.get('lsvfs_pages', '?')} pages)")
        t.add("page-cache limit (both VFSes)", f"{e['cache_size'] / 2**20:.0f} MiB")
        t.add("lsvfs page table", f"{e['lsvfs_page_table_bytes']:,} B "
                                  f"({e['lsvfs_page_table_bytes_per_page']} B/page)")
        t.add("lsvfs frame cache", f"{e['lsvfs_frame_cache_bytes'] / 2**20:.1f} MiB")
        t.add("lsvfs tracemalloc current / peak",
              f"{e['lsvfs_traced_current_bytes'] / 2**20:.1f} / {e['lsvfs_traced_peak_bytes'] / 2**20:.1f} MiB")
        for system in ("lsvfs", "go", "local"):
            if f"{system}_rss_delta_kb" in e:
                t.add(f"{system} worker RSS growth (baseline {_kb(e[f'{system}_rss_baseline_kb'])})",
                      _kb(e[f"{system}_rss_delta_kb"]))
        if "lsvfs_rss_delta_kb" in e and "go_rss_delta_kb" in e and e["lsvfs_rss_delta_kb"]:
            t.add("RSS growth ratio lsvfs/go", f"{e['lsvfs_rss_delta_kb'] / e['go_rss_delta_kb']:.2f}")
        if "go_longlived_rss_kb" in e:
            t.add("go worker RSS after the whole query suite", _kb(e["go_longlived_rss_kb"]))
    return t


def poll_table(benches: list[Bench], markdown: bool) -> Table:
    t = Table("Polling: directory listings per second (inotify, any process) and LIST calls (lsvfs wrapper)",
              ["system", "conns", "poll interval", "listings/s", "per conn/s", "lsvfs LIST calls/s", "polls"],
              markdown)
    for b in benches:
        e = b["extra_info"]
        if e.get("kind") == "poll":
            t.add(e["system"], e["conns"], f"{e['poll_interval_s']}s", e["dir_opens_per_s"],
                  e["dir_opens_per_s_per_conn"], e.get("lists_per_s", "-"), e.get("polls", "-"))
    return t


TARGETS = {"threads": 1 / 0.8, "warm_lookups": 1.2, "warm_scan": 1.3, "cold_scan": 2.0}
"""Issue 7's targets, as lsvfs time / local time (same driver); test_bench_threads.py has the same."""
SYSTEM_ORDER = ("local", "lsvfs", "lsvfs_fit", "go")


def _issue7(benches: list[Bench]) -> dict[tuple[Any, ...], dict[tuple[str, str], Bench]]:
    """test_bench_threads results: (op, threads) -> (system, driver) -> bench."""
    by: dict[tuple[Any, ...], dict[tuple[str, str], Bench]] = defaultdict(dict)
    for b in benches:
        e = b["extra_info"]
        if e.get("kind") in ("threads", "lookups", "scan") and "driver" in e:
            by[(e["op"], e.get("threads", 0))][(e["system"], e["driver"])] = b
    return by


def _cost(b: Bench) -> float:
    """Seconds per query (per scan), from the statistic chosen: the in-process
    timing of the work itself (threads: barrier to last thread done)."""
    e = b["extra_info"]
    key = "internal_min_s" if STAT == "min" else "internal_median_s"
    seconds = e.get(key) if STAT != "mean" else b["stats"]["mean"]
    return float(seconds) / e.get("queries", 1)


def _local_cost(b: Bench, local: Bench | None) -> float | None:
    """Local's cost for b's ratio: from the local rounds run alternately with b's, where it has them."""
    e = b["extra_info"]
    key = "paired_local_min_s" if STAT == "min" else "paired_local_median_s"
    if STAT != "mean" and key in e:
        return float(e[key]) / float(e.get("queries", 1))
    return _cost(local) if local else None


def _verdict(ratio: float, op: str) -> str:
    return "ok" if ratio <= TARGETS[op] else "MISS"


def threads_table(benches: list[Bench], markdown: bool) -> Table:
    by = _issue7(benches)
    t = Table(f"Point lookups from N threads, one connection each ({STAT}; q/s over all threads; "
              f"ratio = local q/s / system q/s, same driver, lsvfs's against local rounds run alternately "
              f"with its own; target lsvfs <= {TARGETS['threads']:.2f}, i.e. >= 0.8x local's q/s)",
              ["threads", "system", "driver", "q/s", "local q/s", "ratio", "target", "misses/query"], markdown)
    for (op, threads), s in sorted(by.items(), key=lambda kv: kv[0][1]):
        if op != "threads":
            continue
        for (system, driver) in sorted(s, key=lambda k: (SYSTEM_ORDER.index(k[0]), k[1])):
            b = s[(system, driver)]
            local = _local_cost(b, s.get(("local", driver)))
            cost = _cost(b)
            ratio = cost / local if local else None
            t.add(threads, system, driver, f"{1 / cost:,.0f}", f"{1 / local:,.0f}" if local else "-",
                  "-" if ratio is None or system == "local" else f"{ratio:.2f}",
                  _verdict(ratio, op) if ratio is not None and system.startswith("lsvfs") else "",
                  b["extra_info"].get("vfs_misses_per_query", ""))
    return t


def issue7_table(benches: list[Bench], markdown: bool) -> Table:
    by = _issue7(benches)
    t = Table(f"Warm lookups and full scans ({STAT}; ratio = system time / local time, same driver, "
              "lsvfs's against local rounds run alternately with its own)",
              ["benchmark", "system", "driver", "ms", "local ms", "ratio", "target", "q/s", "misses/round"],
              markdown)
    for op in ("warm_lookups", "warm_scan", "cold_scan"):
        s = by.get((op, 0), {})
        for (system, driver) in sorted(s, key=lambda k: (SYSTEM_ORDER.index(k[0]), k[1])):
            b = s[(system, driver)]
            e = b["extra_info"]
            local = _local_cost(b, s.get(("local", driver)))
            n = e.get("queries", 1)
            ratio = _cost(b) / local if local else None
            misses = e.get("vfs_misses_per_query")
            t.add(op, system, driver, _ms(_cost(b) * n), _ms(local * n) if local else "-",
                  "-" if ratio is None or system == "local" else f"{ratio:.2f}",
                  f"{_verdict(ratio, op)} (<= {TARGETS[op]})" if ratio is not None and system.startswith("lsvfs")
                  else "", f"{1 / _cost(b):,.0f}" if "queries" in e else "",
                  "" if misses is None else f"{misses * n:,.0f}")
    return t


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    ap.add_argument("--markdown", action="store_true", help="emit Markdown tables")
    ap.add_argument("--stat", choices=("median", "min", "mean"), default="median",
                    help="statistic to compare (default median)")
    args = ap.parse_args(argv)
    global STAT
    STAT = args.stat
    with open(args.json) as fh:
        data = json.load(fh)
    benches: list[Bench] = data.get("benchmarks", [])
    if not benches:
        print("no benchmarks in", args.json, "(was --benchmark-enable given?)", file=sys.stderr)
        return 1
    machine = data.get("machine_info", {})
    print(f"# {machine.get('node', '?')}: {machine.get('cpu', {}).get('brand_raw', '?')}, "
          f"Python {machine.get('python_version', '?')}, {data.get('datetime', '')}\n")
    for table in (threads_table, issue7_table, query_table, restore_table, memory_table, poll_table):
        out = table(benches, args.markdown).render()
        if out:
            print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
