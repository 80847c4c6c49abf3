"""Encoders served by this process: loaded once at start-up with a warm-up, batched, cached.

Which inputs failed and how a batch's output splits into per-input results (faces with their boxes)
is the ingest path's (``indexer.ingest``), so the API's vectors and a job's are made the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread

from indexer.ingest import Embedded, merge, preprocess_each, split_output
from indexer.vector_cache import cached, remember
from models.core.backends import set_torch_threads
from models.core.batching import Budget, forward_grouped
from models.core.encoder import Encoder
from models.core.errors import ArtifactError, EncoderNotFound
from models.core.spec import EncoderSpec, split_key
from models.zoo import installed
from service.runtime.batching import DynamicBatcher
from service.runtime.cache import EmbeddingCache, input_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubOptions:
    batching: bool = True
    budget: Budget = field(default_factory=Budget)
    max_wait_ms: float = 5.0
    max_queue: int = 512
    concurrency: int = 2  # forwards at once (batching)
    threads: int = 0  # intra-op threads per forward; 0 adapts to the load (see DynamicBatcher)
    warmup: bool = True


class EncoderHub:
    def __init__(self, models_dir: Path, options: HubOptions, cache: EmbeddingCache | None = None) -> None:
        self.models_dir = models_dir
        self.options = options
        self.cache = cache
        self.encoders: dict[str, Encoder] = {}
        self.batchers: dict[str, DynamicBatcher] = {}
        self._lock = threading.RLock()  # re-entered when a bridge loads its parts
        set_torch_threads(max(1, options.threads))

    def load_all(self) -> None:
        for spec in installed(self.models_dir):
            self._load(spec.key)

    def _load(self, key: str) -> Encoder:
        with self._lock:
            if key in self.encoders:
                return self.encoders[key]
            # a bridge (models.compat.bridges) is built over the encoders it names, loaded through get();
            # imported here because it brings torch, which a server start without encoders never needs
            from models.compat.bridges import load_any

            encoder = load_any(self.models_dir / key, self.get, threads=max(1, self.options.threads))
            if self.options.warmup:
                family = getattr(encoder, "family", None)
                example = family.example_inputs() if family is not None else []
                if example:
                    batch = encoder.preprocess(example)
                    encoder.postprocess(encoder.forward(batch), batch)
            log.info("loaded encoder %s (%s, %s)", key, encoder.spec.modality, encoder.backend)
            self.encoders[key] = encoder
            return encoder

    def get(self, key: str) -> Encoder:
        if key in self.encoders:
            return self.encoders[key]
        try:
            name, _ = split_key(key)
        except ValueError as exc:
            raise EncoderNotFound(str(exc)) from exc
        try:
            present = (self.models_dir / key).is_dir()
        except OSError:  # a name the file system cannot hold (over 255 bytes): no such encoder
            present = False
        if not present:
            raise EncoderNotFound(
                f"encoder '{key}' is not available in {self.models_dir}; run `ers zoo pull {name}` "
                "(or `ers zoo import`) with the same --data-dir, then retry"
            )
        try:
            return self._load(key)  # pulled while the server was running
        except ArtifactError as exc:
            raise EncoderNotFound(f"encoder '{key}' is present but unusable: {exc.message}") from exc

    def spec(self, key: str) -> EncoderSpec:
        return self.get(key).spec

    async def start(self) -> None:
        if self.options.batching:
            for key, encoder in self.encoders.items():
                self._batcher(key, encoder)

    def _batcher(self, key: str, encoder: Encoder) -> DynamicBatcher:
        batcher = self.batchers.get(key)
        if batcher is None:
            o = self.options
            batcher = DynamicBatcher(encoder, o.budget, o.max_wait_ms, o.max_queue, o.concurrency, o.threads)
            batcher.start()
            self.batchers[key] = batcher
        return batcher

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()

    async def embed(self, key: str, inputs: Sequence[Any], each: bool = False) -> list[Embedded]:
        """One result per input. A preprocessing error fails the whole call (a query, ``/v1/embed``),
        or with ``each`` only its own input: the others are encoded and it carries its ``error``."""
        encoder = await anyio.to_thread.run_sync(self.get, key)
        single = encoder.spec.modality != "face"  # a face photo gives one vector per face: not cached
        keys: list[str | None] = (
            [input_key(key, x) for x in inputs] if self.cache is not None and single else [None] * len(inputs)
        )
        hits = cached(self.cache, keys)
        todo = [i for i, v in enumerate(hits) if v is None]
        out: list[Embedded | None] = [Embedded(v[None, :]) if v is not None else None for v in hits]
        if todo:
            fresh = await self._compute(key, encoder, [inputs[i] for i in todo], each)
            for i, emb in zip(todo, fresh, strict=True):
                out[i] = emb
            # keyed rows only: a face photo (no key) may hold no face at all
            made = {i: emb.vectors[0] for i, emb in zip(todo, fresh, strict=True) if keys[i] and emb.error is None}
            remember(self.cache, keys, made)
        return [e for e in out if e is not None]

    async def _compute(self, key: str, encoder: Encoder, inputs: Sequence[Any], each: bool) -> list[Embedded]:
        good, errors = list(range(len(inputs))), dict[int, Exception]()
        if each:  # an upsert: the inputs that fail alone are left out, the others encoded
            good, found, errors = await anyio.to_thread.run_sync(preprocess_each, encoder, inputs)
            if found is None:
                return merge(len(inputs), [], [], errors)
            batch = found
        else:  # a query or /v1/embed: the first error answers the request
            batch = await anyio.to_thread.run_sync(encoder.preprocess, inputs)
        if self.options.batching:
            raw = await self._batcher(key, encoder).forward(batch)
        else:
            threads = self.options.threads or 1
            forward = partial(encoder.forward, threads=threads)
            raw = await anyio.to_thread.run_sync(forward_grouped, forward, batch, self.options.budget)
        return merge(len(inputs), good, split_output(encoder.postprocess(raw, batch), batch, len(good)), errors)
