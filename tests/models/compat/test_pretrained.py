"""Upgrades between independently trained encoders (``models.compat.pretrained``) on synthetic spaces whose
true relation is known: each check fails if a method learns nothing or the gate lets a worse model through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.compat.choice import choose, paired_confidence
from models.compat.pretrained import (
    Calibration,
    fit_adapter,
    fit_fuse,
    fit_procrustes,
    fit_ridge,
    fit_transform,
    fuse_scores,
    recall_at_k,
    slerp,
    unit,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _r1(query: np.ndarray, gallery: np.ndarray) -> float:
    return float(np.mean(np.argmax(unit(query) @ unit(gallery).T, axis=1) == np.arange(len(query))))


def _two_models(n: int, seed: int, old_noise: float = 0.6, new_noise: float = 0.15, d: int = 32) -> Calibration:
    """Items and queries share a latent; the old model sees it through more noise than the new one, which
    also lives in a rotated space. Query i's answer is item i."""
    rng = np.random.default_rng(seed)
    rotation = _orthogonal(d, rng)
    item = rng.normal(size=(n, d))
    query = item + 1.2 * rng.normal(size=(n, d))

    def old(x: np.ndarray) -> np.ndarray:
        return unit(x + old_noise * rng.normal(size=x.shape))

    def new(x: np.ndarray) -> np.ndarray:
        return unit((x + new_noise * rng.normal(size=x.shape)) @ rotation)

    return Calibration(old(item), new(item), old(query), new(query))


def test_procrustes_recovers_a_rotation_under_noise() -> None:
    rng = np.random.default_rng(0)
    old = unit(rng.normal(size=(600, 32)))
    rotation = _orthogonal(32, rng)
    new = unit(old @ rotation + 0.05 * rng.normal(size=old.shape))
    fitted = fit_procrustes(new, old)
    assert np.abs(fitted.weight - rotation.T).max() < 0.05
    assert _r1(fitted.apply(new), old) > 0.99
    assert _r1(new, old) < 0.1  # unmapped, the rotated space finds nothing


def test_procrustes_between_different_widths() -> None:
    rng = np.random.default_rng(1)
    old = unit(rng.normal(size=(600, 24)))
    embed = np.linalg.qr(rng.normal(size=(40, 24)))[0].T  # (24, 40): orthonormal rows, old space inside 40 dims
    new = unit(old @ embed + 0.05 * rng.normal(size=(600, 40)))
    fitted = fit_procrustes(new, old)
    assert fitted.weight.shape == (40, 24)
    np.testing.assert_allclose(fitted.weight.T @ fitted.weight, np.eye(24), atol=1e-4)  # semi-orthogonal
    assert _r1(fitted.apply(new), old) > 0.99
    narrow = fit_procrustes(old, new)  # 24 -> 40: truncation the other way round
    assert narrow.weight.shape == (24, 40) and _r1(narrow.apply(old), new) > 0.99


def test_slerp_end_points_and_midpoint() -> None:
    rng = np.random.default_rng(2)
    a, b = unit(rng.normal(size=(5, 8))), unit(rng.normal(size=(5, 8)))
    np.testing.assert_allclose(slerp(a, b, 0.0), a, atol=1e-5)
    np.testing.assert_allclose(slerp(a, b, 1.0), b, atol=1e-5)
    mid = slerp(a, b, 0.5)
    np.testing.assert_allclose(np.sum(mid * a, axis=1), np.sum(mid * b, axis=1), atol=1e-5)  # equal angles
    np.testing.assert_allclose(slerp(a, a, 0.3), a, atol=1e-5)  # parallel rows do not divide by zero


def test_fuse_blend_is_chosen_on_validation_and_beats_old_old() -> None:
    both = _two_models(1200, seed=3)  # one pair of models: calibrate on 800 items, test on the other 400
    cal, test = both.subset(np.arange(800)), both.subset(np.arange(800, 1200))
    fuse = fit_fuse(cal)
    assert fuse.blend > 0.0 and fuse.validation_r10[fuse.blend] == max(fuse.validation_r10.values())
    ids = np.arange(len(test.old))
    assert test.query_old is not None and test.query_new is not None
    old_old = recall_at_k(test.query_old, test.old, ids, ids)
    fused = fuse_scores(fuse, test.query_old, test.query_new, test.old)  # (q, G)
    top10 = np.argsort(-fused, axis=1)[:, :10]
    assert np.mean((top10 == ids[:, None]).any(axis=1)) > old_old + 0.05


