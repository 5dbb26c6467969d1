"""The restore plan over every level layout Litestream leaves behind."""

from __future__ import annotations

import pytest

from lsvfs import GapError, ReplicaError
from lsvfs.plan import Target, build, extend
from lsvfs.storage.base import FileInfo


def f(level: int, lo: int, hi: int) -> FileInfo:
    return FileInfo(level, lo, hi, 1000)


def spans(chain: list[FileInfo]) -> list[tuple[int, int, int]]:
    return [(x.level, x.min_txid, x.max_txid) for x in chain]


def test_snapshot_then_l0() -> None:
    files = [f(9, 1, 5), f(0, 6, 6), f(0, 7, 7), f(0, 1, 1), f(0, 2, 2)]
    assert spans(build(files)) == [(9, 1, 5), (0, 6, 6), (0, 7, 7)]


def test_compaction_covers_l0_retention_gap() -> None:
    # L0 files 2..9 deleted by retention; L1 compacted them.
    files = [f(9, 1, 1), f(1, 2, 5), f(1, 6, 9), f(0, 10, 10), f(0, 11, 11), f(2, 2, 9)]
    assert spans(build(files)) == [(9, 1, 1), (2, 2, 9), (0, 10, 10), (0, 11, 11)]


def test_prefers_furthest_reach_then_higher_level() -> None:
    files = [f(0, 1, 1), f(9, 1, 3), f(1, 1, 3), f(0, 2, 2), f(0, 3, 3)]
    assert spans(build(files)) == [(9, 1, 3)]


def test_real_gap_names_both_sides() -> None:
    files = [f(9, 1, 4), f(0, 5, 5), f(0, 8, 8)]
    with pytest.raises(GapError) as exc:
        build(files)
    assert (exc.value.before, exc.value.after) == (5, 8)
    assert "0000000000000005" in str(exc.value) and "0000000000000008" in str(exc.value)


def test_no_snapshot_is_a_gap_from_zero() -> None:
    with pytest.raises(GapError, match="nothing starts at TXID 1"):
        build([f(0, 3, 3), f(0, 4, 4)])


def test_empty_replica() -> None:
    with pytest.raises(ReplicaError, match="empty"):
        build([])


def test_txid_target_exact() -> None:
    files = [f(9, 1, 3), f(0, 1, 1), f(0, 2, 2), f(0, 3, 3), f(0, 4, 4), f(1, 1, 4)]
    assert spans(build(files, Target(txid=2))) == [(0, 1, 1), (0, 2, 2)]
    assert spans(build(files, Target(txid=4))) == [(1, 1, 4)]


def test_txid_inside_compacted_range_is_not_restorable() -> None:
    files = [f(9, 1, 1), f(1, 2, 9)]
    with pytest.raises(ReplicaError, match="not a restorable point"):
        build(files, Target(txid=5))
    with pytest.raises(ReplicaError, match="newer than the replica"):
        build(files, Target(txid=50))


def test_extend_from_position() -> None:
    l0 = [f(0, 8, 8), f(0, 9, 9), f(0, 11, 11)]
    assert spans(extend(l0, 7)) == [(0, 8, 8), (0, 9, 9)]
    assert extend(l0, 9) == []
