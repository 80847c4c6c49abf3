"""Batches grouped by length under a padding budget: the one way rows become forward passes.

A text batch is padded to its longest row, so a forward over a 300-character sentence and a
4-word one costs as much as two long sentences. Grouping rows of similar length, and bounding each
forward by its *padded* size (rows x longest row, like Text Embeddings Inference's
``--max-batch-tokens``), keeps padding small and the forward size steady. Images after
preprocessing all have the same shape: the budget then counts pixels, and only bounds the rows.

Used by the service's dynamic batcher (rows of many requests) and by every indexing job
(``indexer.ingest.encode_inputs``), so both gain the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from models.core.batch import Batch, network_inputs

MASK = "attention_mask"  # token inputs: right-padded; a row's length is its mask's sum


@dataclass(frozen=True)
class Budget:
    """How big one forward may be: padded tokens (text), pixels (images), and rows (any input)."""

    tokens: int = 2048
    pixels: int = 4 * 224 * 224
    rows: int = 8

    def units(self, batch: Batch) -> int:
        """The budget in ``row_lengths(batch)``'s unit."""
        if is_tokens(batch):
            return self.tokens
        first = next(iter(network_inputs(batch).values()))
        return self.pixels if first.ndim == 4 else self.rows


# offline encoding (``models.core.encoder.encode``): bigger forwards than a server's, which answers
# requests while it encodes; still length-grouped so a batch of long and short texts pads little
OFFLINE_BUDGET = Budget(tokens=16384, rows=128)


def forward_all(forward: Callable[..., np.ndarray], batch: Batch, threads: int | None = None) -> np.ndarray:
    """An encoder's ``forward`` over a whole preprocessed batch, however large: token rows in length-sorted
    groups under ``OFFLINE_BUDGET``, fixed-shape rows in one forward (offline encoding, bridge parts)."""
    call = partial(forward, threads=threads)
    return forward_grouped(call, batch, OFFLINE_BUDGET) if is_tokens(batch) else call(batch)


def row_count(batch: Batch) -> int:
    return len(next(iter(network_inputs(batch).values())))


def row_lengths(batch: Batch) -> np.ndarray:
    """The padding cost of each row: its tokens (text), its pixels (images), else 1."""
    feeds = network_inputs(batch)
    if MASK in feeds and feeds[MASK].ndim == 2:
        return np.maximum(feeds[MASK].sum(axis=1).astype(np.int64), 1)
    first = next(iter(feeds.values()))
    per_row = int(first.shape[-1] * first.shape[-2]) if first.ndim == 4 else 1  # (n, c, h, w): pixels
    return np.full(len(first), max(1, per_row), dtype=np.int64)


def is_tokens(batch: Batch) -> bool:
    """Whether ``row_lengths`` counts tokens (else pixels, or 1 per row for fixed-size features)."""
    return MASK in batch


def split_rows(batch: Batch, lengths: np.ndarray | None = None) -> list[Batch]:
    """One batch per row, each cut to its own length (token inputs lose their padding);
    ``lengths``: ``row_lengths(batch)`` when the caller has it already."""
    feeds = network_inputs(batch)
    if MASK not in feeds:
        lengths = None
    elif lengths is None:
        lengths = row_lengths(batch)
    out = []
    for i in range(row_count(batch)):
        row: Batch = {}
        for key, value in feeds.items():
            piece = value[i : i + 1]
            if lengths is not None and piece.ndim == 2 and piece.shape[1] == feeds[MASK].shape[1]:
                piece = piece[:, : int(lengths[i])]
            row[key] = piece
        out.append(row)
    return out


def collate(batches: Sequence[Batch]) -> Batch:
    """Concatenate network inputs, zero-padding ragged trailing axes (token ids, attention masks)."""
    out: Batch = {}
    for key in network_inputs(batches[0]):
        arrays = [b[key] for b in batches]
        shape = np.max([a.shape for a in arrays], axis=0)
        padded = []
        for a in arrays:
            pad = [(0, 0)] + [(0, int(t - s)) for s, t in zip(a.shape[1:], shape[1:], strict=True)]
            padded.append(np.pad(a, pad) if any(p[1] for p in pad) else a)
        out[key] = np.concatenate(padded)
    return out


def length_groups(lengths: np.ndarray, budget: int, max_rows: int) -> list[np.ndarray]:
    """Row indices grouped by length: sorted, then cut so that rows x longest <= ``budget`` (a row
    longer than the budget goes alone) and at most ``max_rows`` rows per group."""
    order = np.argsort(lengths, kind="stable")
    groups: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        if end == len(order):
            groups.append(order[start:end])
            break
        rows, longest = end + 1 - start, int(lengths[order[end]])  # sorted: the next row is the longest
        if rows > max_rows or rows * longest > budget:
            groups.append(order[start:end])
            start = end
    return groups


def forward_grouped(forward: Callable[[Batch], np.ndarray], batch: Batch, budget: Budget) -> np.ndarray:
    """``forward`` over length-sorted groups of ``batch``'s rows; the output rows in input order."""
    n = row_count(batch)
    if n == 0:
        return forward(batch)
    lengths = row_lengths(batch)
    groups = length_groups(lengths, budget.units(batch), budget.rows)
    if len(groups) == 1 and not is_tokens(batch):
        return forward(batch)  # fixed-shape rows within the budget: nothing to regroup
    rows = split_rows(batch, lengths)
    out: np.ndarray | None = None
    for group in groups:
        raw = np.asarray(forward(collate([rows[i] for i in group])))
        if out is None:
            out = np.empty((n, *raw.shape[1:]), dtype=raw.dtype)
        out[group] = raw
    assert out is not None
    return out
