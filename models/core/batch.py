"""What flows between an encoder's stages: a batch of named arrays. Its own module so that
``models.core.batching`` (used by ``encode``) and ``models.core.encoder`` import it without a cycle."""

from __future__ import annotations

import numpy as np

Batch = dict[str, np.ndarray]


def network_inputs(batch: Batch) -> Batch:
    """The arrays fed to the network: keys starting with ``_`` are bookkeeping (e.g. which input each
    detected face came from)."""
    return {k: v for k, v in batch.items() if not k.startswith("_")}
