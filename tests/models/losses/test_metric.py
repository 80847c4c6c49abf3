"""Triplet mining on hand-made distance matrices: the chosen negatives are exactly the expected ones."""

from __future__ import annotations

import pytest
import torch

from models.losses.metric import (
    batch_hard_pairs,
    batch_hard_triplet_loss,
    pairwise_distances,
    semi_hard_mask,
    semi_hard_triplet_loss,
    triplet_loss,
)

torch.set_num_threads(1)

# Items 0, 1 are identity A; 2, 3 identity B; 4 identity C. Symmetric, zero diagonal.
LABELS = torch.tensor([0, 0, 1, 1, 2])
DIST = torch.tensor(
    [
        [0.00, 0.50, 0.40, 0.60, 0.65],
        [0.50, 0.00, 0.72, 0.90, 0.55],
        [0.40, 0.72, 0.00, 0.30, 0.20],
        [0.60, 0.90, 0.30, 0.00, 0.45],
        [0.65, 0.55, 0.20, 0.45, 0.00],
    ]
)
MARGIN = 0.2


def expected_semi_hard() -> set[tuple[int, int, int]]:
    """Written out by hand from DIST: negatives n with d(a,p) < d(a,n) < d(a,p) + 0.2."""
    return {
        # a=0, p=1 (d=0.5): negatives 2 (0.40, closer: hard, out), 3 (0.60 in), 4 (0.65 in)
        (0, 1, 3), (0, 1, 4),
        # a=1, p=0 (d=0.5): negatives 2 (0.72, beyond 0.70: easy, out), 3 (0.90 out), 4 (0.55 in)
        (1, 0, 4),
        # a=2, p=3 (d=0.3): negatives 0 (0.40 in), 1 (0.72 out), 4 (0.20 hard, out)
        (2, 3, 0),
        # a=3, p=2 (d=0.3): negatives 0 (0.60 out), 1 (0.90 out), 4 (0.45 in)
        (3, 2, 4),
        # item 4 has no positive: it is never an anchor
    }  # fmt: skip


def test_semi_hard_mask_picks_exactly_the_negatives_inside_the_margin() -> None:
    mask = semi_hard_mask(DIST, LABELS, MARGIN)
    chosen = {tuple(int(i) for i in idx) for idx in mask.nonzero()}
    assert chosen == expected_semi_hard()


def test_semi_hard_loss_sums_those_triplets_over_all_valid_ones() -> None:
    stats = semi_hard_triplet_loss(DIST, LABELS, MARGIN)
    terms = [float(DIST[a, p] - DIST[a, n] + MARGIN) for a, p, n in expected_semi_hard()]
    assert stats.active == 5 and stats.triplets == 2 * 3 + 2 * 3  # 4 (a, p) pairs x 3 negatives
    assert stats.loss.item() == pytest.approx(sum(terms) / 12)  # easy and hard triplets count as zero
    assert all(0 < t < MARGIN for t in terms)


def test_semi_hard_with_no_candidate_gives_zero_loss_with_a_graph() -> None:
    dist = torch.tensor([[0.0, 0.1, 0.9], [0.1, 0.0, 0.9], [0.9, 0.9, 0.0]], requires_grad=True)
    stats = semi_hard_triplet_loss(dist, torch.tensor([0, 0, 1]), MARGIN)  # every negative is easy
    assert stats.loss.item() == 0.0 and stats.active == 0
    stats.loss.backward()  # still differentiable: a training step with nothing to mine must not crash


def test_batch_hard_picks_farthest_positive_and_nearest_negative() -> None:
    far, near, valid = batch_hard_pairs(DIST, LABELS)
    assert valid.tolist() == [True, True, True, True, False]
    assert far[:4].tolist() == [1, 0, 3, 2]
    assert near[:4].tolist() == [2, 4, 4, 4]  # nearest other-identity item per anchor
    stats = batch_hard_triplet_loss(DIST, LABELS, MARGIN)
    terms = [max(0.0, float(DIST[a, far[a]] - DIST[a, near[a]] + MARGIN)) for a in range(4)]
    assert stats.loss.item() == pytest.approx(sum(terms) / 4)
    assert stats.active == sum(t > 0 for t in terms)


def test_pairwise_distances_match_cdist_and_have_finite_gradients() -> None:
    x = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    x = torch.cat([x, x[:1]])  # a duplicate: distance exactly 0 off the diagonal
    x.requires_grad_(True)
    assert torch.allclose(pairwise_distances(x, squared=False), torch.cdist(x, x), atol=1e-5)
    assert torch.allclose(pairwise_distances(x), torch.cdist(x, x) ** 2, atol=1e-5)
    pairwise_distances(x, squared=False).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_triplet_loss_checks_inputs() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="labels"):
        triplet_loss(x, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(x, torch.tensor([0, 0, 1, 1]), mining="hardest")  # type: ignore[arg-type]
