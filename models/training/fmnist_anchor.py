"""Label-free anchoring of a compatible prefix on perturbed inputs (the ``fmnist`` recipe's ``anchor``).

The compat losses only see the new training set, so on inputs far from it (classes neither model
trained on) a fine-tuned prefix can drift away from where the old model puts them. Anchoring widens
what the alignment sees without new data or labels: perturbed copies of the training images
(mixup and cut-and-paste of two images, erased patches, rotations and flips) are embedded once by
the old encoder, and every step pulls the new prefix of a batch of them to those old features
(``1 - cos``), as BT²'s alignment does for the training images themselves.
"""

from __future__ import annotations

import numpy as np


def perturbed_views(images: np.ndarray, views: int, seed: int) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N · views, 28, 28) uint8 perturbed copies, one random perturbation each."""
    if views < 1:
        raise ValueError("views must be >= 1")
    rng = np.random.default_rng(seed)
    n, h, w = images.shape
    src = np.tile(np.arange(n), views)  # (M,)
    other = rng.integers(0, n, len(src))  # (M,) partner image for mixing
    kind = rng.integers(0, 4, len(src))  # 0 mixup, 1 cut-and-paste, 2 erase, 3 rotate/flip
    out = images[src].astype(np.float32)  # (M, 28, 28)
    lam = rng.uniform(0.3, 0.7, len(src)).astype(np.float32)[:, None, None]
    mix = kind == 0
    out[mix] = lam[mix] * out[mix] + (1 - lam[mix]) * images[other[mix]]
    for i in np.flatnonzero(kind >= 1):
        if kind[i] == 3:
            out[i] = np.rot90(out[i], int(rng.integers(1, 4))) if rng.random() < 0.75 else out[i, ::-1]
            continue
        ph, pw = (int(v) for v in rng.integers(7, 17, 2))
        y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        out[i, y0 : y0 + ph, x0 : x0 + pw] = images[other[i], y0 : y0 + ph, x0 : x0 + pw] if kind[i] == 1 else 0
    return np.clip(out, 0, 255).astype(np.uint8)
