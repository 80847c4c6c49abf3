"""Distance-threshold clustering (FaceNet's clustering use): connected components of the graph
whose edges join vectors closer than ``threshold`` (Euclidean), found with FAISS range search."""

from __future__ import annotations

import faiss
import numpy as np

from indexer.types import FloatArray


def cluster_by_distance(vectors: FloatArray, threshold: float) -> list[list[int]]:
    """Row indices grouped into clusters (singletons included), largest first."""
    n = len(vectors)
    if n == 0:
        return []
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    lims, _, neighbours = index.range_search(x, float(threshold) ** 2)  # L2 index works in squared units
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for i in range(n):
        for j in neighbours[lims[i] : lims[i + 1]]:
            ri, rj = find(i), find(int(j))
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=len, reverse=True)
