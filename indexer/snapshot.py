"""Index snapshots: the FAISS index serialised at a known log offset.

Layout in a collection directory: ``index-<offset>.faiss`` (atomic write) and ``snapshot.json``
(atomic write, published second) naming the file, its offset and what the index is. A crash at any
point leaves either the previous snapshot or the new one; stray files are removed on the next write.

A re-ranked quantised index also names its exact-vector files (``exact_file``, ``exact_rows``:
``indexer.exact_vectors``); the index file itself stays a plain FAISS index. The meta keeps the tuned
search breadth (``nprobe``, ``ef_search``) and the recall it measured, so a restart keeps them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from indexer.exact_vectors import ExactVectors, remove_exact_files
from indexer.mapped_index import MappedIndex, maybe_mappable
from indexer.types import Metric
from indexer.vector_index import VectorIndex
from models.core.durable import TEMP_GLOB, atomic_write_bytes

log = logging.getLogger(__name__)
META = "snapshot.json"


@dataclass
class SnapshotMeta:
    offset: int
    spec: str
    file: str
    built_n: int = 0
    nprobe: int | None = None
    dead: list[int] = field(default_factory=list)
    ef_search: int | None = None
    measured_recall: float | None = None
    exact_file: str | None = None  # stem of the exact-vector files of a re-ranked index
    exact_rows: int = 0  # rows of those files this snapshot covers
    rerank: int = 0


def write_snapshot(directory: Path, data: bytes, meta: SnapshotMeta) -> None:
    """Publish the index file, then the meta naming it. When either write fails (a full disk), the
    previous snapshot stays published and the new index file is removed unless the meta names it."""
    published = published_file(directory)
    old_exact = published_exact(directory)
    try:
        atomic_write_bytes(directory / meta.file, data)
        atomic_write_bytes(directory / META, json.dumps(asdict(meta)).encode())
    except BaseException:
        if meta.file != published:
            (directory / meta.file).unlink(missing_ok=True)
        raise
    for stale in directory.glob("index-*.faiss"):
        if stale.name != meta.file:
            stale.unlink(missing_ok=True)
    if old_exact is not None and old_exact != meta.exact_file:
        # only the files the previous meta named: a build running meanwhile owns newer ones
        for suffix in (".f32", ".ids"):
            (directory / f"{old_exact}{suffix}").unlink(missing_ok=True)
    remove_temp_files(directory)


def published_exact(directory: Path) -> str | None:
    """The exact-vector files' stem the published meta names, if any."""
    try:
        name = json.loads((directory / META).read_text()).get("exact_file")
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return name if isinstance(name, str) and "/" not in name else None


def remove_temp_files(directory: Path) -> None:
    """Drop temp files of writes interrupted by a crash (they can be as large as the index)."""
    for stale in directory.glob(TEMP_GLOB):
        stale.unlink(missing_ok=True)


def published_file(directory: Path) -> str | None:
    """The index file the published meta names, if it can be read."""
    try:
        return str(json.loads((directory / META).read_text())["file"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def remove_snapshot(directory: Path) -> bool:
    """Unpublish a directory's snapshot (the index is rebuilt from the store); True if there was one."""
    found = False
    for path in [directory / META, *directory.glob("index-*.faiss")]:
        if path.exists():
            path.unlink()
            found = True
    return found


def load_snapshot(
    directory: Path, dim: int, metric: Metric, tidy: bool = True, mapped: bool = False
) -> tuple[VectorIndex, SnapshotMeta] | None:
    """The last published snapshot, or None (missing or unreadable: the caller rebuilds). ``tidy``
    removes temp files of interrupted writes first (``ers doctor`` only looks). ``mapped`` (readers)
    maps a flat or HNSW-Flat snapshot's vectors from its file instead of copying them
    (``indexer.mapped_index``); other kinds are read as usual."""
    if tidy:
        remove_temp_files(directory)
        # no build runs yet: exact files the published meta does not name are leftovers
        remove_exact_files(directory, keep=published_exact(directory))
    path = directory / META
    if not path.exists():
        return None
    try:
        meta = SnapshotMeta(**json.loads(path.read_text()))
        if not isinstance(meta.offset, int) or not isinstance(meta.file, str) or "/" in meta.file:
            raise ValueError(f"meta names offset {meta.offset!r} and file {meta.file!r}")
        index: VectorIndex | None = None
        if mapped and meta.exact_file is None and maybe_mappable(meta.spec):
            index = MappedIndex.open(directory / meta.file, dim, metric, meta.spec, meta.dead)
        if index is None:
            data = (directory / meta.file).read_bytes()
            index = VectorIndex.deserialize(dim, metric, meta.spec, data, meta.dead)
        if meta.exact_file is not None:
            exact = ExactVectors.open(directory, meta.exact_file, dim, meta.exact_rows, trim=tidy)
            index.attach_exact(exact, meta.rerank)
    except Exception as exc:  # anything a damaged file can make FAISS or json raise: indexes are derived
        log.warning("snapshot in %s unreadable (%s); rebuilding from the store", directory, exc)
        return None
    if index.dim != dim or index.index.d != dim:
        log.warning("snapshot in %s has dim %d, expected %d; rebuilding", directory, index.index.d, dim)
        return None
    if meta.nprobe is not None:
        index.set_nprobe(meta.nprobe)
    if meta.ef_search is not None:
        index.set_ef_search(meta.ef_search)
    index.measured_recall = meta.measured_recall if meta.spec != "Flat" else 1.0
    return index, meta
