"""Markdown table of bench/test_bench_remote.py results (issue 8): lsvfs against the Go VFS on
S3 with an added round trip, times side by side with their ratio, the issue's target, and the
GET / LIST requests counted on the wire.

    python bench/report_remote.py /tmp/remote.json [--stat min]

Times are each benchmark's median round (`--stat min`: its fastest); request counts are the
median over rounds of the timed phase's requests.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

ROWS = (
    ("open", "open + first query, one snapshot ({mb:.1f} MB)"),
    ("cold_lookups", "{lookups} cold point lookups (fresh process)"),
    ("cold_scan", "cold full scan, after the lookups"),
    ("open_l0", "open + first query, snapshot + {l0_files} L0 files"),
    ("hydration", "hydration ({mb:.0f} MB) vs `litestream restore`"),
)
Info = dict[str, Any]


def load(path: str, stat: str) -> dict[tuple[str, str], Info]:
    """(bench, system) -> extra_info plus the chosen statistic as `t`."""
    with open(path) as fh:
        data = json.load(fh)
    out: dict[tuple[str, str], Info] = {}
    for b in data["benchmarks"]:
        info = dict(b.get("extra_info", {}))
        if "bench" not in info:
            continue
        info["t"] = b["stats"][stat]
        out[(info["bench"], info["system"])] = info
    return out


def seconds(info: Info | None) -> str:
    return "—" if info is None else f"{info['t']:.3f}"


def requests(info: Info | None) -> str:
    if info is None:
        return "—"
    r = info.get("requests", {})
    return f"{r.get('GET', 0)} / {r.get('LIST', 0)}"


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def target_cell(bench: str, lsvfs: Info | None, ratio: float | None) -> str:
    want = (lsvfs or {}).get("target_go_over_lsvfs")
    if want is None:
        return "—"
    cell = f"≥{want:g}x" + (f" {verdict(ratio >= want)}" if ratio is not None else "")
    if bench == "cold_scan" and lsvfs is not None:
        limit, gets = lsvfs["get_limit"], lsvfs.get("requests", {}).get("GET", 0)
        cell += f"; GETs ≤{limit} {verdict(gets <= limit)}"
    return cell


def table(results: dict[tuple[str, str], Info]) -> str:
    any_info = next(iter(results.values()), {})
    lines = [f"S3 = moto behind a proxy adding {any_info.get('rtt_ms', 0):g} ms per round trip; every reader a "
             "fresh process; GETs / LISTs counted on the wire during the timed phase.", "",
             "| workload | lsvfs s | Go s | Go/lsvfs | target | lsvfs GETs/LISTs | Go GETs/LISTs |",
             "|---|---|---|---|---|---|---|"]
    for bench, label in ROWS:
        lsvfs, go = results.get((bench, "lsvfs")), results.get((bench, "go"))
        if lsvfs is None and go is None:
            lines.append(f"| {bench}: not run (skipped) | — | — | — | — | — | — |")
            continue
        some = lsvfs or go or {}
        name = label.format(mb=some.get("db_bytes", 0) / 1e6, lookups=some.get("lookups", "?"),
                            l0_files=some.get("l0_files", "?"))
        ratio = go["t"] / lsvfs["t"] if lsvfs and go and lsvfs["t"] else None
        lines.append(f"| {name} | {seconds(lsvfs)} | {seconds(go)} | "
                     f"{'—' if ratio is None else f'{ratio:.2f}x'} | {target_cell(bench, lsvfs, ratio)} | "
                     f"{requests(lsvfs)} | {requests(go)} |")
    hyd, local = results.get(("hydrated_lookups", "lsvfs")), results.get(("hydrated_lookups", "local"))
    if hyd or local:
        ratio = hyd["t"] / local["t"] if hyd and local and local["t"] else None
        ok = f" {verdict(ratio <= 1.2)}" if ratio is not None else ""
        n = (hyd or local or {}).get("lookups", "?")
        lines.append(f"| {n} warm lookups, hydrated (Go column: local SQLite on the restored file) | "
                     f"{seconds(hyd)} | local {seconds(local)} | lsvfs/local "
                     f"{'—' if ratio is None else f'{ratio:.2f}x'} | ≤1.2x{ok} | {requests(hyd)} | — |")
    else:
        lines.append("| hydrated warm lookups: not run (skipped) | — | — | — | — | — | — |")
    walls = [(b, results.get((b, "lsvfs")), results.get((b, "go"))) for b in ("open", "open_l0")]
    walls = [(b, ls, go) for b, ls, go in walls if ls and go and "process_wall_median_s" in ls]
    if walls:
        lines += ["", "The open figures run from spawning the process to the first rows. The whole process, "
                  "interpreter teardown included (median):", "",
                  "| workload | lsvfs s | Go s | Go/lsvfs |", "|---|---|---|---|"]
        for b, ls, go in walls:
            lw, gw = ls["process_wall_median_s"], go["process_wall_median_s"]
            lines.append(f"| {b} | {lw:.3f} | {gw:.3f} | {gw / lw:.2f}x |")
    poll = [(s, results.get(("poll", s))) for s in ("lsvfs", "go")]
    if any(info for _, info in poll):
        lines += ["", "Polling: one idle connection, poll interval "
                  f"{next(i for _, i in poll if i).get('poll_interval')}, per replica:", "",
                  "| system | LISTs/min | GETs/min | idle window s |", "|---|---|---|---|"]
        for system, info in poll:
            if info is None:
                continue
            per = info.get("per_minute", {})
            lines.append(f"| {system} | {per.get('LIST', 0):.0f} | {per.get('GET', 0):.0f} | {info['t']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", help="pytest --benchmark-json output of bench/test_bench_remote.py")
    ap.add_argument("--stat", default="median", choices=("median", "min", "mean", "max"))
    args = ap.parse_args()
    print(table(load(args.json, args.stat)))


if __name__ == "__main__":
    main()
