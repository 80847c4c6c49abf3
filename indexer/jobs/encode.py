"""One batch of loaded entries -> vectors ready to write, plus the items that failed and why: the job
runners' (embedded, Redis worker, backfill) call into the one ingest path, ``indexer.ingest``.

A bad item (corrupt image, text over the encoder's limit, record with missing fields, wrong vector
dimension, file that is not UTF-8 text, face photo without a face) fails alone, with the same reason
the REST upsert gives for it. A failing forward pass, or an encoder that cannot be loaded, is not an
item's fault: it propagates, and the runner retries the batch (then gives it up as dead letters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from indexer.ingest import Destination, ingest
from indexer.jobs.model import Batch, Encoded, Entry, Failure, Item
from models.core.encoder import Encoder


@dataclass(frozen=True)
class Target:
    """What a job writes into: the collection's dimension and encoder (None: vectors only)."""

    collection: str
    dim: int
    encoder: str | None
    # Raw inputs travel back with the vectors only for collections that keep them (a Redis
    # worker's result would otherwise carry every image's bytes for nothing).
    keep_sources: bool = False


def encode_batch(
    seq: int,
    entries: list[Entry],
    target: Target,
    get_encoder: Callable[[str], Encoder] | None,
    max_pixels: int = 40_000_000,
    threads: int | None = None,
) -> Encoded:
    """``threads``: intra-op threads per forward (None: the encoder's default, one)."""
    items = [e for e in entries if isinstance(e, Item)]
    encoder: Encoder | None = None
    if target.encoder is not None and get_encoder is not None and any(i.kind != "vector" for i in items):
        encoder = get_encoder(target.encoder)
    dest = Destination(
        collection=target.collection,
        encoder=target.encoder,
        modality=encoder.spec.modality if encoder is not None else None,
        dim_of=lambda _version: target.dim,  # a job's vectors are all of its encoder's version
        keep_sources=target.keep_sources,
        max_pixels=max_pixels,
    )
    rows = ingest(items, encoder, dest, threads)
    failures = [e for e in entries if isinstance(e, Failure)]  # the source's own (unparsable lines)
    return Encoded(
        seq,
        ids=rows.ids,
        vectors=rows.matrix(target.dim),
        payloads=rows.payloads,
        versions=rows.versions,
        done=rows.done,
        failures=failures + rows.failures,
        sources=rows.sources,
        thumbnails=rows.thumbnails,
    )


def give_up(batch: Batch, attempts: int, reason: str) -> tuple[Encoded, list[dict[str, Any]]]:
    """Every item of a batch that failed ``attempts`` times: failed, and a dead letter each."""
    enc = Encoded(batch.seq)
    dead: list[dict[str, Any]] = []
    for entry in batch.entries:
        if isinstance(entry, Failure):
            enc.failures.append(entry)
            continue
        why = f"gave up after {attempts} attempts: {reason}"
        enc.failures.append(Failure(entry.id, why))
        dead.append({"id": entry.id, "reason": why, "attempts": attempts})
    return enc, dead
