"""The stored vectors of search hits, for a query that asked for them (``with_vector``)."""

from __future__ import annotations

import numpy as np

from indexer.collection import Collection, Hit
from indexer.errors import ItemNotFound


def hit_vectors(collection: Collection, hits: list[Hit]) -> list[np.ndarray | None]:
    """Each hit's stored vector (worker thread: it reads the store). None for an item deleted between
    the search and this read: the hit was right when it was found, so it is answered without a vector
    rather than failing the whole search with a 404."""
    out: list[np.ndarray | None] = []
    for hit in hits:
        try:
            out.append(collection.vector_of(hit.id))
        except ItemNotFound:
            out.append(None)
    return out
