"""The descriptors the C read path opens on a directory replica's LTX files go with the
replica (found by the long runs: tests/longrun.py saw .ltx descriptors left after s32 ran
for 120 s). They lived until the garbage collector found the released Replica, which a
replica acquired before its connection (as a server holds one) left in a cycle.
"""

from __future__ import annotations

import os
from contextlib import closing
from pathlib import Path

from synthetic import DirTarget, RawPrimary, open_replica

import lsvfs


def ltx_descriptors(root: Path) -> list[str]:
    """This process's open descriptors on LTX files under `root`."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(root)) and target.endswith(".ltx"):
            out.append(target.rsplit("/", 1)[-1])
    return sorted(out)


def test_a_released_replica_leaves_no_descriptor_of_its_connections(tmp_path: Path) -> None:
    raw = RawPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    raw.write(range(1, 2001))  # 2 MB: read by ranges, not whole
    with open_replica(raw.url, poll_interval=0), closing(lsvfs.connect(raw.url)) as conn:
        conn.execute("PRAGMA litestream_txid").fetchall()
    assert not lsvfs.open_replicas()
    assert ltx_descriptors(tmp_path) == []
