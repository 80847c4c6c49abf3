"""Length-grouped forwards (models.core.batching): padding bounded, rows back in input order."""

from __future__ import annotations

import numpy as np

from models.core.batching import Budget, collate, forward_all, forward_grouped, length_groups, row_lengths, split_rows
from models.core.encoder import Batch


def token_batch(lengths: list[int]) -> Batch:
    """Right-padded token rows whose ids encode (row, position), like a tokenizer's output."""
    width = max(lengths)
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = 1000 * (i + 1) + np.arange(n)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "_face_of": np.arange(len(lengths))}


def mean_id(feeds: Batch) -> np.ndarray:
    """A 'network' whose output depends on every real token and on none of the padding."""
    ids, mask = feeds["input_ids"].astype(np.float64), feeds["attention_mask"]
    return ((ids * mask).sum(axis=1) / mask.sum(axis=1))[:, None]


def test_groups_respect_the_padded_budget_and_row_cap() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=200)
    groups = length_groups(lengths, budget=512, max_rows=16)
    assert sorted(np.concatenate(groups).tolist()) == list(range(200))  # every row exactly once
    for g in groups:
        assert len(g) <= 16
        assert len(g) == 1 or len(g) * lengths[g].max() <= 512
    padded = sum(len(g) * lengths[g].max() for g in groups)
    naive = sum(len(c) * c.max() for c in np.array_split(lengths, 200 // 16 + 1))  # arrival order
    assert padded < 0.75 * naive, (padded, naive)


def test_a_row_longer_than_the_budget_goes_alone() -> None:
    groups = length_groups(np.array([5, 900, 6]), budget=100, max_rows=8)
    assert [sorted(g.tolist()) for g in groups] == [[0, 2], [1]]


def test_split_rows_cuts_each_row_to_its_length_and_collate_pads_back() -> None:
    batch = token_batch([3, 7, 1])
    rows = split_rows(batch)
    assert [r["input_ids"].shape[1] for r in rows] == [3, 7, 1]
    assert "_face_of" not in rows[0]  # bookkeeping stays with the request
    again = collate(rows)
    np.testing.assert_array_equal(again["input_ids"], batch["input_ids"])
    np.testing.assert_array_equal(row_lengths(batch), [3, 7, 1])


def test_forward_grouped_returns_rows_in_input_order_with_less_padding() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 90, size=50).tolist()
    batch = token_batch(lengths)
    shapes: list[tuple[int, int]] = []

    def forward(feeds: Batch) -> np.ndarray:
        shapes.append(feeds["input_ids"].shape)
        return mean_id(feeds)

    out = forward_grouped(forward, batch, Budget(tokens=400, rows=8))
    np.testing.assert_allclose(out, mean_id(batch))
    assert sum(r * w for r, w in shapes) < 0.6 * len(lengths) * max(lengths)


def test_images_are_grouped_by_pixels() -> None:
    images = {"input": np.zeros((10, 3, 32, 32), dtype=np.float32)}
    seen: list[int] = []

    def forward(feeds: Batch) -> np.ndarray:
        seen.append(len(feeds["input"]))
        return feeds["input"].reshape(len(feeds["input"]), -1)[:, :2]

    forward_grouped(forward, images, Budget(pixels=3 * 32 * 32, rows=8))
    assert seen == [3, 3, 3, 1]


class RecordingNetwork:
    """The forward stage of an encoder: ``mean_id``, recording each forward's shape and threads."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.threads: set[int | None] = set()

    def forward(self, batch: Batch, threads: int | None = None) -> np.ndarray:
        first = next(v for k, v in batch.items() if not k.startswith("_"))
        self.shapes.append(first.shape)
        self.threads.add(threads)
        return mean_id(batch) if "attention_mask" in batch else first.reshape(len(first), -1)[:, :2]


def test_forward_all_groups_a_large_text_batch_and_keeps_images_whole() -> None:
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 256, size=600).tolist()
    batch, network = token_batch(lengths), RecordingNetwork()
    out = forward_all(network.forward, batch, threads=1)
    np.testing.assert_allclose(out, mean_id(batch))  # rows back in input order
    assert len(network.shapes) > 1 and network.threads == {1}
    assert sum(r * w for r, w in network.shapes) < 0.6 * len(lengths) * max(lengths)  # far less padding
    images, network = {"input": np.zeros((300, 3, 32, 32), dtype=np.float32)}, RecordingNetwork()
    forward_all(network.forward, images)
    assert network.shapes == [(300, 3, 32, 32)]  # fixed-shape rows: nothing to gain from splitting
