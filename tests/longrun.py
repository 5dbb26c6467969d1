"""Figures and resource bounds of the long runs (tests marked stress, chaos or soak).

A long run is where a leak shows: a descriptor per poll, a thread per retry, a
snapshot nobody lets go of, a cache past its budget, RSS that climbs. The
`long_run` fixture (tests/conftest.py, autouse for those markers) watches the
process while the test runs, from a sampler thread, and after the test has
closed everything it asserts that:

- every replica the test opened is closed (its snapshots and cache go with it);
- no lsvfs thread and no thread the test started is left;
- descriptors are back to where they were when the run started (or when the
  test called `baseline()`, after starting a server it keeps for the session);
- at every sample, each open replica's cache held no more than its budget and
  its live snapshots stayed within what its threads and connections can pin;
- on a run of `FLAT_AFTER` seconds or more, RSS stopped growing: the growth
  from a third of the way to the end of the load (`end_of_load()`, else the
  end) stays under `RSS_SLACK` (short default runs are all start-up, so there
  the figures are only printed; so are they when the storage server runs in
  this process, `server_in_process`).

At the end it prints one line of figures (duration, commits, TXIDs, polls,
faults injected, reads checked, peak RSS, ...) and adds them to the test's
user properties; with LSVFS_LONGRUN_FIGURES=path it also appends them there as
JSON lines. Tests add their own counts with `count()`.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import lsvfs

SAMPLE_EVERY = 0.25
"""Seconds between samples: cheap (a /proc read, a few counters per replica)."""
MAX_SAMPLES = 4096
"""Samples kept; past it every other one is dropped, so memory stays bounded at any length."""
FLAT_AFTER = 60.0
"""Runs at least this long must show flat RSS (shorter ones are dominated by start-up)."""
RSS_SLACK = 48 << 20
"""RSS may grow this much from a third of the way through to the end (allocator noise, arenas)."""
SNAPSHOT_SLACK = 8
"""Live snapshots beyond threads + connections: the current one, a poll's new one, drains pending."""
FD_SLACK = 2
"""Descriptors the end may hold over the baseline (a log handler, an interpreter cache)."""
SETTLE_SECONDS = 15.0
"""How long the end checks wait for closing threads and descriptors to go."""


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> dict[int, str]:
    """What each open descriptor points at (a path, socket:[inode], pipe:[inode], ...)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile
            continue
    return out


class LongRun:
    """The watch over one long run: samples, figures, and the end checks."""

    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self.seconds = seconds
        self.figures: dict[str, Any] = {}
        self.problems: list[str] = []
        self.ltx_fds_left = 0
        self.load_ended: float | None = None
        self.server_in_process = False
        """Set by a test whose storage server runs in this process (moto, the GCS emulator): their
        own memory grows with every object written and deleted, so RSS growth is printed, not
        asserted (the replica's own bounds still are)."""
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._samples: list[tuple[float, int]] = []  # (seconds since start, RSS)
        self._replicas: dict[str, dict[str, int]] = {}  # url -> first/last TXID, polls, peaks
        self.peak_rss = 0
        self.peak_fds = 0
        self.peak_threads = 0
        self.t0 = time.monotonic()
        self.baseline()
        self._thread = threading.Thread(target=self._sample_loop, name="longrun-sampler", daemon=True)
        self._thread.start()

    # ---- what tests call ------------------------------------------------------------

    def baseline(self) -> None:
        """Take the descriptors and threads the end must return to (again: after the test
        started something that lives for the session, e.g. a storage server)."""
        self.base_fd_targets = fd_targets()
        self.base_fds = len(self.base_fd_targets)
        self.base_threads = set(threading.enumerate())

    def end_of_load(self) -> None:
        """The load is over: RSS growth is measured up to here, not over the final checks (a last
        listing through a fresh boto3 client alone loads ~10 MB of botocore's endpoint data)."""
        self.sample()
        self.load_ended = time.monotonic() - self.t0

    def count(self, **counts: int) -> None:
        """Add to the run's figures (commits=..., reads_checked=..., faults=...)."""
        with self._lock:
            for k, v in counts.items():
                self.figures[k] = self.figures.get(k, 0) + int(v)

    # ---- sampling ----------------------------------------------------------------

    def _sample_loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.sample()

    def sample(self) -> None:
        """One look at the process and at every open replica."""
        now = time.monotonic() - self.t0
        rss, fds, threads = rss_bytes(), fd_count(), threading.active_count()
        with self._lock:
            self.peak_rss, self.peak_fds = max(self.peak_rss, rss), max(self.peak_fds, fds)
            self.peak_threads = max(self.peak_threads, threads)
            self._samples.append((now, rss))
            if len(self._samples) > MAX_SAMPLES:
                del self._samples[1::2]
        for url, rep in lsvfs.open_replicas().items():
            try:
                txid = rep.current().txid
                polls = rep.poll_count
                cache = rep.cache.stats()
                alive = rep.c_snapshots()
                conns = rep.connections
            except Exception:  # noqa: BLE001 - closed under us: nothing to look at
                continue
            cbytes, cmax = int(cache.bytes), int(cache.max_bytes)
            with self._lock:
                r = self._replicas.setdefault(url, {"first_txid": txid, "last_txid": txid, "polls": 0,
                                                    "peak_cache_bytes": 0, "cache_max_bytes": cmax,
                                                    "peak_snapshots": 0})
                r["last_txid"] = max(r["last_txid"], txid)
                r["polls"] = max(r["polls"], polls)
                r["peak_cache_bytes"] = max(r["peak_cache_bytes"], cbytes)
                r["peak_snapshots"] = max(r["peak_snapshots"], alive)
                if cbytes > cmax:
                    self.violations.append(f"{url}: cache held {cbytes} bytes over its budget of {cmax} "
                                           f"at {now:.1f}s")
                bound = threads + conns + SNAPSHOT_SLACK
                if alive > bound:
                    self.violations.append(f"{url}: {alive} live snapshots at {now:.1f}s, more than "
                                           f"{threads} threads + {conns} connections + {SNAPSHOT_SLACK}")
                del self.violations[20:]

    # ---- the end ---------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Stop sampling, wait (bounded) for the test's leftovers to go, and return the
        figures; the problems found are in `problems()`."""
        self.sample()
        self._stop.set()
        self._thread.join(5)
        duration = time.monotonic() - self.t0
        problems: list[str] = []

        def settled(check: Callable[[], str | None]) -> None:
            deadline = time.monotonic() + SETTLE_SECONDS
            while True:
                msg = check()
                if msg is None:
                    return
                if time.monotonic() > deadline:
                    problems.append(msg)
                    return
                time.sleep(0.05)

        def replicas_closed() -> str | None:
            left = sorted(lsvfs.open_replicas())
            return f"replicas still open after the test: {left}" if left else None

        def threads_gone() -> str | None:
            left = [t.name for t in threading.enumerate() if t not in self.base_threads and t.is_alive()
                    and (not t.daemon or t.name.startswith("lsvfs")) and t is not threading.current_thread()]
            return f"threads left after the test: {left[:10]}" if left else None

        def fds_back() -> str | None:
            now = fd_targets()
            if len(now) > self.base_fds + FD_SLACK:
                # An injected fault's traceback can keep a connection in a reference cycle
                # until the collector runs: garbage, not a leak.
                gc.collect()
                now = fd_targets()
            new = sorted({t for fd, t in now.items() if self.base_fd_targets.get(fd) != t})
            self.ltx_fds_left = sum(t.endswith(".ltx") for t in new)
            if len(now) <= self.base_fds + FD_SLACK:
                return None
            return f"{len(now)} descriptors open after the test, {self.base_fds} at its start; new: {new[:12]}"

        settled(replicas_closed)
        settled(threads_gone)
        settled(fds_back)
        problems.extend(self.violations)
        with self._lock:
            samples = list(self._samples)
        rss_growth = 0
        load = self.load_ended if self.load_ended is not None else duration
        loaded = [(t, rss) for t, rss in samples if t <= load] or samples
        if loaded:
            third = next((rss for t, rss in loaded if t >= load / 3), loaded[-1][1])
            rss_growth = loaded[-1][1] - third
            if load >= FLAT_AFTER and rss_growth > RSS_SLACK and not self.server_in_process:
                problems.append(f"RSS grew {rss_growth >> 20} MiB from {load / 3:.0f}s to the end of the "
                                f"load ({load:.0f}s; bound {RSS_SLACK >> 20} MiB)")
        self.problems = problems
        reps = list(self._replicas.values())
        figures: dict[str, Any] = {
            "test": self.name,
            "seconds": round(duration, 1),
            **self.figures,
            "txids": sum(r["last_txid"] - r["first_txid"] for r in reps),
            "polls": sum(r["polls"] for r in reps),
            "peak_cache_bytes": max((r["peak_cache_bytes"] for r in reps), default=0),
            "peak_snapshots": max((r["peak_snapshots"] for r in reps), default=0),
            "peak_rss_mib": round(self.peak_rss / (1 << 20), 1),
            "rss_growth_last_two_thirds_mib": round(rss_growth / (1 << 20), 1),
            "rss_asserted": not self.server_in_process,
            "peak_fds": self.peak_fds,
            "fds_start_end": f"{self.base_fds}/{fd_count()}",
            "ltx_fds_left": self.ltx_fds_left,
            "peak_threads": self.peak_threads,
        }
        return figures

    def record(self, figures: dict[str, Any]) -> None:
        """Append the figures to the JSON-lines file LSVFS_LONGRUN_FIGURES names, if any."""
        path = os.environ.get("LSVFS_LONGRUN_FIGURES")
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps({**figures, "problems": self.problems}) + "\n")

    def problems_text(self) -> str:
        return "; ".join(self.problems)
