"""Migrations between encoders nobody trained for compatibility: ``method`` fuse, adapter, transform or auto.

A bridged migration runs as a task (``MigrationTask``, progress at
``GET /v1/collections/{name}/migrations/tasks/{id}``), in phases:

1. **calibration inputs**: the request's ``calibration`` source (a job source: ``directory`` or
   ``manifest`` under the allowed roots), else a seeded sample of the collection's kept sources
   (``keep_sources``); ``calibration_size`` inputs (default 2,000, at most 20,000). The collection's
   labelled evaluation set (stored, or sent with the request) and manifest items with a ``label`` in
   their payload form the *task* that old/old and each method are measured on; the other inputs only fit.
2. **encoding**: every input by the old and the new encoder (the ingest path's ``encode_inputs``); a kept
   source whose item still holds the active encoder's vector is not encoded by the old one again.
3. **fitting** (``models.compat.pretrained``, gate in ``models.compat.choice``): ``auto`` fits fuse,
   adapter and transform on 80% of the labelled inputs (plus every unlabelled one), measures R@10 on the
   other 20% and picks the best; it refuses unless the best beats old/old there in 95% of paired bootstrap
   resamples, or when there is no task to measure on. A named method is measured the same way and
   refused likewise, unless ``force``.
4. **publishing**: the fitted bridge becomes an artefact in the models dir (``models.compat.bridges``);
   for a transform, the old segments' rewritten views are built before the switch.
5. **switch**: ``Migrations`` switches the query encoder to the bridge, the same atomic switch as a
   ``prefix`` migration; its history entry keeps every method's figures (``pretrained``).

Stored vectors are never changed by a bridged switch (fuse and adapter search them through the prefix,
transform through a rewritten view), so a rollback restores the previous results exactly.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.collection import Collection
from indexer.errors import InvalidInput, LimitExceeded
from indexer.ingest import Item, encode_inputs, encoder_input
from indexer.jobs.sources import Source, load, resolve
from indexer.rewritten_views import build_view
from indexer.upgrade.errors import MigrationRefused
from indexer.upgrade.eval_set import EvalSet, model_inputs
from indexer.vector_cache import VectorCache, cache_key, cached, remember
from models.core.encoder import Encoder

if TYPE_CHECKING:  # torch-backed: imported where used, so a server start does not load torch
    from models.compat.pretrained import Calibration

METHODS = ("prefix", "auto", "fuse", "adapter", "transform")
DEFAULT_CALIBRATION = 2_000
MAX_CALIBRATION = 20_000
ENCODE_CHUNK = 64  # inputs per forward while calibrating (the unit of progress)
STORE_READ_CHUNK = 500  # stored vectors read per store call (a migration reuses thousands)
MIN_TASK = 20  # labelled inputs needed to hold out 20% and measure


@dataclass
class BridgeRequest:
    to: str
    method: str
    calibration: dict[str, Any] | None = None  # a job source, checked by ``resolve``
    calibration_size: int = DEFAULT_CALIBRATION
    seed: int = 0
    force: bool = False
    eval_set: EvalSet | None = None


@dataclass
class MigrationTask:
    id: str
    collection: str
    to: str
    method: str
    state: str = "running"  # running | succeeded | refused | failed
    phase: str = "queued"  # collecting | encoding | fitting | publishing | switching | done
    done: int = 0
    total: int = 0
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None
    report: dict[str, Any] | None = None
    migration: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "collection": self.collection, "to": self.to, "method": self.method, "state": self.state,
            "phase": self.phase, "progress": {"done": self.done, "total": self.total},
            "started_at": self.started_at, "finished_at": self.finished_at, "error": self.error,
            "report": self.report, "migration": self.migration,
        }  # fmt: skip


def check_request(req: BridgeRequest, collection: Collection, roots: Sequence[Path]) -> BridgeRequest:
    """Clear 4xx before any work: method, sizes, the calibration source, kept sources when needed."""
    if req.method not in METHODS or req.method == "prefix":
        raise InvalidInput(f"method must be one of {METHODS}")
    if not 20 <= req.calibration_size <= MAX_CALIBRATION:
        raise LimitExceeded(f"calibration_size must be from 20 to {MAX_CALIBRATION}")
    if req.calibration is not None:
        req.calibration = resolve(req.calibration, roots)
    elif collection.sources is None:
        raise MigrationRefused(
            f"collection '{collection.name}' keeps no sources to calibrate on: send 'calibration' (a directory or "
            "manifest of raw inputs like the collection's) or create the collection with keep_sources"
        )
    return req


Stored = list[np.ndarray | None]  # per calibration input: its stored vector of the active encoder, if any


def no_stored_vectors(n: int) -> Stored:  # the evaluation set's inputs: not items of the collection
    return [None] * n


def calibration_inputs(collection: Collection, req: BridgeRequest, roots: Sequence[Path], modality: str,
                       max_pixels: int) -> tuple[list[Any], list[Any] | None, Stored]:  # fmt: skip
    """(inputs, labels or None, stored vectors): up to ``calibration_size`` model inputs from the source or
    kept sources; a kept source's item vector is returned when the active encoder made it, so the old
    encoder need not embed it again (a third of the encoding when the new encoder is twice as deep)."""
    rng = np.random.default_rng(req.seed)
    items: list[Item] = []
    known: dict[str, np.ndarray] = {}
    if req.calibration is not None:
        source = Source(req.calibration, roots)
        found = [e for e in source.entries() if isinstance(e, Item)]
        pick = sorted(rng.choice(len(found), min(len(found), req.calibration_size), replace=False)) if found else []
        items = [e for e in load([found[i] for i in pick], roots) if isinstance(e, Item)]
    else:
        assert collection.sources is not None
        with collection.locks.reading():
            ids = sorted(collection.id_to_int)
        order = rng.permutation(len(ids))
        for i in order:
            kept = collection.sources.get(ids[i])
            if kept is not None:
                kind = "path" if kept.kind == "image" else kept.kind
                items.append(Item(ids[i], kind, kept.data if kept.kind == "image" else kept.value(), None))
            if len(items) >= req.calibration_size:
                break
        known = stored_vectors(collection, [item.id for item in items])
    inputs, labels, stored = [], [], []
    for item in items:
        try:
            inputs.append(encoder_input(item.kind, item.value, modality, max_pixels, item.id))
        except Exception:
            continue
        labels.append((item.payload or {}).get("label"))
        stored.append(known.get(item.id))
    if len(inputs) < 20:
        raise MigrationRefused(f"only {len(inputs)} usable calibration inputs; at least 20 are needed")
    return inputs, labels if all(y is not None for y in labels) else None, stored


def stored_vectors(collection: Collection, ids: list[str]) -> dict[str, np.ndarray]:
    """The stored vectors of ``ids`` that the active encoder made (an item embedded by another version, e.g.
    mid-migration, is encoded again). An item overwritten between reading its kept source and its vector
    pairs one source with a newer vector: one calibration pair among thousands, not worth a lock."""
    active, out = collection.config.encoder, {}
    for start in range(0, len(ids), STORE_READ_CHUNK):  # one store round trip a chunk, not one an item
        chunk = ids[start : start + STORE_READ_CHUNK]
        for item_id, record in zip(chunk, collection.store.get_items(collection.name, chunk, True), strict=True):
            if record is not None and record.vector is not None and record.encoder_version == active:
                out[item_id] = np.asarray(record.vector, dtype=np.float32)
    return out


def encode_both(old: Encoder, new: Encoder, inputs: list[Any], tick: Callable[[int], None],
                stored: Stored | None = None, cache: VectorCache | None = None) -> tuple[np.ndarray, ...]:  # fmt: skip
    """(old vectors, new vectors, kept mask): inputs either model fails on are dropped. ``stored[i]``: input
    i's old vector where the collection holds it; ``cache``: the server's embedding cache, so a migration
    run again (a named method after ``auto``'s report, ``force`` after a refusal, the same with a backfill)
    does not encode its inputs again."""
    olds, news, keep = [], [], []
    for start in range(0, len(inputs), ENCODE_CHUNK):
        chunk = inputs[start : start + ENCODE_CHUNK]
        known = list(stored[start : start + ENCODE_CHUNK]) if stored else None
        pairs = zip(vectors_of(old, chunk, cache, known), vectors_of(new, chunk, cache), strict=True)
        for x, y in pairs:
            keep.append(x is not None and y is not None)
            if x is not None and y is not None:
                olds.append(x)
                news.append(y)
        tick(len(chunk))
    d_old, d_new = old.spec.dim, new.spec.dim
    return (np.asarray(olds, np.float32).reshape(-1, d_old), np.asarray(news, np.float32).reshape(-1, d_new),
            np.asarray(keep, dtype=bool))  # fmt: skip


def vectors_of(encoder: Encoder, inputs: list[Any], cache: VectorCache | None, known: Stored | None = None) -> Stored:
    """Each input's one vector, None where the encoder fails on it: ``known`` first, then the cache, then
    the encoder (through the ingest path), whose vectors go into the cache."""
    out: Stored = list(known) if known is not None else no_stored_vectors(len(inputs))
    keys = [cache_key(encoder.spec.key, x) if cache is not None and v is None else None
            for x, v in zip(inputs, out, strict=True)]  # fmt: skip
    out = [v if v is not None else hit for v, hit in zip(out, cached(cache, keys), strict=True)]
    todo = [i for i, v in enumerate(out) if v is None]
    made: dict[int, np.ndarray] = {}
    for i, embedded in zip(todo, encode_inputs(encoder, [inputs[i] for i in todo]) if todo else [], strict=True):
        if embedded.error is None and len(embedded.vectors) == 1:
            out[i] = made[i] = embedded.vectors[0]
    remember(cache, keys, made)
    return out


def fit_bridge(method: str, task: Calibration | None, extra: tuple[np.ndarray, np.ndarray], seed: int,
               force: bool) -> tuple[str, Any, dict[str, Any]]:  # fmt: skip
    """(method, fitted model, report). Refuses (``MigrationRefused`` carrying the report) as described above."""
    from models.compat.choice import choose  # torch: imported on first use, not at every server start
    from models.compat.pretrained import Calibration, fit_method

    methods = ("fuse", "adapter", "transform") if method == "auto" else (method,)
    if task is None or len(task.old) < MIN_TASK:
        labelled = 0 if task is None else len(task.old)
        report: dict[str, Any] = {"figures": {}, "chosen": None, "criterion_met": None, "labelled": labelled,
                  "reason": f"no labelled evaluation inputs to measure old/old on (at least {MIN_TASK}): "
                            "PUT the collection's eval-set or send 'eval'"}  # fmt: skip
        if method == "auto" or not force:
            raise RefusedWithReport(report)
        return method, fit_method(method, Calibration(*extra), seed), report
    choice = choose(task, seed, methods=methods, extra=extra)
    report = {"figures": choice.figures, "own_pair": choice.own_pair, "chosen": choice.best,
              "criterion_met": not choice.refused, "reason": choice.reason, "labelled": len(task.old),
              "confidence": choice.confidence,
              "held_out": "20% of the labelled calibration inputs"}  # fmt: skip
    if choice.refused:
        if method == "auto" or not force:
            raise RefusedWithReport(report)
        return method, fit_method(method, task, seed, extra=extra), report
    assert choice.best is not None
    return choice.best, choice.model, report


class RefusedWithReport(MigrationRefused):
    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__(f"migration refused: {report['reason']}")
        self.report = report


def build_views(collection: Collection, bridge_key: str, progress: Callable[[int, int], None]) -> int:
    """Build the rewritten views a transform bridge needs before it serves; vectors rewritten."""
    total = 0
    with collection.locks.reading():
        for segment in list(collection.segments.values()):
            rewrite = collection.compat.rewriter(bridge_key, segment.key)
            if rewrite is None:
                continue
            ids = np.fromiter((n for n, v in collection.versions.items()
                               if collection.segment_key(v) == segment.key), dtype=np.int64)  # fmt: skip
            collection.views.put(build_view(bridge_key, segment, ids, rewrite, progress))
            total += len(ids)
    return total


def labelled_part(eval_set: EvalSet | None, modality: str) -> tuple[list[Any], list[str]]:
    if eval_set is None:
        return [], []
    return model_inputs(eval_set.inputs, modality), [json.dumps(y, sort_keys=True) for y in eval_set.labels]


class TaskBoard:
    """The server's bridged migrations, newest last (in memory: a restart forgets finished tasks; a task
    interrupted by one never switched, since the switch is its last, atomic step)."""

    def __init__(self, keep: int = 100) -> None:
        self.tasks: dict[str, MigrationTask] = {}
        self.keep = keep
        self.lock = threading.Lock()

    def new(self, collection: str, to: str, method: str) -> MigrationTask:
        with self.lock:
            running = [t for t in self.tasks.values() if t.collection == collection and t.state == "running"]
            if running:
                raise MigrationRefused(f"collection '{collection}' has a migration running (task {running[0].id})")
            task = MigrationTask(uuid.uuid4().hex[:12], collection, to, method)
            self.tasks[task.id] = task
            for old in list(self.tasks)[: max(0, len(self.tasks) - self.keep)]:
                if self.tasks[old].state != "running":
                    del self.tasks[old]
            return task

    def running(self, collection: str) -> MigrationTask | None:
        with self.lock:
            return next((t for t in self.tasks.values() if t.collection == collection and t.state == "running"), None)

    def of(self, collection: str) -> list[MigrationTask]:
        return [t for t in self.tasks.values() if t.collection == collection]
