"""Contrastive losses over a batch of paired embeddings.

``convirt_info_nce``: ConVIRT's bidirectional InfoNCE (Zhang et al. 2020, "Contrastive Learning of
Medical Visual Representations from Paired Images and Text", eq. 2-3): with cosine similarities over
a temperature tau, image i must pick its own text among the batch's texts (image->text) and text i its
own image (text->image); the two are mixed as ``weight * L(image->text) + (1 - weight) * L(text->image)``
(the paper's lambda = 0.75, tau = 0.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def convirt_info_nce(
    image: torch.Tensor, text: torch.Tensor, temperature: float = 0.1, weight: float = 0.75
) -> torch.Tensor:
    """``image``, ``text``: ``(B, D)`` projections of B pairs (row i of each is one pair) -> scalar loss."""
    if image.shape != text.shape or image.ndim != 2:
        raise ValueError(f"image and text must both be (B, D), got {tuple(image.shape)} and {tuple(text.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight (lambda) must lie in [0, 1], got {weight}")
    v = F.normalize(image, dim=1)  # (B, D)
    u = F.normalize(text, dim=1)  # (B, D)
    logits = v @ u.T / temperature  # (B, B): row i = image i against every text
    targets = torch.arange(len(logits), device=logits.device)  # (B,) the diagonal holds the true pairs
    image_to_text = F.cross_entropy(logits, targets)
    text_to_image = F.cross_entropy(logits.T, targets)
    return weight * image_to_text + (1.0 - weight) * text_to_image
