"""The encoder batcher under length-sorted batching (service.runtime.batching), on a real MiniLM:
requests' rows are split and merged freely, yet every client gets its own vectors, in its order."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.core.encoder import encode
from service.runtime.batching import _Request, _Row, pick
from tests.conftest import install_zoo_model
from tests.service.conftest import MakeClient

REPORT = ("the patient shows clear lungs with no focal consolidation effusion or pneumothorax and a normal "
          "heart size while the mediastinal contours remain stable compared with the prior study")  # fmt: skip
WORDS = REPORT.split()


def sentence(rng: np.random.Generator) -> str:
    n = int(rng.choice([2, 4, 8, 30, 60]))  # mixed lengths: 2 to 60 words
    return " ".join(rng.choice(WORDS, size=n))


@pytest.fixture
def minilm(make_client: MakeClient, tmp_path: Path, zoo_dirs: tuple[Path, Path]) -> tuple[TestClient, str]:
    key = install_zoo_model("minilm-l3", tmp_path / "data", zoo_dirs)
    # A long window and a small budget, so that concurrent requests are merged and split.
    return make_client(batch_wait_ms=30, batch_tokens=256, batch_max=6, embed_cache_size=0), key


def test_mixed_lengths_from_concurrent_clients_come_back_in_request_order(minilm: tuple[TestClient, str]) -> None:
    client, key = minilm
    rng = np.random.default_rng(7)
    requests = [[sentence(rng) for _ in range(int(rng.integers(1, 12)))] for _ in range(8)]
    answers: list[Any] = [None] * len(requests)

    def run(i: int) -> None:
        answers[i] = client.post("/v1/embed", json={"encoder": key, "inputs": requests[i]})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    encoder = client.app.state.hub.get(key)  # type: ignore[attr-defined]
    for texts, answer in zip(requests, answers, strict=True):
        assert answer.status_code == 200, answer.text
        got = np.asarray(answer.json()["vectors"], dtype=np.float32)
        solo = np.concatenate([encode(encoder, [t]) for t in texts])  # each text alone, no padding at all
        assert got.shape == solo.shape
        np.testing.assert_allclose(got, solo, atol=2e-5)
    batcher = client.app.state.hub.batchers[key]  # type: ignore[attr-defined]
    rows = sum(len(r) for r in requests)
    assert batcher.rows_run == rows
    assert batcher.batches_run >= rows / 6  # the row cap held: requests were split
    # Grouped by length, padding stays small; per-request padding of these mixes costs far more.
    assert batcher.padded_run <= 1.5 * batcher.units_run, (batcher.padded_run, batcher.units_run)


def test_pick_takes_the_oldest_row_and_its_nearest_lengths() -> None:
    request = _Request(future=None, rows=6)  # type: ignore[arg-type]
    lengths = [50, 3, 48, 4, 52, 200]
    pending = [_Row(request, i, n, {}, seq=i) for i, n in enumerate(lengths)]
    group = pick(pending, budget=160, max_rows=8)
    assert pending[0] in group  # the oldest always goes
    assert sorted(r.length for r in group) == [48, 50, 52]  # its neighbours in length, within 3 x 52 <= 160
    lone = pick(pending[5:] + pending[:5], budget=160, max_rows=8)
    assert [r.length for r in lone] == [200]  # longer than the budget: alone, never starved
