"""Backward-compatible training terms (BCT, BT², OCA); the methods combine them in models/compat.

All terms work on cosine geometry: features and classifier rows are L2-normalised, logits are
``scale · cos``, so the first ``d_old`` dims of a new embedding are judged exactly as the service
compares them with old vectors (prefix, renormalised).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_logits(features: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, d) features against (C, d) class weights -> (B, C) logits ``scale · cos``."""
    return scale * F.normalize(features, dim=1) @ F.normalize(weight, dim=1).T


def classification_loss(
    features: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, scale: float
) -> torch.Tensor:
    """Normalised-softmax cross-entropy: the new model's own objective."""
    return F.cross_entropy(cosine_logits(features, weight, scale), labels)


def influence_loss(
    prefix: torch.Tensor, old_classifier: torch.Tensor, labels: torch.Tensor, scale: float
) -> torch.Tensor:
    """BCT's influence loss: the new features' compatible prefix (B, d_old) must be classified correctly
    by the *frozen* old classifier (C, d_old) (rows for classes the old model never saw are
    pseudo-classifier weights, the class mean of old features)."""
    return F.cross_entropy(cosine_logits(prefix, old_classifier.detach(), scale), labels)


def alignment_loss(prefix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - mean cos(prefix_i, target_i)``: pull each (B, d_old) prefix to its (B, d_old) old-space target
    (BT²: the old model's feature of the same item; OCA: the old prototype of the item's class)."""
    return 1.0 - (F.normalize(prefix, dim=1) * F.normalize(target.detach(), dim=1)).sum(dim=1).mean()


def relational_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of the in-batch neighbour distributions (cosine / temperature, self excluded).

    Dimension-free: the (B, d_new+d_extra) student keeps the (B, d_t) independently trained teacher's
    neighbourhood structure, which is the information BT²'s extra dimensions exist to carry.
    """
    s, t = F.normalize(student, dim=1), F.normalize(teacher.detach(), dim=1)
    eye = torch.eye(len(s), dtype=torch.bool, device=s.device)
    s_logits = (s @ s.T / temperature).masked_fill(eye, -1e4)  # (B, B)
    t_logits = (t @ t.T / temperature).masked_fill(eye, -1e4)  # (B, B)
    return F.kl_div(F.log_softmax(s_logits, dim=1), F.log_softmax(t_logits, dim=1), log_target=True,
                    reduction="batchmean")  # fmt: skip


def cross_model_retrieval_loss(
    prefix: torch.Tensor, index: torch.Tensor, labels: torch.Tensor,
    old_features: torch.Tensor, old_labels: torch.Tensor, temperature: float,
) -> torch.Tensor:  # fmt: skip
    """Influence through the old model's *k-NN* classifier: each (B, d_old) prefix of training item
    ``index`` retrieves among the (N, d_old) old features of all training items (itself excluded, as a
    leave-self-out query would) and must put its probability mass on items of its own label.

    The cross-test (new query against the old gallery) trained directly: prototypes (BCT's pseudo
    classifier) only teach the class, this also keeps the old space's within-class neighbours.
    Anchors with no other item of their label are skipped.
    """
    logits = F.normalize(prefix, dim=1) @ F.normalize(old_features.detach(), dim=1).T / temperature  # (B, N)
    rows = torch.arange(len(index), device=prefix.device)
    logits[rows, index] = -1e4
    positive = labels[:, None] == old_labels[None, :]  # (B, N)
    positive[rows, index] = False
    log_prob = logits.log_softmax(dim=1)
    has_positive = positive.any(dim=1)
    if not has_positive.any():
        return prefix.sum() * 0.0
    return -torch.logsumexp(log_prob.masked_fill(~positive, -1e4), dim=1)[has_positive].mean()