def test_transform_learns_a_nonlinear_map_better_than_identity_and_ridge() -> None:
    rng = np.random.default_rng(5)
    rotation = _orthogonal(16, rng)

    def truth(x: np.ndarray) -> np.ndarray:  # the new space: an even (so not linear) function of the old one
        z = x @ rotation
        return unit(4.0 * np.abs(z) + 0.3 * z)

    old, old_test = unit(rng.normal(size=(3000, 16))), unit(rng.normal(size=(500, 16)))
    new, new_test = truth(old), truth(old_test)
    model = fit_transform(old, new, seed=0, steps=600, hidden=256)
    assert model.kind == "mlp", model.validation  # chosen on validation, not assumed
    identity = _r1(new_test, old_test)
    ridge = _r1(new_test, unit(old_test @ fit_ridge(old, new, 1e-3)))
    learned = _r1(new_test, model.apply(old_test))
    assert learned > 0.9 and ridge < 0.1 and identity < 0.1, (learned, ridge, identity)
    assert float(np.mean(np.sum(model.apply(old_test) * new_test, axis=1))) > 0.85


def test_adapter_prefix_aligns_and_extra_dims_keep_the_new_information() -> None:
    rng = np.random.default_rng(6)
    shared, private = rng.normal(size=(1500, 16)), rng.normal(size=(1500, 8))
    old = unit(shared + 0.1 * rng.normal(size=shared.shape))
    new = unit(np.concatenate([shared, private], axis=1) @ _orthogonal(24, rng))  # knows more than old
    train, test = np.arange(1200), np.arange(1200, 1500)
    adapter = fit_adapter(new[train], old[train], d_extra=8, seed=0, steps=300, hidden=128)
    out = adapter.apply(new[test])
    assert out.shape == (300, 24) and _r1(adapter.prefix(new[test]), old[test]) > 0.9

    def agreement(space: np.ndarray) -> float:  # overlap of 10-NN lists with the new model's own
        def knn(x: np.ndarray) -> np.ndarray:
            scores = x @ x.T
            np.fill_diagonal(scores, -np.inf)
            return np.argsort(-scores, axis=1)[:, :10]

        mine, theirs = knn(unit(space)), knn(new[test])
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(mine, theirs, strict=True)]))

    assert agreement(out) > agreement(adapter.prefix(new[test])) + 0.2  # the extra dims carry `private`


def test_choose_picks_a_method_that_beats_old_old_and_is_deterministic() -> None:
    cal = _two_models(1000, seed=7)
    first, second = choose(cal, seed=0), choose(cal, seed=0)
    assert not first.refused and first.best in ("fuse", "adapter", "transform"), first.reason
    assert first.figures[first.best] > first.figures["old/old"]
    assert set(first.figures) >= {"old/old", "new/new", "raw new/old", "fuse", "adapter", "transform"}
    assert first.figures == second.figures and first.best == second.best and first.model is not None
    assert first.figures["raw new/old"] < 0.2 < first.own_pair["fuse"]  # rotated: raw fails, the map aligns


def test_choose_refuses_pure_noise_and_a_set_without_a_task() -> None:
    cal = _two_models(600, seed=8)
    rng = np.random.default_rng(9)
    assert cal.query_old is not None
    noise = Calibration(cal.old, unit(rng.normal(size=cal.new.shape)), cal.query_old,
                        unit(rng.normal(size=cal.new.shape)))  # fmt: skip
    refused = choose(noise, seed=0)
    assert refused.refused and refused.best is None and refused.model is None
    assert "no method surely beats old/old" in refused.reason and refused.figures["old/old"] > 0.3
    assert all(refused.figures[m] <= refused.figures["old/old"] for m in ("fuse", "adapter", "transform"))
    untasked = choose(Calibration(cal.old, cal.new), seed=0)
    assert untasked.refused and "cannot be measured" in untasked.reason


def test_choose_with_labels_uses_leave_self_out() -> None:
    rng = np.random.default_rng(10)
    labels = np.repeat(np.arange(40), 15)
    centres = rng.normal(size=(40, 32))
    latent = centres[labels] + 1.2 * rng.normal(size=(600, 32))
    old = unit(latent + 1.5 * rng.normal(size=latent.shape))
    new = unit((latent + 0.3 * rng.normal(size=latent.shape)) @ _orthogonal(32, rng))
    choice = choose(Calibration(old, new, labels=labels), seed=0)
    assert choice.figures["new/new"] > choice.figures["old/old"]  # the new model clusters better
    assert not choice.refused and choice.figures[str(choice.best)] > choice.figures["old/old"], choice.figures


def test_paired_confidence_needs_a_sure_difference() -> None:
    old = np.zeros(50, bool)
    old[:25] = True
    assert paired_confidence(old, old, seed=0) == 0.0  # identical: never better
    one_more = old.copy()
    one_more[30] = True  # +2 points of R@10 on 50 queries: the noisy margin the gate must not trust
    assert 0.5 < paired_confidence(one_more, old, seed=0) < 0.95
    many_more = old.copy()
    many_more[25:40] = True  # +30 points
    assert paired_confidence(many_more, old, seed=0) > 0.99
    swapped = np.roll(old, 10)  # the same hit rate on other queries: no sure difference either way
    assert paired_confidence(swapped, old, seed=0) < 0.95
