"""Initialising the effnet-mlp image head at the frozen features' own retrieval geometry.

A randomly initialised head throws away what the baseline relies on: frozen EfficientNet-Lite0
features already compare drawings across styles (Google vs Twitter) fairly well, and centred,
partly whitened features compare them better still (the dominant directions of the features are
shared by all drawings and drown the concept). ``whiten_linear`` sets a linear head to

    x -> (x - mean) V_d diag(s_d ** -power)

with V_d, s_d the top ``d`` principal directions and singular values of the training features, so
training starts at that geometry; the text tower then learns to point each caption at its drawing,
and a small learning rate on the head keeps it from fitting the one training style.
"""

from __future__ import annotations

import torch
from torch import nn

from models.training.recipe import TrainingError


@torch.no_grad()
def whiten_linear(linear: nn.Linear, features: torch.Tensor, power: float) -> None:
    """Set ``linear`` (in: feature size, out: d) to centring + PCA projection + ``power``-whitening
    fitted on ``features`` (n, feature size). Rows beyond the features' rank start at zero. The map
    is scaled so that the training features come out with unit mean norm, as a freshly initialised
    layer roughly does, so the learning rate means the same with or without it."""
    if not 0.0 <= power <= 1.0:
        raise TrainingError(f"whiten_power must be between 0 and 1, got {power}")
    x = features.double()
    if x.shape[1] != linear.in_features:
        raise TrainingError(f"features have {x.shape[1]} columns; the head takes {linear.in_features}")
    mean = x.mean(dim=0)  # (F,)
    _, s, vt = torch.linalg.svd(x - mean, full_matrices=False)  # s: (r,), vt: (r, F)
    keep = int(min(linear.out_features, int((s > s[0] * 1e-6).sum())))
    projection = vt[:keep].T / s[:keep] ** power  # (F, keep)
    projection /= ((x - mean) @ projection).norm(dim=1).mean()
    weight = torch.zeros(linear.out_features, linear.in_features, dtype=torch.float64)
    weight[:keep] = projection.T
    linear.weight.copy_(weight.to(linear.weight.dtype))
    linear.bias.copy_((-mean @ weight.T).to(linear.bias.dtype))
