"""The embedding cache: in-process LRU, and Redis shared across processes when configured."""

from __future__ import annotations

import uuid

import numpy as np
import redis

from service.runtime.cache import LruCache, RedisCache, input_key
from tests.conftest import RedisServer


def test_keys_separate_encoder_versions_and_inputs() -> None:
    assert input_key("m@1", "hello") != input_key("m@2", "hello")
    assert input_key("m@1", "hello") == input_key("m@1", b"hello")
    assert input_key("m@1", "hello") != input_key("m@1", "hello ")


def test_lru_evicts_the_least_recently_used() -> None:
    cache = LruCache(capacity=2)
    a, b, c = (np.full(3, v, dtype=np.float32) for v in (1, 2, 3))
    cache.put_many({"a": a, "b": b})
    assert cache.get_many(["a"])[0] is not None  # a is now the most recent
    cache.put_many({"c": c})
    got = cache.get_many(["a", "b", "c"])
    assert got[1] is None and np.array_equal(got[0], a) and np.array_equal(got[2], c)
    assert cache.hits == 3 and cache.misses == 1


def test_redis_cache_round_trips_bit_exact_and_survives_an_outage(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=1, socket_connect_timeout=1)
    cache = RedisCache(client, prefix=f"t{uuid.uuid4().hex[:6]}", ttl_s=60)
    vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    cache.put_many({"k1": vector})
    got = cache.get_many(["k1", "k2"])
    assert got[1] is None and got[0] is not None and got[0].tobytes() == vector.tobytes()
    other_process = RedisCache(redis.Redis.from_url(redis_server.url), prefix=cache.prefix.split(":")[0])
    shared = other_process.get_many(["k1"])[0]
    assert shared is not None and shared.tobytes() == vector.tobytes()
    redis_server.kill()
    try:
        assert cache.get_many(["k1"]) == [None]  # a cache outage is a miss, never an error
        cache.put_many({"k3": vector})
    finally:
        redis_server.start()
