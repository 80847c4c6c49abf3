"""One batch of loaded entries -> vectors ready to write, plus the items that failed and why.

A bad item (corrupt image, text over the encoder's limit, record with missing fields, wrong
vector dimension, file that is not UTF-8 text) fails alone: the batch is preprocessed in one
call, and only if that raises is each item preprocessed by itself to find the culprits. A
failing forward pass is not an item's fault: it propagates, and the runner retries the batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.errors import ERSError
from indexer.jobs.errors import ItemError
from indexer.jobs.model import Batch, Encoded, Entry, Failure, Item
from indexer.kept_sources import KeptSource
from indexer.validation import as_matrix, check_ids
from models.core.encoder import Encoder
from models.core.errors import ModelError
from models.core.images import check_image

FACE_SEPARATOR = "#face"  # same ids as the upsert API gives faces


@dataclass(frozen=True)
class Target:
    """What a job writes into: the collection's dimension and encoder (None: vectors only)."""

    collection: str
    dim: int
    encoder: str | None
    # Raw inputs travel back with the vectors only for collections that keep them (a Redis
    # worker's result would otherwise carry every image's bytes for nothing).
    keep_sources: bool = False


def _reason(exc: Exception) -> str:
    if isinstance(exc, ModelError | ERSError):
        return exc.message
    if isinstance(exc, ItemError):
        return exc.reason
    return f"{type(exc).__name__}: {exc}"


def raw_input(item: Item, modality: str, max_pixels: int) -> Any:
    """The encoder input for one item, or ``ItemError`` when it does not fit the encoder."""
    kind, value = item.kind, item.value
    if kind == "record" and modality != "record":
        raise ItemError(f"this collection's encoder takes {modality} input, not records")
    if modality == "text":
        if kind == "path":
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ItemError(f"file is not UTF-8 text: {exc.reason}") from exc
        return value
    if modality in ("image", "face"):
        if kind == "text":
            raise ItemError(f"this collection's encoder takes {modality} input, not text")
        check_image(value, max_pixels)  # format allow-list and pixel limit before any decoding
        return value
    if modality == "record" and kind == "path":
        try:
            return json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ItemError(f"file is not a JSON record: {exc}") from exc
    return value


def _preprocess(encoder: Encoder, items: list[Item], inputs: list[Any]) -> tuple[list[int], Any, list[Failure]]:
    """(rows that made it, their preprocessed batch, failures)."""
    try:
        return list(range(len(items))), encoder.preprocess(inputs), []
    except Exception:  # find which item(s) broke the batch; each keeps its own reason
        pass
    good: list[int] = []
    failures: list[Failure] = []
    for row, value in enumerate(inputs):
        try:
            encoder.preprocess([value])
            good.append(row)
        except Exception as exc:
            failures.append(Failure(items[row].id, _reason(exc)))
    batch = encoder.preprocess([inputs[r] for r in good]) if good else None
    return good, batch, failures


def encode_batch(
    seq: int,
    entries: list[Entry],
    target: Target,
    get_encoder: Callable[[str], Encoder] | None,
    max_pixels: int = 40_000_000,
) -> Encoded:
    kept_rows: list[KeptSource | None] = []
    out = Encoded(seq, sources=kept_rows)
    rows: list[np.ndarray] = []
    raw_items: list[Item] = []
    raw_inputs: list[Any] = []
    encoder: Encoder | None = None
    if (
        target.encoder is not None
        and get_encoder is not None
        and any(isinstance(e, Item) and e.kind != "vector" for e in entries)
    ):
        # Outside the per-item handling: a missing or broken encoder is not any item's fault; the
        # batch fails and is retried (then given up as dead letters).
        encoder = get_encoder(target.encoder)
    for entry in entries:
        if isinstance(entry, Failure):
            out.failures.append(entry)
            continue
        try:
            check_ids([entry.id])
            if entry.kind == "vector":
                rows.append(as_matrix(entry.value, target.dim)[0])
                out.ids.append(entry.id)
                out.payloads.append(entry.payload)
                out.versions.append(target.encoder)
                kept_rows.append(None)
                out.done += 1
                continue
            if encoder is None:
                raise ItemError(f"collection '{target.collection}' has no encoder: give vectors")
            raw_inputs.append(raw_input(entry, encoder.spec.modality, max_pixels))
            raw_items.append(entry)
        except (ItemError, ModelError, ERSError) as exc:
            out.failures.append(Failure(entry.id, _reason(exc)))
    if raw_items and encoder is not None:
        good, batch, failures = _preprocess(encoder, raw_items, raw_inputs)
        out.failures.extend(failures)
        if good:
            vectors = encoder.postprocess(encoder.forward(batch), batch)
            kept = [KeptSource.of(raw_inputs[r]) if target.keep_sources else None for r in good]
            _collect(out, rows, [raw_items[r] for r in good], vectors, batch, encoder.spec.key, kept)
    out.vectors = np.vstack(rows).astype(np.float32) if rows else np.zeros((0, target.dim), dtype=np.float32)
    return out


def _collect(
    out: Encoded, rows: list[np.ndarray], items: list[Item], vectors: Any, batch: Any, key: str,
    kept: list[KeptSource | None],
) -> None:  # fmt: skip
    """Rows of encoded items into ``out``: one per item, or one per detected face."""
    owners = batch.get("_owner") if isinstance(batch, dict) else None
    for n, item in enumerate(items):
        found = [n] if owners is None else np.flatnonzero(owners == n).tolist()
        if owners is not None and not found:
            out.failures.append(Failure(item.id, "no face found"))
            continue
        if not all(np.isfinite(vectors[r]).all() for r in found):
            out.failures.append(Failure(item.id, "the encoder produced NaN or Inf for this input"))
            continue
        for face, r in enumerate(found):
            item_id = item.id if owners is None else f"{item.id}{FACE_SEPARATOR}{face}"
            payload = item.payload if owners is None else {**(item.payload or {}), "source_id": item.id}
            rows.append(np.asarray(vectors[r], dtype=np.float32))
            out.ids.append(item_id)
            out.payloads.append(payload)
            out.versions.append(key)
            assert out.sources is not None
            out.sources.append(kept[n] if owners is None else None)  # faces: sources are not kept
        out.done += 1


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
