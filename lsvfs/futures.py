"""The one shape every single-flight in lsvfs shares: the first caller for a
key owns a Future and settles it, the others wait on it."""

from __future__ import annotations

from concurrent.futures import Future
from typing import TypeVar

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
