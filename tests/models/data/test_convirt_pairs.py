"""ConVIRT evaluation helpers by hand: each query's precision@k (what ``models.eval.seeds`` bootstraps),
the nearest-training-text baseline for text->image retrieval, and report retrieval's per-report scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.data.convirt_pairs import KS, load_pairs, nearest_text_features, precision_at_k, report_retrieval, role
from models.data.xray_reports import Report
from models.training.recipe import TrainingError


def test_precision_at_k_keeps_each_query_score_at_the_first_k() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    g = np.array([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = ["a", "b", "b", "a"]
    # query a ranks g1 (b), g0 (a); query b ranks g2 (b), g3 (a)
    assert precision_at_k(q, g, ["a", "b"], labels, False, ks=(1, 2), per_query=True) == {
        "p@1": 0.5, "p@2": 0.5, "p@1_per_query": [0.0, 1.0]}  # fmt: skip
    assert precision_at_k(q, g, ["a", "b"], labels, False, ks=(2, 1), per_query=True)["p@2_per_query"] == [0.5, 0.5]
    assert "p@1_per_query" not in precision_at_k(q, g, ["a", "b"], labels, False, ks=(1,))
    # chance: each query's expected precision, its label's share of the gallery
    chance = precision_at_k(None, None, ["a", "b", "c"], ["a", "b", "b", "a"], False, ks=(1,), per_query=True)
    assert chance == {"p@1": pytest.approx(1 / 3), "p@1_per_query": [0.5, 0.5, 0.0]}
    # leave-one-out: each drawing's top 3 among the 3 others holds its one twin; rounded to 6 decimals
    loo = precision_at_k(g, g, ["a", "a", "b", "b"], ["a", "a", "b", "b"], True, ks=(3,), per_query=True)
    assert loo["p@3_per_query"] == [0.333333] * 4 and loo["p@3"] == pytest.approx(1 / 3)


def test_nearest_text_features_takes_the_nearest_training_items_frozen_features() -> None:
    train = ["grinning face", "flag: japan", "flag: france", "red car", "red car"]
    views = np.array([[[1, 0], [1, 0]], [[0, 1], [0, 3]], [[2, 2], [0, 0]], [[4, 0], [0, 0]], [[0, 0], [0, 4]]])
    # item means: [1, 0], [0, 2], [1, 1], [2, 0], [0, 2]
    named = nearest_text_features(train, views.astype(np.float32), ["flag: japan", "red car", "zebra"])
    # "flag: japan": its own name, item 1 ("flag: france" shares only "flag"); "red car": two training items
    # bear it, the mean of both; "zebra": no word in common with any training name, every item ties, their mean
    np.testing.assert_allclose(named, [[0.0, 2.0], [1.0, 1.0], [0.8, 1.0]], atol=1e-6)
    np.testing.assert_allclose(nearest_text_features(train, views.mean(axis=1), ["red car"]), [[1.0, 1.0]])
    # ranked against a gallery of frozen features: cosine puts [0.8, 1] nearest the car, not an animal
    gallery = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    scores = precision_at_k(named, gallery, ["flags", "cars", "animals"], ["flags", "cars", "faces"], False,
                            ks=(1,), per_query=True)  # fmt: skip
    assert scores == {"p@1": pytest.approx(2 / 3), "p@1_per_query": [1.0, 1.0, 0.0]}


def test_report_retrieval_per_query_scores_average_to_the_aggregate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-report P@k of every row (model, TF-IDF, chance) at every k, in report order: their mean is the score."""
    words = ["heart", "enlarged", "lungs", "clear", "spine", "curved", "nodule", "calcified"]
    rng = np.random.default_rng(0)
    reports = [Report(f"CXR{i}", " ".join(rng.choice(words, 4)), "", (heading,))
               for i, heading in enumerate(["Cardiomegaly"] * 25 + ["normal"] * 20 + ["Scoliosis"] * 22)]  # fmt: skip
    monkeypatch.setattr("models.data.xray_reports.load_reports", lambda cache_dir: reports)
    vectors = rng.normal(size=(len(reports), 3))

    def embed(texts: list[str]) -> np.ndarray:
        return vectors[: len(texts)]

    scores = report_retrieval(embed, Path("unused"), max_per_label=21, per_query=True)
    assert scores["reports"] == 62 and scores["mesh_labels"] == 3  # Cardiomegaly capped at 21
    for row in ("r2r", "bow_r2r", "chance_r2r"):
        for k in KS:
            each = scores[f"{row}_p@{k}_per_query"]
            assert len(each) == 62 and np.mean(each) == pytest.approx(scores[f"{row}_p@{k}"], abs=1e-6), (row, k)
    plain = report_retrieval(embed, Path("unused"), max_per_label=21)
    assert plain == {key: v for key, v in scores.items() if not key.endswith("_per_query")}


def test_validation_split_is_carved_from_the_training_items_and_never_touches_test() -> None:
    keys = [f"item-{i}" for i in range(2000)]
    plain = {k: role(k, 20, 0) for k in keys}
    val = {k: role(k, 20, 25) for k in keys}
    assert set(plain.values()) == {"train", "held"} and set(val.values()) == {"train", "held", "unused"}
    # the test items are unused with a validation split, and nothing else is
    assert {k for k, r in plain.items() if r == "held"} == {k for k, r in val.items() if r == "unused"}
    # validation items are training items without it; every other training item still trains
    val_items = {k for k, r in val.items() if r == "held"}
    assert val_items <= {k for k, r in plain.items() if r == "train"}
    assert {k for k, r in val.items() if r == "train"} == {k for k, r in plain.items() if r == "train"} - val_items
    assert 0.15 < len(val_items) / sum(r == "train" for r in plain.values()) < 0.35  # about 25%
    with pytest.raises(TrainingError, match="val_percent"):
        load_pairs("emoji", None, 20, "category", Path("unused"), val_percent=100)
