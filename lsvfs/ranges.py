"""Which ranged reads bring a set of pages: frames grouped by file, nearby
frames merged into one request.

A request may span frames nobody asked for (pages a newer file overrides,
pages already cached): reading a few unwanted bytes costs far less than a
second round trip, so runs are cut only by a wide gap or the size cap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .core import IndexEntries

Location = tuple[int, int, int]  # (slot, frame offset, frame size)


@dataclass(frozen=True)
class Range:
    """One ranged read: bytes [start, end) of the file in `slot`, and the
    frames in it to decode."""

    slot: int
    start: int
    end: int
    entries: IndexEntries

    @property
    def length(self) -> int:
        return self.end - self.start


def plan(wanted: Iterable[tuple[int, Location]], max_request: int, max_gap: int) -> list[Range]:
    """Ranged reads covering the frames `wanted` ((pgno, location) pairs): per
    file in offset order, a frame joins the previous request unless the gap
    before it exceeds `max_gap` or the request would pass `max_request` bytes."""
    by_slot: dict[int, list[tuple[int, int, int]]] = {}
    for pgno, (slot, offset, size) in wanted:
        by_slot.setdefault(slot, []).append((offset, size, pgno))
    out: list[Range] = []
    for slot in sorted(by_slot):
        frames = sorted(by_slot[slot])
        group: list[tuple[int, int, int]] = []
        for frame in frames:
            if group:
                start, end = group[0][0], group[-1][0] + group[-1][1]
                if frame[0] - end > max_gap or frame[0] + frame[1] - start > max_request:
                    out.append(_range(slot, group))
                    group = []
            group.append(frame)
        if group:
            out.append(_range(slot, group))
    return out


def _range(slot: int, group: list[tuple[int, int, int]]) -> Range:
    entries = IndexEntries.from_tuples((pgno, offset, size) for offset, size, pgno in group)
    return Range(slot, group[0][0], group[-1][0] + group[-1][1], entries)
