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
