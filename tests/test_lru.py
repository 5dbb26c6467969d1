"""lsvfs.lru: recency, both bounds, and what eviction hands back."""

from __future__ import annotations

from lsvfs.lru import LRU


def test_count_bound_evicts_the_least_recently_used() -> None:
    lru: LRU[str, int] = LRU(2)
    assert lru.put("a", 1) == [] and lru.put("b", 2) == []
    assert lru.get("a") == 1  # now "b" is the oldest
    assert lru.put("c", 3) == [("b", 2)]
    assert list(lru) == ["a", "c"] and len(lru) == 2 and lru.used == 2


def test_weight_bound_and_replacing_a_key() -> None:
    lru: LRU[str, bytes] = LRU(10, len)
    lru.put("a", b"x" * 4)
    lru.put("b", b"y" * 4)
    assert lru.put("a", b"z" * 6) == [] and lru.used == 10  # replaced, not counted twice
    assert lru.put("c", b"w") == [("b", b"y" * 4)] and lru.used == 7
    assert lru.put("big", b"q" * 11) == [("a", b"z" * 6), ("c", b"w"), ("big", b"q" * 11)] and lru.used == 0


def test_none_values_peek_pop_and_clear() -> None:
    lru: LRU[str, int | None] = LRU(3)
    lru.put("none", None)
    lru.put("one", 1)
    assert "none" in lru and lru.get("none") is None and lru.get("missing", 7) == 7
    assert lru.peek("one") == 1 and list(lru) == ["one", "none"]  # peek leaves the order alone
    assert lru.pop("none") is None and "none" not in lru and lru.used == 1
    assert lru.clear() == [1] and len(lru) == 0 and lru.used == 0
