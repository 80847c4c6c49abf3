"""The parts a migration is built from: spec compatibility, the evaluation set, the card report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.errors import InvalidInput, LimitExceeded
from indexer.kept_sources import KeptSource
from indexer.store.sqlite import SqliteStore
from indexer.upgrade.bridging import BridgeRequest, calibration_inputs, encode_both
from indexer.upgrade.compat import SpecCompat
from indexer.upgrade.errors import EvalSetNotFound
from indexer.upgrade.eval_set import (
    MAX_EVAL_ITEMS,
    check_eval_set,
    delete_eval_set,
    describe_eval_set,
    put_eval_set,
    stored_eval_set,
)
from indexer.upgrade.gate import card_report
from models.core.registry import load_encoder
from tests.indexer.upgrade.conftest import LABELS, OTHER, TEXTS, V1, V2, WIDTH, MakeUpgrades, embed, write_models


def test_spec_compat_follows_the_installed_specs(tmp_path: Path) -> None:
    write_models(tmp_path)
    compat = SpecCompat(tmp_path)
    assert compat.chain(V2, V1) == WIDTH and compat.chain(V1, V2) is None and compat.chain(OTHER, V1) is None
    assert compat.prefix(V2, WIDTH + 8, V1, WIDTH) == WIDTH  # the compatible prefix
    assert compat.prefix(V1, WIDTH, V2, WIDTH + 8) is None  # an old query never meets newer vectors
    assert compat.prefix(V1, WIDTH, V1, WIDTH) == WIDTH
    # versions without a spec are client labels: compared only at equal width
    assert compat.prefix("mine@1", 4, "mine@2", 4) == 4 and compat.prefix("mine@1", 4, V1, WIDTH) is None
    assert compat.dim_of(V2) == WIDTH + 8 and compat.dim_of("mine@1") is None and compat.spec("nope@1") is None


@pytest.mark.parametrize(
    ("inputs", "labels", "error", "message"),
    [
        (["a", "b"], ["x"], InvalidInput, "2 inputs but 1 labels"),
        (["a"], ["x"], InvalidInput, "at least 2"),
        (["a", "b"], ["x", "y"], InvalidInput, "no label occurs twice"),
        (["a"] * (MAX_EVAL_ITEMS + 1), ["x"] * (MAX_EVAL_ITEMS + 1), LimitExceeded, "at most"),
    ],
)
def test_bad_eval_sets_are_refused(inputs: list[str], labels: list[str], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        check_eval_set(inputs, labels)


def test_eval_set_round_trip(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "meta.sqlite3")
    try:
        assert stored_eval_set(store, "c") is None
        with pytest.raises(EvalSetNotFound):
            describe_eval_set(store, "c")
        described = put_eval_set(store, "c", TEXTS, LABELS)
        assert (described["size"], described["labels"]) == (len(TEXTS), 4)
        stored = stored_eval_set(store, "c")
        assert stored is not None and (stored.inputs, stored.labels, stored.source) == (TEXTS, LABELS, "collection")
        delete_eval_set(store, "c")
        assert stored_eval_set(store, "c") is None
    finally:
        store.close()


def test_card_report_is_found_in_the_card_or_two_levels_down(tmp_path: Path) -> None:
    report = {"old": V1, "new": V2, "criterion_met": False}
    (tmp_path / V2).mkdir()
    assert card_report(tmp_path, V2, V1) is None  # no card
    (tmp_path / V2 / "metrics.json").write_text(json.dumps({"eval": {"compat": report}, "top1": 0.5}))
    assert card_report(tmp_path, V2, V1) == report
    assert card_report(tmp_path, V2, OTHER) is None  # a report against another model does not count
    (tmp_path / V2 / "metrics.json").write_text("{not json")
    assert card_report(tmp_path, V2, V1) is None


class CountingEncoder:
    """A real encoder that records every input it was given (a failing batch is retried input by input)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder, self.spec, self.backend = encoder, encoder.spec, encoder.backend
        self.seen: list[str] = []

    def preprocess(self, inputs: Any) -> Any:
        self.seen += [repr(x) for x in inputs]
        return self.encoder.preprocess(inputs)

    def forward(self, batch: Any, threads: int | None = None) -> Any:
        return self.encoder.forward(batch, threads)

    def postprocess(self, raw: Any, batch: Any) -> Any:
        return self.encoder.postprocess(raw, batch)


def test_calibration_reuses_the_stored_vectors_of_the_active_encoder(make_upgrades: MakeUpgrades) -> None:
    up = make_upgrades()
    old, new = load_encoder(up.models_dir / V1), load_encoder(up.models_dir / V2)
    collection = up.manager.create("kept", WIDTH, "cosine", encoder=V1, keep_sources=True)
    ids = [f"t{i}" for i in range(len(TEXTS))]
    sources = [KeptSource.of(t) for t in TEXTS]
    collection.upsert(ids, embed(old, TEXTS), sources=sources)
    # items t0..t3 then get vectors of another version (mid-migration): the old encoder must embed those again
    collection.upsert(ids[:4], embed(new, TEXTS[:4]), versions=[V2] * 4, sources=sources[:4])
    request = BridgeRequest(V2, "fuse", calibration_size=len(TEXTS))
    inputs, labels, stored = calibration_inputs(collection, request, [], "text", 10**6)
    assert labels is None and len(inputs) == len(stored) == len(TEXTS)
    assert sum(v is None for v in stored) == 4  # exactly the other version's items
    counting = CountingEncoder(old)
    olds, news, kept = encode_both(counting, new, inputs, lambda n: None, stored)  # type: ignore[arg-type]
    assert kept.all() and len(counting.seen) == 4  # only the items without a stored vector of V1
    np.testing.assert_allclose(olds, embed(old, inputs), atol=1e-6)  # the same vectors as encoding them all
    np.testing.assert_allclose(news, embed(new, inputs), atol=1e-6)


class DictCache:
    """The ``VectorCache`` interface over a dict (the server passes its LRU or Redis cache)."""

    def __init__(self) -> None:
        self.vectors: dict[str, np.ndarray] = {}

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        return [self.vectors.get(k) for k in keys]

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        self.vectors.update(items)


def test_a_rerun_takes_the_calibration_vectors_from_the_cache(make_upgrades: MakeUpgrades) -> None:
    up = make_upgrades()
    old, new = CountingEncoder(load_encoder(up.models_dir / V1)), CountingEncoder(load_encoder(up.models_dir / V2))
    cache, inputs = DictCache(), [*TEXTS, {"not": "cached"}]  # a record input: no cache key, encoded each time
    first = encode_both(old, new, inputs, lambda n: None, cache=cache)  # type: ignore[arg-type]
    assert set(old.seen) == set(new.seen) == {repr(x) for x in inputs} and len(cache.vectors) == 2 * len(TEXTS)
    assert not first[2][-1]  # the text encoders fail on the record: dropped, as before
    old.seen.clear()
    new.seen.clear()
    again = encode_both(old, new, inputs, lambda n: None, cache=cache)  # type: ignore[arg-type]
    assert set(old.seen) == set(new.seen) == {repr(inputs[-1])}  # only the record
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # keys carry the encoder version: v2's cached vectors are never v1's
    assert {k.split(":")[0] for k in cache.vectors} == {V1, V2}
