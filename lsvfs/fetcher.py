"""Ranged reads issued in parallel ahead of the readers: read-ahead windows,
prefetch and hydration share one small pool of workers per replica.

Jobs run in priority order. A reader that misses a page which a queued job
would bring takes that job over and runs it at once (the page it waits for
jumps the queue); a job already running is waited for, so no page is
fetched twice and no reader waits behind background work.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

URGENT = 0
"""A reader waits for it now."""
AHEAD = 1
"""Read-ahead of a sequential reader."""
PREFETCH = 2
HYDRATE = 3


@dataclass(eq=False)
class Job:
    """One ranged read and what to do with its bytes. Jobs that fill the page
    cache name the file bytes they cover, so readers can find them."""

    run: Callable[[], None]
    priority: int
    slot: int = 0
    start: int = 0
    end: int = 0
    future: Future[None] = field(default_factory=Future)
    started: bool = False

    def covers(self, slot: int, offset: int) -> bool:
        return self.slot == slot and self.start <= offset < self.end


class Fetcher:
    """At most `workers` jobs at once, on daemon threads started on demand."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._name = name
        self._cv = threading.Condition()
        self._heap: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._visible: dict[int, list[Job]] = {}  # slot -> cache-filling jobs queued or running
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False
        self.done = 0
        self.failed = 0

    def submit(self, job: Job) -> Job:
        with self._cv:
            if self._closed:
                job.future.cancel()
                return job
            heapq.heappush(self._heap, (job.priority, next(self._seq), job))
            if job.slot:
                self._visible.setdefault(job.slot, []).append(job)
            if self._idle == 0 and len(self._threads) < self._workers:
                t = threading.Thread(target=self._work, name=f"lsvfs-fetch {self._name}", daemon=True)
                self._threads.append(t)
                t.start()
            else:
                self._cv.notify()
        return job

    def find(self, slot: int, offset: int) -> Job | None:
        """The queued or running job that reads the frame at (slot, offset)."""
        with self._cv:
            for job in self._visible.get(slot, ()):
                if job.covers(slot, offset):
                    return job
        return None

    def serve(self, slot: int, offset: int) -> bool:
        """Bring the frame at (slot, offset) if a job reads it: run that job
        here if it is still queued, else wait for it. False if no job does."""
        job = self.find(slot, offset)
        if job is None:
            return False
        with self._cv:
            mine = not job.started
            job.started = True
        if mine:
            self._run(job)
        else:
            # A failed or cancelled job: the reader falls back to its own read, which reports.
            with contextlib.suppress(Exception, CancelledError):
                job.future.result()
        return True

    def pending(self) -> int:
        with self._cv:
            return sum(1 for _, _, job in self._heap if not job.started)

    def close(self, wait: float) -> None:
        """Cancel queued jobs and let running ones end (waiting up to `wait`
        seconds for them: a job stuck in storage finishes on its own)."""
        with self._cv:
            self._closed = True
            for _, _, job in self._heap:
                if not job.started:
                    job.started = True
                    job.future.cancel()
            self._heap.clear()
            self._visible.clear()
            self._cv.notify_all()
            threads = list(self._threads)
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout=wait / max(1, len(threads)))

    def _work(self) -> None:
        while True:
            with self._cv:
                job = None
                while job is None:
                    while self._heap and self._heap[0][2].started:
                        heapq.heappop(self._heap)
                    if self._closed:
                        return
                    if self._heap:
                        job = heapq.heappop(self._heap)[2]
                        job.started = True
                    else:
                        self._idle += 1
                        self._cv.wait()
                        self._idle -= 1
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            job.run()
        except BaseException as exc:  # noqa: BLE001 - kept on the future; background work must not die
            self.failed += 1
            log.debug("%s: background read failed: %s", self._name, exc)
            job.future.set_exception(exc)
        else:
            self.done += 1
            job.future.set_result(None)
        finally:
            if job.slot:
                with self._cv:
                    jobs = self._visible.get(job.slot, [])
                    if job in jobs:
                        jobs.remove(job)
                    if not jobs:
                        self._visible.pop(job.slot, None)
