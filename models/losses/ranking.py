"""Bidirectional max-margin ranking loss of the two-branch image–text model.

Wang, Li, Huang & Lazebnik, "Learning Two-Branch Neural Networks for Image-Text Matching Tasks"
(TPAMI 2018), eq. 2: for a matching pair (x_i, y_i) and non-matching items,

    λ_i2t · Σ_j max(0, m + d(x_i, y_i) − d(x_i, y_j))   image anchor, negative texts (annotation)
  + λ_t2i · Σ_k max(0, m + d(x_i, y_i) − d(x_k, y_i))   text anchor, negative images (image search)

with the sums over the top-K most violating negatives in the batch. We use cosine similarity
s = 1 − d on L2-normalised embeddings, so a violation is ``max(0, m − s_ii + s_ij)``.

``sampling`` specialises the model: ``search`` mines the hardest *images* for each text (the
direction a text→image search ranks) and takes random negative texts for each image; ``annotation``
does the reverse; ``balanced`` mines both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Sampling = Literal["balanced", "search", "annotation"]
SAMPLINGS = ("balanced", "search", "annotation")


@dataclass(frozen=True)
class RankingLossConfig:
    margin: float = 0.2
    top_k: int = 10  # violating negatives kept per anchor
    weight_i2t: float = 1.0  # λ for image anchors ranking texts (annotation)
    weight_t2i: float = 1.0  # λ for text anchors ranking images (search)
    sampling: Sampling = "balanced"

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got '{self.sampling}'")
        if self.margin < 0 or self.top_k < 1 or self.weight_i2t < 0 or self.weight_t2i < 0:
            raise ValueError("margin and weights must be >= 0 and top_k >= 1")


def _negatives(violations: torch.Tensor, positive: torch.Tensor, k: int, hardest: bool) -> torch.Tensor:
    """Mean over anchors (rows) of the mean of ``k`` negatives per row: the most violating ones,
    or ``k`` taken at random among the row's negatives."""
    k = min(k, violations.shape[1] - 1)
    if k < 1:
        return violations.sum() * 0.0  # a batch of one pair has no negatives
    if hardest:
        chosen = violations.masked_fill(positive, -1.0).topk(k, dim=1).values  # (B, k)
    else:
        noise = torch.rand(violations.shape, device=violations.device).masked_fill(positive, -1.0)
        chosen = violations.gather(1, noise.topk(k, dim=1).indices)  # (B, k)
    return chosen.clamp(min=0.0).mean()


def ranking_loss(
    image: torch.Tensor, text: torch.Tensor, cfg: RankingLossConfig, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """``image``, ``text``: (B, d) L2-normalised, row i of each a matching pair. ``labels`` (B,) marks
    rows of the same item (several captions of one image): those are never negatives of each other.
    Returns the loss and its two directions (for logging)."""
    batch = image.shape[0]
    sim = image @ text.T  # (B, B): s[i, j] = image i · text j
    pos = sim.diagonal()  # (B,)
    if labels is None:
        positive = torch.eye(batch, dtype=torch.bool, device=sim.device)
    else:
        positive = labels[:, None] == labels[None, :]  # (B, B)
    i2t = (cfg.margin - pos[:, None] + sim).clamp(min=0.0)  # row i: image anchor i against texts j
    t2i = (cfg.margin - pos[:, None] + sim.T).clamp(min=0.0)  # row j: text anchor j against images i
    loss_i2t = _negatives(i2t, positive, cfg.top_k, hardest=cfg.sampling != "search")
    loss_t2i = _negatives(t2i, positive.T, cfg.top_k, hardest=cfg.sampling != "annotation")
    loss = cfg.weight_i2t * loss_i2t + cfg.weight_t2i * loss_t2i
    return loss, {"i2t": float(loss_i2t.detach()), "t2i": float(loss_t2i.detach())}
