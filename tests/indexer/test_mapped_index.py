"""A snapshot searched from its mapped file plus an overlay of newer rows (``indexer.mapped_index``):
the same answers as the index it was written from, the file's pages mapped rather than copied, newer
rows and deletes kept apart from the read-only mapping."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.mapped_index import MappedIndex, maybe_mappable
from indexer.vector_index import VectorIndex, prepare

DIM = 24


def data(n: int, seed: int) -> np.ndarray:
    return prepare(np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32), "cosine")


def written(tmp_path: Path, spec: str, n: int = 500) -> tuple[VectorIndex, Path]:
    index = VectorIndex(DIM, "cosine", spec)
    index.add(np.arange(n, dtype=np.int64), data(n, seed=1))
    path = tmp_path / "index.faiss"
    path.write_bytes(index.serialize())
    return index, path


def mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


@pytest.mark.parametrize("spec", ["Flat", "HNSW32,Flat"])
def test_mapped_snapshot_answers_as_the_index_it_was_written_from(tmp_path: Path, spec: str) -> None:
    original, path = written(tmp_path, spec)
    mapped = MappedIndex.open(path, DIM, "cosine", spec, [])
    assert mapped is not None
    assert str(path) in mapped_files()  # the vectors are the file's pages, not a heap copy
    queries = data(20, seed=2)
    (s0, i0), (s1, i1) = original.search(queries, 10), mapped.search(queries, 10)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(s0, s1, rtol=1e-6)
    assert mapped.size == 500 and mapped.spec == spec


def test_overlay_takes_new_rows_and_tombstones_hide_removed_ones(tmp_path: Path) -> None:
    _, path = written(tmp_path, "Flat")
    mapped = MappedIndex.open(path, DIM, "cosine", "Flat", [])
    assert mapped is not None
    exact = VectorIndex(DIM, "cosine", "Flat")  # what the writer's index holds after the same records
    exact.add(np.arange(500, dtype=np.int64), data(500, seed=1))
    new = data(50, seed=3)
    for index in (mapped, exact):
        index.add(np.arange(1000, 1050, dtype=np.int64), new)
        index.remove(np.array([0, 1, 2, 1000, 1001], dtype=np.int64))  # snapshot rows and overlay rows
    assert mapped.index.ntotal == 500  # the mapped file is never written
    assert mapped.overlay_rows == 48 and mapped.size == exact.size == 545
    queries = np.vstack([data(500, seed=1)[:5], new[:5], data(10, seed=4)])
    (s0, i0), (s1, i1) = exact.search(queries, 10), mapped.search(queries, 10)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(s0, s1, rtol=1e-5)
    assert not np.isin(i1, [0, 1, 2, 1000, 1001]).any()
    allowed = np.array([0, 3, 4, 1000, 1002, 1003], dtype=np.int64)  # a filter across both parts
    _, ids = mapped.search(queries[:3], 10, allowed)
    assert set(ids[ids >= 0].ravel()) == {3, 4, 1002, 1003}
    np.testing.assert_allclose(mapped.reconstruct(np.array([4, 1003])), np.vstack([data(500, 1)[4], new[3]]), rtol=1e-6)


def test_writes_into_the_mapping_are_refused(tmp_path: Path) -> None:
    _, path = written(tmp_path, "HNSW32,Flat")
    mapped = MappedIndex.open(path, DIM, "cosine", "HNSW32,Flat", [7])
    assert mapped is not None
    assert 7 not in mapped.search(data(500, seed=1)[7:8], 5)[1]  # the snapshot's own tombstones hold
    with pytest.raises(RuntimeError, match="read-only"):
        mapped.serialize()
    with pytest.raises(RuntimeError, match="read-only"):
        mapped.train(data(10, seed=5))


def test_quantised_and_ivf_snapshots_are_not_mapped(tmp_path: Path) -> None:
    assert maybe_mappable("Flat") and maybe_mappable("HNSW32,Flat") and maybe_mappable("HNSW16")
    assert not maybe_mappable("IVF64,Flat") and not maybe_mappable("HNSW32,SQ8") and not maybe_mappable("PQ8")
    index = VectorIndex(DIM, "cosine", "IVF4,Flat")
    index.train(data(400, seed=1))
    index.add(np.arange(400, dtype=np.int64), data(400, seed=1))
    path = tmp_path / "ivf.faiss"
    faiss.write_index(index.index, str(path))
    assert MappedIndex.open(path, DIM, "cosine", "IVF4,Flat", []) is None
