"""Benchmarks of the C core against lz4.block (run with --benchmark-enable).

    pytest bench/bench_core.py --benchmark-enable

Each decode benchmark records MB/s of decoded page bytes in extra_info, so
ours and lz4.block.decompress can be compared on the same pages.
"""

from __future__ import annotations

import os
import random
import struct
import sys

import lz4.block
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from core_helpers import sqlite_like_page  # noqa: E402

from lsvfs import core, pagetable  # noqa: E402

PS = 4096
N_PAGES = 64


def _pages(kind: str) -> list[bytes]:
    rnd = random.Random(42)
    if kind == "random":
        return [rnd.randbytes(PS) for _ in range(N_PAGES)]
    return [sqlite_like_page(rnd, PS) for _ in range(N_PAGES)]


def _frames(pages: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    blocks = [lz4.block.compress(p, store_size=False) for p in pages]
    frames = [struct.pack(">IHI", i + 1, 1, len(b)) + b for i, b in enumerate(blocks)]
    return blocks, frames


def _mbps(benchmark, nbytes: int) -> None:
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["MB/s"] = round(nbytes / mean / 1e6, 1)


@pytest.mark.parametrize("kind", ["sqlite", "random"])
def test_bench_frame_decode_ours(benchmark, kind):
    pages = _pages(kind)
    _, frames = _frames(pages)

    def run():
        for i, f in enumerate(frames):
            core.decode_frame(f, i + 1, PS)

    benchmark(run)
    assert core.decode_frame(frames[3], 4, PS) == pages[3]
    _mbps(benchmark, PS * N_PAGES)
    benchmark.extra_info["ratio"] = round(sum(map(len, frames)) / (PS * N_PAGES), 3)


@pytest.mark.parametrize("kind", ["sqlite", "random"])
def test_bench_frame_decode_lz4_block(benchmark, kind):
    """The same pages through lz4.block.decompress (what a frame decode must match)."""
    pages = _pages(kind)
    blocks, _ = _frames(pages)

    def run():
        for b in blocks:
            lz4.block.decompress(b, uncompressed_size=PS)

    benchmark(run)
    _mbps(benchmark, PS * N_PAGES)


@pytest.mark.parametrize("kind", ["sqlite", "random"])
def test_bench_lz4_block_decode_ours(benchmark, kind):
    """Bare block decode, no frame header: isolates the LZ4 loop."""
    pages = _pages(kind)
    blocks, _ = _frames(pages)

    def run():
        for b in blocks:
            core.lz4_block_decode(b, PS)

    benchmark(run)
    _mbps(benchmark, PS * N_PAGES)


@pytest.mark.parametrize("kind", ["sqlite", "random"])
def test_bench_frames_batch_64(benchmark, kind):
    """64 adjacent frames decoded in one C call (read-ahead path)."""
    pages = _pages(kind)
    _, frames = _frames(pages)
    buf = b"".join(frames)
    entries, off = [], 0
    for i, f in enumerate(frames):
        entries.append((i + 1, off, len(f)))
        off += len(f)
    ents = core.IndexEntries.from_tuples(entries)

    out = benchmark(core.decode_frames, buf, 0, ents, PS)
    assert out == pages
    _mbps(benchmark, PS * N_PAGES)


def test_bench_crc64_1mib(benchmark):
    data = random.Random(1).randbytes(1 << 20)
    benchmark(core.crc64, data)
    _mbps(benchmark, len(data))


def test_bench_page_table_clone_apply(benchmark):
    """New snapshot of a 1M-page table after a 10-page commit."""
    t = pagetable.PageTable()
    t.apply(1, core.IndexEntries.from_tuples((p, 100 + p, 50) for p in range(1, 1_000_001)))
    ten = core.IndexEntries.from_tuples((p, 7, 50) for p in range(1, 1_000_000, 100_000))

    def run():
        c = t.clone()
        c.apply(2, ten)
        return c

    c = benchmark(run)
    benchmark.extra_info["memory_bytes_1M"] = t.memory
    benchmark.extra_info["clone_unique_bytes"] = c.unique_memory
