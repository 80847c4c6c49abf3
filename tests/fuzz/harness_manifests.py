"""Job manifests under fuzzing: ``.jsonl``/``.ndjson`` and ``.csv`` parsing (``indexer/jobs/sources.py``)
and the rest of a job's path for what they yield, the calls the job runners make.

An input is one uploaded manifest: the first line is ``<suffix> <collection>`` (``jsonl txt``,
``csv vec``...), the rest the manifest's bytes. It is staged as an upload is (``manifest.<suffix>``
beside a ``files/`` folder holding a few real files the manifest's ``path`` cells may name), then:

1. ``Source.entries()`` either refuses the whole manifest with ``SourceInvalid`` or yields, for every
   line, an ``Item`` (a non-empty string id, exactly one kind, a JSON-object payload or none) or a
   ``Failure`` with a reason; nothing else may escape.
2. Each batch goes through ``load`` -> ``encode_batch`` -> ``Collection.upsert``, as in
   ``EmbeddedRunner``'s pipeline: a bad item fails alone (``encode.py``'s promise), so the upsert
   of what ingest accepted must not raise, and every item is either written or failed.
3. Every written id reads back over HTTP with the payload ingest wrote, and a client vector as sent.
"""

from __future__ import annotations

import random
import zlib
from typing import Any

from indexer.jobs.encode import Target, encode_batch
from indexer.jobs.errors import SourceInvalid
from indexer.jobs.model import Failure, Item
from indexer.jobs.sources import FIELDS, UPLOAD_FILES, Source, load
from tests.fuzz.api import FuzzApi, same_json_value
from tests.fuzz.invariant import InvariantBroken
from tests.fuzz.mutators import ByteMutator, join_head, mutate_json_text, split_head
from tests.service.test_jobs_support import png

NAME = "manifests"
SUFFIXES = ("jsonl", "ndjson", "csv")
COLLECTIONS = ("vec", "txt", "img")
BATCH = 4  # small batches: items of one manifest meet the batch boundaries
MAX_PIXELS = 1_000_000


def head_of(line: bytes) -> tuple[str, str]:
    words = line.decode("utf-8", "replace").split()
    suffix = words[0] if words and words[0] in SUFFIXES else SUFFIXES[zlib.crc32(line) % len(SUFFIXES)]
    collection = words[1] if len(words) > 1 and words[1] in COLLECTIONS else COLLECTIONS[zlib.crc32(line) % 3]
    return suffix, collection


