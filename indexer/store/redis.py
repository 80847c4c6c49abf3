"""Redis implementation of ``MetadataStore``: shared state for several API replicas.

Key layout (everything under ``prefix`` so several deployments can share one Redis):

* ``{prefix}:collections``        hash  name -> CollectionConfig JSON
* ``{prefix}:c:{name}:items``     hash  item id -> packed item blob (see ``pack_item``)
* ``{prefix}:offsets``            hash  name -> applied log offset (decimal)
* ``{prefix}:doc:{namespace}``    hash  key -> JSON document

Every network failure surfaces as ``StoreUnavailable`` after short socket timeouts and at most one
immediate reconnect, so the API answers 503 quickly instead of hanging while Redis is down.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from indexer.errors import AlreadyExists, InsufficientStorage, StoreUnavailable
from indexer.store.redis_jobs import RedisJobsMixin
from indexer.types import CollectionConfig, ItemRecord

# Blob: header, then encoder_version (utf-8), payload JSON (utf-8), vector (little-endian f4).
# Header fields: format version, int_id, flags, and the byte length of each of the three parts.
_HEADER = struct.Struct("<BqBHII")
_FORMAT = 1
_HAS_VERSION, _HAS_PAYLOAD, _HAS_VECTOR = 1, 2, 4
_VEC_DTYPE = np.dtype("<f4")


def pack_item(item: ItemRecord) -> bytes:
    """Serialise an item without pickle: a fixed header plus three length-prefixed parts."""
    version = b"" if item.encoder_version is None else item.encoder_version.encode()
    payload = b"" if item.payload is None else _dumps(item.payload).encode()
    vector = b"" if item.vector is None else np.asarray(item.vector, dtype=_VEC_DTYPE).tobytes()
    flags = (
        (_HAS_VERSION if item.encoder_version is not None else 0)
        | (_HAS_PAYLOAD if item.payload is not None else 0)
        | (_HAS_VECTOR if item.vector is not None else 0)
    )
    header = _HEADER.pack(_FORMAT, int(item.int_id), flags, len(version), len(payload), len(vector))
    return b"".join((header, version, payload, vector))


def unpack_item(item_id: str, blob: bytes, with_vector: bool) -> ItemRecord:
    fmt, int_id, flags, n_ver, n_pay, n_vec = _HEADER.unpack_from(blob)
    if fmt != _FORMAT:
        raise ValueError(f"item '{item_id}': unknown blob format {fmt}")
    pos = _HEADER.size
    version = blob[pos : pos + n_ver].decode() if flags & _HAS_VERSION else None
    pos += n_ver
    payload = json.loads(blob[pos : pos + n_pay]) if flags & _HAS_PAYLOAD else None
    pos += n_pay
    vector = None
    if with_vector and flags & _HAS_VECTOR:
        vector = np.frombuffer(blob, dtype=_VEC_DTYPE, count=n_vec // 4, offset=pos).astype(np.float32)
    return ItemRecord(id=item_id, int_id=int_id, vector=vector, payload=payload, encoder_version=version)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class RedisStore(RedisJobsMixin):
    """``MetadataStore`` over Redis hashes; thread-safe through redis-py's connection pool."""

    def __init__(
        self,
        url: str,
        prefix: str = "ers",
        socket_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        retries: int = 1,
    ) -> None:
        self.prefix = prefix
        parts = urlsplit(url)  # for messages only: never echo credentials
        self._where = f"{parts.hostname or parts.path}:{parts.port or 6379}"
        # One immediate retry lets a pooled connection that died with a restarted server
        # reconnect transparently; more (or backoff) would only delay the 503.
        self._r = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), retries),
            decode_responses=False,
        )

    @property
    def client(self) -> redis.Redis:
        """The underlying client, shared with the embedding cache (same server, same prefix)."""
        return self._r

    # -- keys and error mapping --------------------------------------------------------------
    def _items_key(self, name: str) -> str:
        return f"{self.prefix}:c:{name}:items"

    @property
    def _collections_key(self) -> str:
        return f"{self.prefix}:collections"

    @property
    def _offsets_key(self) -> str:
        return f"{self.prefix}:offsets"

    def _doc_key(self, namespace: str) -> str:
        return f"{self.prefix}:doc:{namespace}"

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"redis at {self._where} unavailable ({what}): {exc}") from exc
        except redis.exceptions.ResponseError as exc:
            # Refusals of a write that Redis did not apply: out of memory (maxmemory), or unable to
            # persist (MISCONF: its disk is full or failing).
            # redis-py raises OutOfMemoryError (absent from the type stubs) with the "OOM" code stripped
            if "when used memory > 'maxmemory'" in str(exc):
                raise InsufficientStorage(f"redis at {self._where} is out of memory ({what}): {exc}") from exc
            if str(exc).startswith("MISCONF"):
                raise StoreUnavailable(f"redis at {self._where} refuses writes ({what}): {exc}") from exc
            raise

    # -- collections -------------------------------------------------------------------------
    def create_collection(self, config: CollectionConfig) -> None:
        text = _dumps(config.to_json())
        with self._guard("create_collection"):
            created = self._r.hsetnx(self._collections_key, config.name, text)
        if not created:
            raise AlreadyExists(f"collection '{config.name}' already exists")

    def get_collection(self, name: str) -> CollectionConfig | None:
        with self._guard("get_collection"):
            raw = self._r.hget(self._collections_key, name)
        return None if raw is None else CollectionConfig.from_json(json.loads(raw))

    def collection_names(self) -> list[str]:
        with self._guard("collection_names"):
            return sorted(n.decode() for n in self._r.hkeys(self._collections_key))

    def list_collections(self) -> list[CollectionConfig]:
        with self._guard("list_collections"):
            raw = self._r.hgetall(self._collections_key)
        configs = [CollectionConfig.from_json(json.loads(v)) for v in raw.values()]
        return sorted(configs, key=lambda c: c.name)

    def delete_collection(self, name: str) -> bool:
        with self._guard("delete_collection"):
            pipe = self._r.pipeline(transaction=True)
            pipe.hdel(self._collections_key, name)
            pipe.delete(self._items_key(name))
            pipe.hdel(self._offsets_key, name)
            removed, _, _ = pipe.execute()
        return bool(removed)

    # -- items -------------------------------------------------------------------------------
    def apply(self, name: str, upserts: Sequence[ItemRecord], deletes: Sequence[str], offset: int) -> None:
        """Upserts first, then deletes, then the offset; one MULTI/EXEC. Re-running after an
        ambiguous failure (EXEC sent, reply lost) is harmless: every step is idempotent."""
        packed = {item.id: pack_item(item) for item in upserts}  # fail on bad input before I/O
        key = self._items_key(name)
        with self._guard("apply"):
            pipe = self._r.pipeline(transaction=True)
            if packed:
                pipe.hset(key, mapping=packed)  # type: ignore[arg-type]
            if deletes:
                pipe.hdel(key, *deletes)
            pipe.hset(self._offsets_key, name, int(offset))
            pipe.execute()

    def applied_offset(self, name: str) -> int:
        with self._guard("applied_offset"):
            raw = self._r.hget(self._offsets_key, name)
        return 0 if raw is None else int(raw)

    def get_item(self, name: str, item_id: str, with_vector: bool = False) -> ItemRecord | None:
        with self._guard("get_item"):
            blob = self._r.hget(self._items_key(name), item_id)
        return None if blob is None else unpack_item(item_id, blob, with_vector)

    def get_items(self, name: str, item_ids: Sequence[str], with_vectors: bool = False) -> list[ItemRecord | None]:
        if not item_ids:
            return []
        with self._guard("get_items"):
            blobs = self._r.hmget(self._items_key(name), list(item_ids))
        return [None if blob is None else unpack_item(i, blob, with_vectors)
                for i, blob in zip(item_ids, blobs, strict=True)]  # fmt: skip

    def iter_items(self, name: str, with_vectors: bool = False, batch: int = 1000) -> Iterator[ItemRecord]:
        """HSCAN, not HGETALL: bounded memory and no long blocking command on the server. HSCAN
        may repeat an entry while the hash is rehashed, so ids already yielded are skipped."""
        key, cursor, seen = self._items_key(name), 0, set[bytes]()
        while True:
            with self._guard("iter_items"):
                cursor, chunk = self._r.hscan(key, cursor, count=batch)
            for raw_id, blob in chunk.items():
                if raw_id not in seen:
                    seen.add(raw_id)
                    yield unpack_item(raw_id.decode(), blob, with_vectors)
            if cursor == 0:
                return

    def count(self, name: str) -> int:
        with self._guard("count"):
            return int(self._r.hlen(self._items_key(name)))

    # -- docs --------------------------------------------------------------------------------
    def put_doc(self, namespace: str, key: str, doc: dict[str, Any]) -> None:
        text = _dumps(doc)
        with self._guard("put_doc"):
            self._r.hset(self._doc_key(namespace), key, text)

    def get_doc(self, namespace: str, key: str) -> dict[str, Any] | None:
        with self._guard("get_doc"):
            raw = self._r.hget(self._doc_key(namespace), key)
        return None if raw is None else dict(json.loads(raw))

    def delete_doc(self, namespace: str, key: str) -> bool:
        with self._guard("delete_doc"):
            return bool(self._r.hdel(self._doc_key(namespace), key))

    def list_docs(self, namespace: str) -> list[dict[str, Any]]:
        with self._guard("list_docs"):
            raw = self._r.hgetall(self._doc_key(namespace))
        return [dict(json.loads(raw[k])) for k in sorted(raw)]

    # -- lifecycle ---------------------------------------------------------------------------
    def ping(self) -> None:
        with self._guard("ping"):
            self._r.ping()

    def close(self) -> None:
        self._r.close()
