"""Two-branch image–text model: an image tower and a text tower meeting in one embedding space.

Wang, Li, Huang & Lazebnik, "Learning Two-Branch Neural Networks for Image-Text Matching Tasks"
(TPAMI 2018). Each branch ends in a linear layer and L2 normalisation, so image·text is a cosine;
the bidirectional ranking loss is ``models.losses.ranking``, the recipe ``models.training.two_branch``.

Image towers (``image_tower``):
- ``cnn``: a small CNN trained from scratch on ``image_size`` pixels;
- ``effnet-mlp``: frozen EfficientNet-Lite0 features (``effnet-lite0@1``) + a trainable MLP. The
  published artifact holds backbone and MLP, so the service feeds it raw images.
Text towers (``text_tower``), the three kinds of the paper's comparison:
- ``bow``: bag of words over a vocabulary learnt from the training captions, then an MLP;
- ``ngram``: hashed word uni-, bi-, tri-grams and skip-bigrams (no vocabulary to ship), then an MLP;
- ``gru``: word embeddings -> GRU -> mean over the words -> linear.

Each tower is its own artifact: family ``two-branch-image`` or ``two-branch-text``; ``spec.config``
holds ``model`` (the ``TwoBranchConfig``), ``vocab`` (bow, gru) and ``towers`` (both keys).
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.core.encoder import Batch, Family
from models.core.errors import InvalidEncoderInput
from models.core.images import DEFAULT_MAX_PIXELS, decode_image
from models.core.registry import register_family
from models.families.efficientnet import (
    EfficientNetLite,
    EfficientNetLiteConfig,
    EfficientNetLiteFamily,
    center_crop_resize,
)

ImageTower = Literal["cnn", "effnet-mlp"]
TextTower = Literal["bow", "ngram", "gru"]
IMAGE_TOWERS, TEXT_TOWERS = ("cnn", "effnet-mlp"), ("bow", "ngram", "gru")
PAD, UNK = 0, 1  # token ids of the GRU tower; words start at 2
WORD_RE = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class TwoBranchConfig:
    dim: int = 128  # the joint embedding
    image_tower: ImageTower = "cnn"
    image_size: int = 32  # cnn: input side in pixels
    cnn_channels: tuple[int, ...] = (32, 64, 128, 256)  # cnn: one conv block (and 2x pooling) each
    feature_dim: int = 1280  # effnet-mlp: frozen feature size
    image_hidden: int = 512  # effnet-mlp: MLP hidden width; 0: one linear map
    text_tower: TextTower = "ngram"
    text_hidden: int = 512  # bow / ngram: MLP hidden width; gru: hidden state size
    buckets: int = 8192  # ngram: hashed feature size
    vocab_size: int = 4000  # bow / gru: most frequent training words kept
    word_dim: int = 128  # gru: word embedding size
    max_tokens: int = 16  # gru: words per text (longer texts are cut; fixed so the ONNX graph is static)
    max_chars: int = 2000  # longer texts are refused
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.image_tower not in IMAGE_TOWERS:
            raise ValueError(f"image_tower must be one of {IMAGE_TOWERS}, got '{self.image_tower}'")
        if self.text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower must be one of {TEXT_TOWERS}, got '{self.text_tower}'")
        object.__setattr__(self, "cnn_channels", tuple(self.cnn_channels))  # YAML/JSON give lists

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TwoBranchConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cnn_channels"] = list(self.cnn_channels)
        return out


# ---------------------------------------------------------------- text features (CPU, numpy)


def words(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def check_texts(texts: Sequence[Any], max_chars: int) -> None:
    for row, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InvalidEncoderInput(f"input {row}: text must be a non-empty string")
        if len(text) > max_chars:
            raise InvalidEncoderInput(f"input {row}: text has {len(text)} characters; the limit is {max_chars}")


def build_vocab(texts: Iterable[str], size: int) -> list[str]:
    """The ``size`` most frequent words (ties broken alphabetically, so the vocabulary is deterministic)."""
    counts = Counter(w for t in texts for w in words(t))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]


def bow_features(texts: Sequence[str], vocab: dict[str, int]) -> np.ndarray:
    """(n, V) log(1 + count) of each vocabulary word; unknown words are dropped."""
    out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for row, text in enumerate(texts):
        for w in words(text):
            if w in vocab:
                out[row, vocab[w]] += 1.0
    return np.log1p(out)


def ngrams(tokens: list[str]) -> list[str]:
    """Unigrams, bigrams, trigrams and skip-bigrams (a word and the one after next), kept apart by prefix."""
    grams = [f"1 {w}" for w in tokens]
    grams += [f"2 {a} {b}" for a, b in itertools.pairwise(tokens)]
    grams += [f"3 {a} {b} {c}" for a, b, c in zip(tokens, tokens[1:], tokens[2:], strict=False)]
    grams += [f"s {a} {c}" for a, c in zip(tokens, tokens[2:], strict=False)]
    return grams


def ngram_features(texts: Sequence[str], buckets: int) -> np.ndarray:
    """(n, buckets) log(1 + count) of the hashed n-grams (crc32: stable across processes, unlike hash())."""
    out = np.zeros((len(texts), buckets), dtype=np.float32)
    for row, text in enumerate(texts):
        for gram in ngrams(words(text)):
            out[row, zlib.crc32(gram.encode()) % buckets] += 1.0
    return np.log1p(out)


def token_ids(texts: Sequence[str], vocab: dict[str, int], max_tokens: int) -> np.ndarray:
    """(n, max_tokens) int64 word ids (vocabulary index + 2), UNK for unknown words, PAD after the end."""
    out = np.full((len(texts), max_tokens), PAD, dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [vocab[w] + 2 if w in vocab else UNK for w in words(text)[:max_tokens]]
        out[row, : len(ids)] = ids or [UNK]  # a text of symbols only still has one (unknown) word
    return out


# ---------------------------------------------------------------- towers (PyTorch)


def mlp(cin: int, hidden: int, cout: int, dropout: float) -> nn.Sequential:
    if hidden == 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, cout))
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, cout))


class CNNImageTower(nn.Module):
    def __init__(self, cfg: TwoBranchConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in cfg.cnn_channels:
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(cin, cfg.dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.features(pixels)  # (B, 3, S, S) -> (B, C, S/2^n, S/2^n)
        x = x.mean(dim=(2, 3))  # (B, C)
        return F.normalize(self.proj(self.dropout(x)), dim=-1)  # (B, dim)


class FeatureMLPImageTower(nn.Module):
    """Frozen EfficientNet-Lite0 + MLP. Training feeds cached features to ``head`` directly."""

    def __init__(self, cfg: TwoBranchConfig) -> None:
        super().__init__()
        self.backbone = EfficientNetLite(EfficientNetLiteConfig()).eval()
        self.backbone.requires_grad_(False)
        self.mlp = mlp(cfg.feature_dim, cfg.image_hidden, cfg.dim, cfg.dropout)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        # features: (B, 1280) L2-normalised -> (B, dim) L2-normalised
        return F.normalize(self.mlp(features), dim=-1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.backbone(pixels), dim=-1)  # (B, 3, 224, 224) -> (B, 1280)
        return self.head(features)  # (B, dim)

    def train(self, mode: bool = True) -> FeatureMLPImageTower:
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm keeps its ImageNet statistics
        return self


class FeatureMLPTextTower(nn.Module):
    """Bag-of-words or hashed n-gram features -> MLP."""

    def __init__(self, cfg: TwoBranchConfig, features: int) -> None:
        super().__init__()
        self.mlp = mlp(features, cfg.text_hidden, cfg.dim, cfg.dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(features), dim=-1)  # (B, V) -> (B, dim)


class GRUTextTower(nn.Module):
    def __init__(self, cfg: TwoBranchConfig, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size + 2, cfg.word_dim, padding_idx=PAD)
        self.gru = nn.GRU(cfg.word_dim, cfg.text_hidden, batch_first=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(cfg.text_hidden, cfg.dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != PAD).unsqueeze(-1).float()  # (B, L, 1)
        # Forward-only GRU: padding comes after the words, so it cannot change their states.
        states, _ = self.gru(self.embed(tokens))  # (B, L) -> (B, L, word_dim) -> (B, L, H)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, H)
        return F.normalize(self.proj(self.dropout(pooled)), dim=-1)  # (B, dim)


# ---------------------------------------------------------------- families (artifacts)


def example_images() -> list[np.ndarray]:
    """Synthetic RGB images of several sizes and aspect ratios (gradients + seeded noise) to trace the
    ONNX export, check its parity and warm up a loaded encoder."""
    rng = np.random.default_rng(0)
    images = []
    for height, width in ((64, 64), (120, 80), (37, 150), (224, 224)):
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([xx / width, yy / height, np.sin(xx / 5.0) * np.cos(yy / 7.0) * 0.5 + 0.5], axis=2)
        images.append(np.clip(base * 200.0 + rng.normal(0.0, 25.0, size=(height, width, 3)), 0, 255).astype(np.uint8))
    return images


class _TwoBranchFamily(Family):
    @property
    def cfg(self) -> TwoBranchConfig:
        return TwoBranchConfig.from_dict(self.spec.config.get("model", {}))


@register_family("two-branch-image")
class TwoBranchImageFamily(_TwoBranchFamily):
    input_names = ("pixels",)

    def preprocess(self, inputs: Sequence[Any]) -> Batch:
        cfg = self.cfg
        max_pixels = int(self.spec.config.get("max_pixels", DEFAULT_MAX_PIXELS))
        if cfg.image_tower == "effnet-mlp":  # the spec carries effnet's preprocessing settings too
            return EfficientNetLiteFamily(self.spec).preprocess(inputs)
        size = cfg.image_size
        pixels = np.empty((len(inputs), 3, size, size), dtype=np.float32)
        for i, item in enumerate(inputs):
            rgb = center_crop_resize(decode_image(item, max_pixels=max_pixels), size, size)  # (S, S, 3) uint8
            pixels[i] = (rgb.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)  # (3, S, S) in [-1, 1]
        return {"pixels": pixels}

    def build_module(self) -> nn.Module:
        cfg = self.cfg
        return CNNImageTower(cfg) if cfg.image_tower == "cnn" else FeatureMLPImageTower(cfg)

    def example_inputs(self) -> Sequence[Any]:
        return example_images()


@register_family("two-branch-text")
class TwoBranchTextFamily(_TwoBranchFamily):
    @property
    def input_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("tokens",) if self.cfg.text_tower == "gru" else ("features",)

    @property
    def vocab(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.spec.config.get("vocab", []))}

    def preprocess(self, inputs: Sequence[Any]) -> Batch:
        cfg = self.cfg
        check_texts(inputs, cfg.max_chars)
        if cfg.text_tower == "ngram":
            return {"features": ngram_features(inputs, cfg.buckets)}
        if cfg.text_tower == "bow":
            return {"features": bow_features(inputs, self.vocab)}
        return {"tokens": token_ids(inputs, self.vocab, cfg.max_tokens)}

    def build_module(self) -> nn.Module:
        cfg = self.cfg
        if cfg.text_tower == "ngram":
            return FeatureMLPTextTower(cfg, cfg.buckets)
        vocab_size = len(self.spec.config.get("vocab", []))
        if cfg.text_tower == "bow":
            return FeatureMLPTextTower(cfg, vocab_size)
        return GRUTextTower(cfg, vocab_size)

    def example_inputs(self) -> Sequence[Any]:
        return ["red heart", "cat face", "a smiling face with sunglasses and a party hat", "?"]
