"""Markdown table of bench/test_bench_cold_start.py results (issue 19).

    python bench/report_cold_start.py /tmp/cold.json

Per benchmark and system: the median wall figure, the median client CPU, the
server's CPU, requests on the wire, and the ratios Go/lsvfs (time), lsvfs/Go
(CPU) and lsvfs_before/lsvfs (time), against the issue's targets.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

NAMES = {"open": "open + first query, one snapshot", "open_l0": "open + first query, snapshot + {l0} L0 files",
         "lookups": "200 cold point lookups (worker)", "lookups_noprefetch": "200 cold point lookups, prefetch off"}


def main(path: str) -> None:
    with open(path) as fh:
        data = json.load(fh)
    by: dict[tuple[str, str], dict[str, Any]] = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "bench" in info:
            by[(info["bench"], info["system"])] = info
    print("| workload | system | wall s | client CPU s | server CPU s | GET / LIST | Go/lsvfs time | lsvfs/Go CPU "
          "| before/after time | CPU ms per GET |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for bench in ("open", "open_l0", "lookups", "lookups_noprefetch"):
        mine, go = by.get((bench, "lsvfs")), by.get((bench, "go")) or by.get(("lookups", "go"))
        for system in ("lsvfs", "lsvfs_before", "go"):
            info = by.get((bench, system))
            if info is None:
                continue
            reqs = info["requests_per_round"]
            get = int(statistics.median(r.get("GET", 0) for r in reqs))
            lst = int(statistics.median(r.get("LIST", 0) for r in reqs))
            ratio = cpu_ratio = before = per_get = ""
            if system == "lsvfs" and go and bench != "lookups_noprefetch":
                ratio = f"{go['figure_median_s'] / info['figure_median_s']:.2f}x"
                cpu_ratio = f"{info['client_cpu_median_s'] / go['client_cpu_median_s']:.2f}"
                if "target_go_over_lsvfs" in info:
                    ok = (go["figure_median_s"] / info["figure_median_s"] >= info["target_go_over_lsvfs"]
                          and info["client_cpu_median_s"] <= go["client_cpu_median_s"])
                    ratio += f" (≥{info['target_go_over_lsvfs']:g}x, CPU ≤ Go: {'ok' if ok else 'MISS'})"
            if system == "lsvfs_before" and mine:
                before = f"{info['figure_median_s'] / mine['figure_median_s']:.2f}x"
            if "cpu_ms_per_get" in info:
                vals = [v for v in info["cpu_ms_per_get"] if v is not None]
                per_get = f"{statistics.median(vals):.2f}" if vals else ""
            label = NAMES[bench].format(l0=info.get("l0_files", "?"))
            print(f"| {label} | {system} | {info['figure_median_s']:.3f} | {info['client_cpu_median_s']:.3f} | "
                  f"{statistics.median(info['server_cpu_s']):.3f} | {get} / {lst} | {ratio} | {cpu_ratio} | {before} "
                  f"| {per_get} |")




def extras(path: str) -> None:
    """Open + lookups and the scan after them, where the lookups benchmarks recorded them."""
    with open(path) as fh:
        data = json.load(fh)
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "open_plus_lookups_s" in info:
            total = statistics.median(info["open_plus_lookups_s"])
            rows.append(f"| {NAMES[info['bench']]} | {info['system']} | {total:.3f} "
                        f"| {statistics.median(info['scan_s']):.3f} | {statistics.median(info['scan_cpu_s']):.3f} |")
    if rows:
        print("\n| workload | system | open + lookups s | scan after them s | scan CPU s |\n|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1])
    extras(sys.argv[1])
