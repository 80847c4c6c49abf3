"""Triplet loss with online mining (FaceNet, Schroff et al. 2015; batch-hard, Hermans et al. 2017).

Everything here is a pure function of a distance matrix and the batch's identity labels, so the
mining can be checked on hand-made distances. Distances are squared Euclidean between unit
embeddings by default, as in the FaceNet paper (margin 0.2 lives on that scale).

- semi-hard: every (anchor, positive) pair with every negative that is farther from the anchor than
  the positive but still inside the margin, ``d(a,p) < d(a,n) < d(a,p) + margin``. Harder negatives
  (closer than the positive) are left out on purpose: early in training they pull the embedding
  towards a collapsed solution (FaceNet §3.2).
- batch-hard: per anchor, its farthest positive and nearest negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Mining = Literal["semi-hard", "batch-hard"]


@dataclass
class TripletStats:
    loss: torch.Tensor  # scalar, differentiable
    active: int  # triplets that contributed a non-zero term
    triplets: int  # triplets considered


def pairwise_distances(embeddings: torch.Tensor, squared: bool = True) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances (squared by default); exact zeros on the diagonal."""
    dots = embeddings @ embeddings.T  # (B, B)
    norms = dots.diagonal()
    dist = (norms[:, None] - 2.0 * dots + norms[None, :]).clamp_min(0.0)  # (B, B)
    dist = dist * (1.0 - torch.eye(len(embeddings), device=dist.device, dtype=dist.dtype))
    if squared:
        return dist
    # sqrt'(0) is infinite: take the root of strictly positive entries only, so zeros get zero gradient.
    positive = dist > 0
    safe = torch.where(positive, dist, torch.ones_like(dist)).sqrt()
    return torch.where(positive, safe, torch.zeros_like(dist))


def _pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) -> positive-pair mask (same label, not the same item) and negative mask, both (B, B)."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def semi_hard_mask(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """(B, B) distances, (B,) labels -> (B, B, B) mask, ``[a, p, n]`` True for a semi-hard triplet."""
    positives, negatives = _pair_masks(labels)
    d_ap = dist[:, :, None]  # (B, B, 1)
    d_an = dist[:, None, :]  # (B, 1, B)
    inside = (d_an > d_ap) & (d_an < d_ap + margin)  # (B, B, B)
    return positives[:, :, None] & negatives[:, None, :] & inside


def semi_hard_triplet_loss(dist: torch.Tensor, labels: torch.Tensor, margin: float = 0.2) -> TripletStats:
    """``d(a,p) - d(a,n) + margin`` summed over the semi-hard triplets (each term lies in (0, margin)),
    divided by the number of valid triplets: easy triplets count as zero, so the loss falls as the
    identities separate (a mean over the semi-hard ones alone would hover near margin / 2)."""
    mask = semi_hard_mask(dist, labels, margin)  # (B, B, B)
    terms = dist[:, :, None] - dist[:, None, :] + margin  # (B, B, B)
    count = int(mask.sum())
    positives, negatives = _pair_masks(labels)
    considered = int((positives.sum(dim=1) * negatives.sum(dim=1)).sum())  # every valid (a, p, n)
    if count == 0:
        return TripletStats(dist.sum() * 0.0, 0, considered)  # keeps the graph; nothing to learn here
    return TripletStats(terms[mask].sum() / considered, count, considered)


def batch_hard_pairs(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per anchor: index of its farthest positive and nearest negative, and whether it has both."""
    positives, negatives = _pair_masks(labels)
    far = torch.where(positives, dist, torch.full_like(dist, -float("inf"))).argmax(dim=1)  # (B,)
    near = torch.where(negatives, dist, torch.full_like(dist, float("inf"))).argmin(dim=1)  # (B,)
    valid = positives.any(dim=1) & negatives.any(dim=1)  # (B,)
    return far, near, valid


def batch_hard_triplet_loss(dist: torch.Tensor, labels: torch.Tensor, margin: float = 0.2) -> TripletStats:
    """Mean of ``max(0, d(a, hardest p) - d(a, hardest n) + margin)`` over anchors with both."""
    far, near, valid = batch_hard_pairs(dist, labels)
    rows = torch.arange(len(labels), device=dist.device)
    terms = (dist[rows, far] - dist[rows, near] + margin).clamp_min(0.0)[valid]  # (A,)
    if len(terms) == 0:
        return TripletStats(dist.sum() * 0.0, 0, 0)
    return TripletStats(terms.mean(), int((terms > 0).sum()), len(terms))


def triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, mining: Mining = "semi-hard",
    squared: bool = True,
) -> TripletStats:  # fmt: skip
    """Triplet loss over a P x K batch of (B, D) embeddings with online ``mining``."""
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    dist = pairwise_distances(embeddings, squared=squared)
    if mining == "semi-hard":
        return semi_hard_triplet_loss(dist, labels, margin)
    if mining == "batch-hard":
        return batch_hard_triplet_loss(dist, labels, margin)
    raise ValueError(f"mining must be 'semi-hard' or 'batch-hard', got '{mining}'")
