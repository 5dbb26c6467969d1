"""A bounded least-recently-used mapping, the one every keep-a-few cache uses.

Bounded by entry count, or by a weight per value (bytes, say). It takes no lock
of its own: its owner already holds one around every use, and a second lock
would only add an ordering to get wrong. `put` hands back what it evicted, so
the owner can release those (close a file, a handle) after leaving its lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar, overload

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


class LRU(Generic[K, V]):
    """At most `limit` entries, or at most `limit` total weight where `weigh` is given."""

    def __init__(self, limit: int, weigh: Callable[[V], int] | None = None) -> None:
        self.limit = limit
        self._weigh = weigh
        self._items: OrderedDict[K, V] = OrderedDict()
        self.used = 0
        """Total weight held (the entry count where there is no `weigh`)."""

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        """The value, now the most recently used; `default` where absent."""
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key]

    def peek(self, key: K) -> V | None:
        """The value without touching its recency."""
        return self._items.get(key)

    def put(self, key: K, value: V) -> list[tuple[K, V]]:
        """Keep `value` as the most recently used; returns the entries evicted
        to stay within the limit (oldest first)."""
        if key in self._items:
            self.used -= self._weight(self._items.pop(key))
        self._items[key] = value
        self.used += self._weight(value)
        evicted: list[tuple[K, V]] = []
        while self.used > self.limit and self._items:
            k, v = self._items.popitem(last=False)
            self.used -= self._weight(v)
            evicted.append((k, v))
        return evicted

    def pop(self, key: K) -> V | None:
        """Drop `key`; its value, or None where absent."""
        if key not in self._items:
            return None
        value = self._items.pop(key)
        self.used -= self._weight(value)
        return value

    def values(self) -> list[V]:
        return list(self._items.values())

    def clear(self) -> list[V]:
        """Empty it; returns what it held."""
        values = list(self._items.values())
        self._items.clear()
        self.used = 0
        return values

    def _weight(self, value: V) -> int:
        return 1 if self._weigh is None else self._weigh(value)
