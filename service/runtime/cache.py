"""Embedding cache keyed by (encoder version, sha256 of the input): Redis when configured, else LRU.
The key and the interface are ``indexer.vector_cache``'s (migrations use the same cache).

A cached vector is exactly what the encoder produced for that input; keys include the encoder's
``name@version``, so an upgraded model never serves an old model's vector.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from indexer.vector_cache import VectorCache, input_key

__all__ = ["EmbeddingCache", "LruCache", "RedisCache", "input_key"]
log = logging.getLogger(__name__)
EmbeddingCache = VectorCache  # the interface both implementations below meet


class LruCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                value = self._data.get(key)
                if value is not None:
                    self._data.move_to_end(key)
                    self.hits += 1
                else:
                    self.misses += 1
                out.append(value)
        return out

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            for key, value in items.items():
                self._data[key] = value
                self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)


class RedisCache:
    """Shared by every server and worker on the same Redis; entries expire after ``ttl_s``."""

    def __init__(self, client: Any, prefix: str, ttl_s: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.prefix = f"{prefix}:emb:"
        self.ttl_s = ttl_s

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        try:
            values = self.client.mget([self.prefix + k for k in keys])
        except Exception as exc:  # a cache outage must never fail a request
            log.warning("embedding cache unavailable: %s", exc)
            return [None] * len(keys)
        return [np.frombuffer(v, dtype="<f4").copy() if v else None for v in values]

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, value in items.items():
                pipe.set(self.prefix + key, np.asarray(value, dtype="<f4").tobytes(), ex=self.ttl_s)
            pipe.execute()
        except Exception as exc:
            log.warning("embedding cache unavailable: %s", exc)
