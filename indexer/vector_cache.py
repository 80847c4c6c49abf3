"""The embedding cache's key, interface and lookup/fill (``cached``, ``remember``), shared by the query
path (``service.runtime.encoders``) and a migration's calibration encoding (``indexer.upgrade.bridging``).
A vector is cached under the encoder's ``name@version`` and the sha256 of the input, so an upgraded model
never gets an old model's vector. The implementations (in-process LRU, Redis) live in
``service.runtime.cache``; ``service.app`` hands the same one to both users."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


def input_key(encoder: str, value: str | bytes) -> str:
    data = value.encode() if isinstance(value, str) else value
    return f"{encoder}:{hashlib.sha256(data).hexdigest()}"


def cache_key(encoder: str, value: Any) -> str | None:
    """``input_key`` for text (records included: the service passes their canonical JSON text) and image
    bytes; None for anything else, e.g. a record an evaluation set gives as a mapping: not cached."""
    return input_key(encoder, value) if isinstance(value, (str, bytes)) else None


class VectorCache(Protocol):
    def get_many(self, keys: list[str]) -> list[np.ndarray | None]: ...

    def put_many(self, items: dict[str, np.ndarray]) -> None: ...


def cached(cache: VectorCache | None, keys: Sequence[str | None]) -> list[np.ndarray | None]:
    """The cached vector of each key; None where it is not cached or has no key (one ``get_many``)."""
    out: list[np.ndarray | None] = [None] * len(keys)
    asked = [i for i, key in enumerate(keys) if key is not None]
    if cache is not None and asked:
        for i, vector in zip(asked, cache.get_many([str(keys[i]) for i in asked]), strict=True):
            out[i] = vector
    return out


def remember(cache: VectorCache | None, keys: Sequence[str | None], vectors: dict[int, np.ndarray]) -> None:
    """Cache ``vectors[i]`` under ``keys[i]`` (rows without a key are skipped; one ``put_many``)."""
    made = {str(keys[i]): vector for i, vector in vectors.items() if keys[i] is not None}
    if cache is not None and made:
        cache.put_many(made)
