"""A small CNN for 28×28 grey images (Fashion-MNIST), 128-d by default: the encoder of the
backward-compatible upgrade experiments (``ers train fmnist``), served like any other family.

Inputs: encoded images (PNG/JPEG bytes), PIL images, or ``uint8`` arrays (H×W grey or H×W×3 RGB);
anything not 28×28 is converted to grey and resized. A spec with ``config["basis"] = true`` is a
BT²/OCA model: the CNN followed by its baked orthogonal basis (``models.compat.heads.with_basis``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from models.compat.heads import with_basis
from models.core.encoder import Batch, Family
from models.core.errors import InvalidEncoderInput
from models.core.images import decode_image
from models.core.registry import register_family

SIZE = 28
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics (0..1 scale)


@dataclass(frozen=True)
class FmnistCNNConfig:
    channels: tuple[int, ...] = (32, 64, 128)
    dim: int = 128
    basis: bool = False  # a baked orthogonal basis after the projection (BT²/OCA models)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> FmnistCNNConfig:
        return cls(channels=tuple(config.get("channels", cls.channels)), dim=int(config["dim"]),
                   basis=bool(config.get("basis", False)))  # fmt: skip


class FmnistCNN(nn.Module):
    """stages of conv3×3-BN-ReLU-maxpool (28 -> 14 -> 7 -> 3) -> flatten -> linear ``dim``."""

    def __init__(self, cfg: FmnistCNNConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, side = 1, SIZE
        for c_out in cfg.channels:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2)]  # fmt: skip
            c_in, side = c_out, side // 2
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in * side * side, cfg.dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.features(pixels)  # (B, 1, 28, 28) -> (B, C, side, side)
        return self.proj(x.flatten(1))  # (B, C·side²) -> (B, dim)


def plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An fmnist-cnn artifact's weights as the state of a plain ``FmnistCNN`` with the same output:
    a baked basis ``W`` is folded into the projection, since ``W (P x + b) = (W P) x + W b``."""
    if "basis.weight" not in state:
        return dict(state)
    basis = state["basis.weight"]  # (dim, dim)
    plain = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    plain["proj.weight"] = basis @ plain["proj.weight"]  # (dim, C·side²)
    plain["proj.bias"] = basis @ plain["proj.bias"]  # (dim,)
    return plain


def warm_start(model: FmnistCNN, old_state: dict[str, torch.Tensor]) -> None:
    """Start ``model`` from an old CNN of the same channels (``plain_state`` of its artifact): every
    conv/BN weight, and the old projection as the first ``d_old`` output rows, so the new model's
    compatible prefix begins exactly at the old embedding (BT² starts the new model from the old one);
    the extra rows keep their random initialisation."""
    own = model.state_dict()
    if set(old_state) != set(own):
        raise ValueError("the old model's weights do not match this CNN's layers")
    for key, value in old_state.items():
        target = own[key]
        fits = value.shape == target.shape or (
            key.startswith("proj.") and value.shape[1:] == target.shape[1:] and value.shape[0] <= target.shape[0]
        )
        if not fits:
            raise ValueError(f"{key}: old shape {tuple(value.shape)} does not fit {tuple(target.shape)}")
        own[key] = torch.cat([value, target[value.shape[0] :]]) if key.startswith("proj.") else value
    model.load_state_dict(own)


def build(cfg: FmnistCNNConfig) -> nn.Module:
    backbone = FmnistCNN(cfg)
    return with_basis(backbone, cfg.dim) if cfg.basis else backbone


def to_gray28(item: Any) -> np.ndarray:
    """(28, 28) uint8 grey from bytes / PIL / array; 28×28 grey arrays pass through untouched."""
    if isinstance(item, np.ndarray) and item.shape == (SIZE, SIZE):
        if item.dtype != np.uint8:
            raise InvalidEncoderInput("image arrays must be uint8")
        return item
    rgb = decode_image(item)  # (H, W, 3) uint8
    gray = Image.fromarray(rgb).convert("L")
    if gray.size != (SIZE, SIZE):
        gray = gray.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(gray)


@register_family("fmnist-cnn")
class FmnistCNNFamily(Family):
    input_names = ("pixels",)

    def preprocess(self, inputs: Sequence[Any]) -> Batch:
        if isinstance(inputs, np.ndarray) and inputs.ndim == 3 and inputs.shape[1:] == (SIZE, SIZE):
            images = inputs
        else:
            images = np.stack([to_gray28(item) for item in inputs]) if len(inputs) else np.zeros((0, SIZE, SIZE))
        return {"pixels": self.pixels_of(np.asarray(images, dtype=np.uint8))}

    @staticmethod
    def pixels_of(images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32, standardised (training uses the same function)."""
        return ((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]

    def build_module(self) -> nn.Module:
        return build(FmnistCNNConfig.from_dict(self.spec.config)).eval()

    def example_inputs(self) -> Sequence[Any]:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8) for _ in range(3)]
