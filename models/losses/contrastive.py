"""Contrastive losses over a batch of aligned pairs: in-batch softmax (two-tower retrieval)."""

from __future__ import annotations

from typing import Any


def in_batch_softmax(
    query: Any, item: Any, temperature: float, item_ids: Any | None = None, item_log_q: Any | None = None
) -> Any:
    """Softmax over the batch's items for each query; row ``i`` of ``item`` is query ``i``'s positive.

    query, item: (B, d) unit vectors. ``item_ids`` (B,): other rows holding the same item as the
    positive are masked out (they are not negatives). ``item_log_q`` (B,): log of each item's
    sampling probability, subtracted from its logits (Yi et al., 2019) so popular items, which
    appear as negatives more often, are not pushed down just for being popular.
    """
    import torch
    import torch.nn.functional as F

    logits = query @ item.T / temperature  # (B, B): query i against every item of the batch
    if item_log_q is not None:
        logits = logits - item_log_q[None, :]
    if item_ids is not None:
        same = item_ids[:, None] == item_ids[None, :]  # (B, B)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, torch.finfo(logits.dtype).min)
    targets = torch.arange(len(query), device=query.device)
    return F.cross_entropy(logits, targets)


def convirt_info_nce(image: Any, text: Any, temperature: float = 0.1, weight: float = 0.75) -> Any:
    """``image``, ``text``: ``(B, D)`` projections of B pairs (row i of each is one pair) -> scalar loss.

    ConVIRT's bidirectional InfoNCE (Zhang et al. 2020, eq. 2-3): with cosine similarities over a
    temperature tau, image i must pick its own text among the batch's texts (image->text) and text i its
    own image (text->image), mixed as ``weight * L(image->text) + (1 - weight) * L(text->image)``
    (the paper's lambda = 0.75, tau = 0.1).
    """
    import torch
    import torch.nn.functional as F

    if image.shape != text.shape or image.ndim != 2:
        raise ValueError(f"image and text must both be (B, D), got {tuple(image.shape)} and {tuple(text.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight (lambda) must lie in [0, 1], got {weight}")
    v = F.normalize(image, dim=1)  # (B, D)
    u = F.normalize(text, dim=1)  # (B, D)
    logits = v @ u.T / temperature  # (B, B): row i = image i against every text
    targets = torch.arange(len(logits), device=logits.device)  # (B,): the diagonal holds the true pairs
    image_to_text = F.cross_entropy(logits, targets)
    text_to_image = F.cross_entropy(logits.T, targets)
    return weight * image_to_text + (1.0 - weight) * text_to_image
