"""A bounded, thread-safe LRU cache: every per-document state of the core (prefills, analyses, scores) lives in one."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """LRU map from a key (model, template, content hash, settings) to a value built once per key at a time."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def get_or_create(self, key: Hashable, create: Callable[[], V]) -> V:
        """Return the cached value for `key`, or build it with `create` (concurrent callers wait, not redo)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            value = create()
            with self._lock:
                self._key_locks.pop(key, None)
            self.put(key, value)
            return value

    def get(self, key: Hashable) -> V | None:
        """The cached value for `key` (marked as recently used), or None."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value: V) -> None:
        """Cache `value` under `key`, evicting the least recently used entries beyond capacity."""
        with self._lock:
            if self.capacity <= 0:
                return
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def values(self) -> list[V]:
        """The cached values, most recently used first."""
        with self._lock:
            return list(reversed(self._items.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        """Forget every cached value."""
        with self._lock:
            self._items.clear()
