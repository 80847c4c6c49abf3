"""The embedding cache's key and interface, shared by the query path (``service.runtime.encoders``) and
a migration's calibration encoding (``indexer.upgrade.bridging``). A vector is cached under the encoder's
``name@version`` and the sha256 of the input, so an upgraded model never gets an old model's vector. The
implementations (in-process LRU, Redis) live in ``service.runtime.cache``; ``service.app`` hands the
same one to both users."""

from __future__ import annotations

import hashlib
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
