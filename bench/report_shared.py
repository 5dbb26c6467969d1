"""Issue 17's table from bench/test_bench_shared.py results.

    python bench/report_shared.py /tmp/shared.json

Per N (1, 2, 4, 8 reader processes) without `shared_dir`, with it, and with
it and hydration (one shared page file): requests
on the wire (and as the processes' storage clients counted them), bytes
downloaded, each against N = 1 of the same kind (target with shared_dir: N = 8
≤ 1.2x); the largest RSS of the processes after the first against page table
+ cache budget + 30 MiB; aggregate lookups/s against N = 1 (target ≥ 1.7x for
N ≥ 2), next to local SQLite's own ratio for the same burst in N processes;
then the leader failover in poll intervals (target ≤ 2).
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

MIB = 1 << 20


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


MODES = {"no": "no", "yes": "yes", "hydrated": "yes + hydration"}


def readers_table(by: dict[tuple[int, str], dict[str, Any]]) -> list[str]:
    lines = ["| readers | shared_dir | round s | requests on the wire (clients) | × N=1 | bytes | × N=1 "
             "| RSS after the first, MiB (target) | lookups/s | × N=1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        shared = mode != "no"
        one = by.get((1, mode))
        for n in (1, 2, 4, 8):
            info = by.get((n, mode))
            if info is None:
                continue
            targets = info["targets"]
            nbytes = sum(info["bytes"])
            req_ratio = bytes_ratio = look_ratio = ""
            if one is not None and n > 1:
                r = info["wire_requests"] / max(one["wire_requests"], 1)
                b = nbytes / max(sum(one["bytes"]), 1)
                req_ratio, bytes_ratio = f"{r:.2f}x", f"{b:.2f}x"
                if shared and n == 8:
                    req_ratio += f" (≤{targets['requests_ratio']:g}x {verdict(r <= targets['requests_ratio'])})"
                    bytes_ratio += f" (≤{targets['bytes_ratio']:g}x {verdict(b <= targets['bytes_ratio'])})"
                lr = info["lookups_per_s"] / one["lookups_per_s"]
                look_ratio = f"{lr:.2f}x (≥{targets['lookups_ratio']:g}x {verdict(lr >= targets['lookups_ratio'])})"
            rss = ""
            if n > 1:
                later = range(1, n)
                worst = max(later, key=lambda i: info["rss_bytes"][i] - _rss_target(info, i))
                ok = all(info["rss_bytes"][i] <= _rss_target(info, i) for i in later)
                rss = (f"{info['rss_bytes'][worst] / MIB:.1f} ({_rss_target(info, worst) / MIB:.1f} "
                       f"{verdict(ok)})")
            lines.append(f"| {n} | {MODES[mode]} | {info['wall_s']:.1f} "
                         f"| {info['wire_requests']} ({sum(info['requests'])}) "
                         f"| {req_ratio} | {nbytes / 1e6:.2f} MB | {bytes_ratio} | {rss} "
                         f"| {info['lookups_per_s']:.0f} | {look_ratio} |")
    return lines


def scaling_table(by: dict[tuple[int, str], dict[str, Any]], local: dict[int, dict[str, Any]]) -> list[str]:
    """Aggregate lookups/s against N = 1: local SQLite's, and lsvfs's in each mode."""
    lines = ["| readers | local SQLite lookups/s | × N=1 | lsvfs shared_dir × N=1 | lsvfs shared_dir + hydration × N=1 "
             "| lsvfs alone × N=1 |", "|---|---|---|---|---|---|"]

    def ratio(table: dict[Any, dict[str, Any]], key: Any, one: Any) -> str:
        if key not in table or one not in table:
            return ""
        return f"{table[key]['lookups_per_s'] / table[one]['lookups_per_s']:.2f}x"

    for n in sorted(local):
        lines.append(f"| {n} | {local[n]['lookups_per_s']:.0f} | {ratio(local, n, 1)} "
                     f"| {ratio(by, (n, 'yes'), (1, 'yes'))} | {ratio(by, (n, 'hydrated'), (1, 'hydrated'))} "
                     f"| {ratio(by, (n, 'no'), (1, 'no'))} |")
    return lines


def _rss_target(info: dict[str, Any], i: int) -> int:
    """The issue's RSS target for process i: its page table + its cache budget + 30 MiB."""
    return int(info["page_table_bytes"][i] + info["cache_max_bytes"][i] + info["rss_slack_bytes"])


def main(path: str) -> None:
    with open(path) as fh:
        data = json.load(fh)
    by: dict[tuple[int, str], dict[str, Any]] = {}
    local: dict[int, dict[str, Any]] = {}
    failover: dict[str, Any] | None = None
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if info.get("bench") == "readers":
            by[(info["n"], info["mode"])] = info
        elif info.get("bench") == "local":
            local[info["n"]] = info
        elif info.get("bench") == "failover":
            failover = info
    if by:
        first = next(iter(by.values()))
        print(f"{first['db_bytes'] / 1e6:.1f} MB database, poll interval {first['poll_interval_s']:g} s, "
              f"{first['poll_seconds']:g} s of polling, {first['lookups_per_process']} lookups per process, "
              f"{first['delay_ms']:g} ms proxy delay each way\n")
        print("\n".join(readers_table(by)))
    if local:
        print("\nThe same burst in local SQLite, N processes on a copy of the database:\n")
        print("\n".join(scaling_table(by, local)))
    if failover is not None:
        intervals = failover["failover_intervals"]
        target = failover["targets"]["failover_intervals"]
        print(f"\nleader failover: median {statistics.median(intervals):.2f}, worst {max(intervals):.2f} poll "
              f"intervals of {failover['poll_interval_s']:g} s over {len(intervals)} rounds "
              f"(≤{target:g} {verdict(max(intervals) <= target)})")


if __name__ == "__main__":
    main(sys.argv[1])
