"""``models.eval.probe``: the linear probe and fine-tuning protocols on real Fashion-MNIST pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from models.data.fashion_mnist import load_fashion_mnist
from models.eval.probe import L2_GRID, Split, fine_tune, label_subset, linear_probe


@pytest.fixture(scope="module")
def splits(zoo_dirs: tuple[Path, Path]) -> tuple[Split, Split, Split]:
    data = load_fashion_mnist(zoo_dirs[1])
    x = data.train_images[:1500].reshape(1500, -1).astype(np.float32) / 255.0
    y = data.train_labels[:1500].astype(np.int64)
    test_x = data.test_images[:500].reshape(500, -1).astype(np.float32) / 255.0
    return Split(x[:1000], y[:1000]), Split(x[1000:], y[1000:]), Split(test_x, data.test_labels[:500])


def nearest_centroid(train: Split, test: Split) -> float:
    centroids = np.stack([train.x[train.y == c].mean(axis=0) for c in range(10)])
    predicted = ((test.x[:, None, :] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    return float((predicted == test.y).mean())


def test_label_subset_is_seeded_sized_and_distinct_per_seed() -> None:
    a = label_subset(2486, 0.01, seed=3)
    assert len(a) == 25 and len(set(a.tolist())) == 25 and a.min() >= 0 and a.max() < 2486
    assert np.array_equal(a, label_subset(2486, 0.01, seed=3))
    assert not np.array_equal(a, label_subset(2486, 0.01, seed=4))
    assert np.array_equal(label_subset(40, 1.0, seed=0), np.arange(40))
    assert len(label_subset(40, 0.001, seed=0, minimum=5)) == 5
    with pytest.raises(ValueError, match="labelled fraction"):
        label_subset(40, 0.0, seed=0)


def test_linear_probe_beats_the_nearest_centroid_and_uses_more_labels(splits: tuple[Split, Split, Split]) -> None:
    train, val, test = splits
    full = linear_probe(train, val, test, classes=10)
    few = linear_probe(Split(train.x[label_subset(1000, 0.02, 0)], train.y[label_subset(1000, 0.02, 0)]), val, test,
                       classes=10)  # fmt: skip
    centroid = nearest_centroid(train, test)
    # logistic regression on 1,000 Fashion-MNIST images: ~0.8; class centroids: ~0.7
    assert full.test_accuracy > centroid + 0.05, (full, centroid)
    assert full.test_accuracy > few.test_accuracy + 0.1, (full, few)
    assert full.chosen["l2"] in L2_GRID


def test_the_test_split_never_changes_what_validation_chooses(splits: tuple[Split, Split, Split]) -> None:
    train, val, test = splits
    subset = label_subset(1000, 0.1, 1)
    small = Split(train.x[subset], train.y[subset])
    a = linear_probe(small, val, test, classes=10)
    shuffled = Split(test.x, np.random.default_rng(0).permutation(test.y))
    b = linear_probe(small, val, shuffled, classes=10)
    assert a.chosen == b.chosen and a.val_accuracy == b.val_accuracy
    assert a.test_accuracy > b.test_accuracy + 0.3  # the labels it scores with were scrambled


def test_fine_tune_trains_the_body_is_seeded_and_beats_the_centroid(splits: tuple[Split, Split, Split]) -> None:
    train, val, test = splits
    subset = label_subset(1000, 0.3, 0)
    small = Split(train.x[subset], train.y[subset])

    def body() -> nn.Module:
        return nn.Sequential(nn.Linear(784, 64), nn.ReLU())

    a = fine_tune(body, 64, small, val, test, classes=10, seed=0, max_epochs=20)
    b = fine_tune(body, 64, small, val, test, classes=10, seed=0, max_epochs=20)
    assert a == b  # seeded: the same choice and the same accuracy
    assert a.test_accuracy > nearest_centroid(small, test) + 0.03, a
    assert 1 <= a.chosen["epochs"] <= 20
