"""Pick the metadata store from configuration: shared Redis when a URL is set, else SQLite."""

from __future__ import annotations

import pathlib

from indexer.store.base import MetadataStore


def open_store(redis_url: str | None, data_dir: pathlib.Path, redis_prefix: str = "ers") -> MetadataStore:
    """Redis when ``redis_url`` is given (several replicas share state), otherwise an embedded
    SQLite file in the data directory so a single node needs no extra service."""
    if redis_url:
        # Imported lazily so a SQLite-only deployment never needs redis-py importable.
        from indexer.store.redis import RedisStore

        return RedisStore(redis_url, prefix=redis_prefix)
    from indexer.store.sqlite import SqliteStore

    data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteStore(data_dir / "meta.sqlite3")
