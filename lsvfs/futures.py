"""Small shapes of concurrency lsvfs shares: the single-flight (the first
caller for a key owns a Future and settles it, the others wait on it), and
tasks on a pool whose waiters never deadlock it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def claim(table: dict[K, Future[V]], key: K) -> tuple[Future[V], bool]:
    """With `table`'s lock held: the key's Future, and whether this caller
    created it (and so must settle it, and usually remove it)."""
    fut = table.get(key)
    if fut is not None:
        return fut, False
    fut = table[key] = Future()
    return fut, True


class Task(Generic[V]):
    """A call handed to a pool whose `result()` runs it in the waiting thread
    if no worker has started it yet. Waiting therefore never needs a free
    worker: a task may wait on tasks of its own pool, even a saturated one,
    without deadlock, and a caller is never idle while its work queues."""

    __slots__ = ("_fn", "_fut")

    def __init__(self, pool: Executor, fn: Callable[[], V]) -> None:
        self._fn = fn
        self._fut = pool.submit(fn)

    def result(self) -> V:
        if self._fut.cancel():
            return self._fn()
        return self._fut.result()

    def cancel(self) -> None:
        """Drop the call if no worker has started it (the caller gave up on it)."""
        self._fut.cancel()


def run_all(pool: Executor, calls: Iterable[Callable[[], V]]) -> list[V]:
    """Every call's result, in order, the calls spread over `pool` (see Task)."""
    tasks = [Task(pool, fn) for fn in calls]
    try:
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            t.cancel()
