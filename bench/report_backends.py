"""Markdown table of bench/test_bench_backends.py results: median ms per backend
and operation, with the ratio to S3 (target: every backend ≤ 1.5x).

    python bench/report_backends.py /tmp/bench-backends.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

OPS = ("open", "cold_full_scan", "cold_point_lookups")


def table(path: str) -> str:
    data = json.load(open(path))
    med: dict[str, dict[str, float]] = defaultdict(dict)
    delay = None
    rounds = max((b["stats"]["rounds"] for b in data["benchmarks"]), default=0)
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        med[info["backend"]][info["op"]] = b["stats"]["median"] * 1000
        delay = info.get("one_way_delay_ms", delay)
    s3 = med.get("s3", {})
    lines = [f"one-way added latency {delay:g} ms; median of {rounds} rounds, ms (ratio to S3)", "",
             "| backend | " + " | ".join(OPS) + " |", "|---|" + "---|" * len(OPS)]
    for backend in sorted(med, key=lambda k: (k != "s3", k)):
        cells = []
        for op in OPS:
            v = med[backend].get(op)
            r = f" ({v / s3[op]:.2f}x)" if v is not None and s3.get(op) else ""
            cells.append("-" if v is None else f"{v:,.0f}{r}")
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