class ManifestHarness:
    def __init__(self, api: FuzzApi) -> None:
        self.api = api
        self.staging = api.root / "manifest-upload"
        files = self.staging / UPLOAD_FILES
        (files / "sub").mkdir(parents=True, exist_ok=True)
        (files / "a.png").write_bytes(png(1))
        (files / "sub" / "b.png").write_bytes(png(2, size=40))
        (files / "c.txt").write_text("a text file named by a manifest")
        (files / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
        (files / "broken.png").write_bytes(png(3)[:40])

    def one(self, data: bytes) -> None:
        head, body = split_head(data, 1)
        suffix, name = head_of(head[0])
        for old in self.staging.glob("manifest.*"):
            old.unlink()
        manifest = self.staging / f"manifest.{suffix}"
        manifest.write_bytes(body)
        source = Source({"type": "upload", "path": str(manifest)}, roots=[])
        try:
            entries = list(source.entries())
        except SourceInvalid:
            return  # the whole manifest refused with a reason: the job fails with it
        for entry in entries:
            _check_entry(entry)
        self._write(name, source)

    def _write(self, name: str, source: Source) -> None:
        assert self.api.client is not None
        state = self.api.client.app.state  # type: ignore[attr-defined]
        collection = state.manager.get(name)
        cfg = collection.config
        target = Target(name, cfg.dim, cfg.encoder, keep_sources=collection.sources is not None)
        written: dict[str, tuple[Any, list[float] | None]] = {}
        for batch in source.batches(BATCH):
            loaded = load(batch.entries, source.roots)
            enc = encode_batch(batch.seq, loaded, target, state.hub.get, MAX_PIXELS)
            items = [e for e in loaded if isinstance(e, Item)]
            _check_accounted(items, enc.ids, enc.failures)
            if not enc.ids:
                continue
            try:  # EmbeddedRunner's write: JobRunner.write -> Collection.upsert
                collection.upsert(enc.ids, enc.vectors, enc.payloads, enc.versions, sources=enc.sources)
            except Exception as exc:
                raise InvariantBroken(
                    f"batch {batch.seq}: items that ingest accepted fail the whole write ({type(exc).__name__}: {exc})"
                ) from exc
            for row, item_id in enumerate(enc.ids):
                wrote, given = enc.payloads[row], [i.payload for i in items if i.id == item_id]
                if not any(wrote is payload or same_json_value(wrote, payload) for payload in given):
                    raise InvariantBroken(
                        f"item {item_id!r}: ingest wrote payload {wrote!r}, the manifest gave {given}"
                    )
                vector = enc.vectors[row].tolist() if cfg.encoder is None else None
                written[item_id] = (enc.payloads[row], vector)
        for item_id, (payload, vector) in written.items():
            self.api.check_item(name, item_id, payload, vector)

    def check(self) -> None:
        self.api.restart()


def _check_entry(entry: Any) -> None:
    if isinstance(entry, Failure):
        if not isinstance(entry.id, str) or not entry.id or not isinstance(entry.reason, str) or not entry.reason:
            raise InvariantBroken(f"a manifest failure without an id or a reason: {entry!r}")
        return
    if not isinstance(entry, Item):
        raise InvariantBroken(f"the source yielded {type(entry).__name__}, not an Item or a Failure")
    if not isinstance(entry.id, str) or not entry.id or entry.kind not in FIELDS:
        raise InvariantBroken(f"a manifest item with a bad id or kind: {entry!r}"[:500])
    if entry.payload is not None and not isinstance(entry.payload, dict):
        raise InvariantBroken(f"item {entry.id!r}: payload {entry.payload!r} is not a JSON object"[:500])
    if entry.kind == "vector" and not isinstance(entry.value, list):
        raise InvariantBroken(f"item {entry.id!r}: vector {entry.value!r} is not a list"[:500])


def _check_accounted(items: list[Item], written: list[str], failures: list[Failure]) -> None:
    """Every item of the batch is written or failed: none is dropped without a word."""
    done = set(written) | {f.id for f in failures}
    missing = [i.id for i in items if i.id not in done]
    if missing:
        raise InvariantBroken(f"items neither written nor failed: {missing[:10]}")


def mutate(data: bytes, max_size: int, seed: int, fallback: ByteMutator) -> bytes:
    rng = random.Random(seed)
    head, body = split_head(data, 1)
    if rng.random() < 0.1:
        head = [f"{rng.choice(SUFFIXES)} {rng.choice(COLLECTIONS)}".encode()]
    lines = body.split(b"\n")
    if rng.random() < 0.3 or not lines:
        return fallback(data, max_size)
    i = rng.randrange(len(lines))
    op = rng.randrange(4)
    if op == 0:
        lines.insert(i, lines[i])  # a repeated line: a repeated id
    elif op == 1 and len(lines) > 1:
        del lines[i]
    elif head[0].startswith(b"csv") and i > 0:
        cells = lines[i].split(b",")
        j = rng.randrange(len(cells))
        cells[j] = rng.choice([b"", b'"[1,2,3,4]"', b'"{""a"": 1}"', b"\xff", b'"', b"a\r", b"10" * 300])
        lines[i] = b",".join(cells)
    else:
        lines[i] = mutate_json_text(lines[i], rng, fallback, 4096)
    out = join_head(head, b"\n".join(lines))
    return out if len(out) <= max_size else fallback(data, max_size)


def make(api: FuzzApi | None = None) -> ManifestHarness:
    assert api is not None, "the manifest harness writes into the app's collections"
    return ManifestHarness(api)
