"""The cross-model retrieval term (new prefix retrieving among old features, leave-self-out)."""

from __future__ import annotations

import torch

from models.losses.compat import cross_model_retrieval_loss

OLD = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])  # two items per class
OLD_LABELS = torch.tensor([0, 0, 1, 1])


def loss_of(prefix: torch.Tensor, index: list[int], labels: list[int]) -> float:
    return float(cross_model_retrieval_loss(prefix, torch.tensor(index), torch.tensor(labels), OLD, OLD_LABELS, 0.1))


def test_a_prefix_near_its_class_scores_lower_than_one_near_the_other_class() -> None:
    near_own = loss_of(torch.tensor([[1.0, 0.05]]), [0], [0])
    near_other = loss_of(torch.tensor([[0.05, 1.0]]), [0], [0])
    assert near_own < 0.1 < near_other


def test_the_item_itself_is_left_out() -> None:
    # the query's own old feature is no candidate: moving it anywhere leaves the loss unchanged
    prefix, index, labels = torch.tensor([[1.0, 0.2]]), torch.tensor([0]), torch.tensor([0])
    moved = OLD.clone()
    moved[0] = torch.tensor([-1.0, 0.0])
    before = cross_model_retrieval_loss(prefix, index, labels, OLD, OLD_LABELS, 0.1)
    after = cross_model_retrieval_loss(prefix, index, labels, moved, OLD_LABELS, 0.1)
    assert torch.allclose(before, after)
    other = cross_model_retrieval_loss(prefix, torch.tensor([1]), labels, moved, OLD_LABELS, 0.1)
    assert not torch.allclose(before, other)  # as a candidate, the moved feature does count


def test_anchors_without_a_positive_are_skipped_and_gradients_flow() -> None:
    prefix = torch.tensor([[0.5, 0.5], [1.0, 0.0]], requires_grad=True)
    loss = cross_model_retrieval_loss(prefix, torch.tensor([0, 2]), torch.tensor([5, 0]), OLD, OLD_LABELS, 0.1)
    loss.backward()
    assert prefix.grad is not None and prefix.grad[0].abs().sum() == 0 and prefix.grad[1].abs().sum() > 0
