"""Hashed n-gram MLP text encoder: word uni/bi-grams hashed into a fixed vocabulary, then an MLP.

The text tower of the two-branch image–text model in its simplest form; tiny, fast on a CPU,
and with no tokenizer file to ship.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.core.encoder import Batch, Family
from models.core.errors import InvalidEncoderInput
from models.core.registry import register_family


@dataclass(frozen=True)
class HashedNgramConfig:
    buckets: int = 4096
    hidden: int = 256
    dim: int = 64
    max_chars: int = 2000


def ngram_features(texts: Sequence[str], buckets: int, max_chars: int) -> np.ndarray:
    """(n, buckets) log(1 + count) of hashed word unigrams and bigrams."""
    out = np.zeros((len(texts), buckets), dtype=np.float32)
    for row, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InvalidEncoderInput(f"input {row}: text must be a non-empty string")
        if len(text) > max_chars:
            raise InvalidEncoderInput(f"input {row}: text has {len(text)} characters; the limit is {max_chars}")
        words = text.lower().split()
        for gram in words + [f"{a} {b}" for a, b in itertools.pairwise(words)]:
            out[row, zlib.crc32(gram.encode()) % buckets] += 1.0
    return np.log1p(out)


def build_mlp(cfg: HashedNgramConfig) -> Any:
    import torch.nn as nn

    class HashedNgramMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = nn.Linear(cfg.buckets, cfg.hidden)
            self.out = nn.Linear(cfg.hidden, cfg.dim)

        def forward(self, features: Any) -> Any:
            # features: (B, buckets) -> (B, hidden) -> (B, dim)
            return self.out(nn.functional.relu(self.hidden(features)))

    return HashedNgramMLP()


@register_family("hashed-ngram")
class HashedNgramFamily(Family):
    input_names = ("features",)

    @property
    def cfg(self) -> HashedNgramConfig:
        return HashedNgramConfig(
            **{k: v for k, v in self.spec.config.items() if k in HashedNgramConfig.__dataclass_fields__}
        )

    def preprocess(self, inputs: Sequence[Any]) -> Batch:
        cfg = self.cfg
        return {"features": ngram_features(inputs, cfg.buckets, cfg.max_chars)}

    def build_module(self) -> Any:
        return build_mlp(self.cfg)

    def example_inputs(self) -> Sequence[Any]:
        return ["a photo of a cat", "two dogs playing in the snow"]
