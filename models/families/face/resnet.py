"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch, loaded
from face-api's TF.js port (npm ``@vladmandic/face-api``, ``model/face_recognition_model*``).

Architecture as in face-api's ``src/faceRecognitionNet`` (and dlib's ``dnn_face_recognition_ex``):
150x150 RGB, minus the mean [122.782, 117.001, 104.298], / 255 -> conv 7x7/2 (valid) + affine
"scale" + ReLU -> max-pool 3/2 (valid) -> 14 residual blocks (32, 64, 128, 256 channels; every
conv is followed by a per-channel affine, BatchNorm folded by dlib) -> global mean -> 256x128
matrix, no bias. A down-sampling block's first conv is 3x3/2 "valid"; its shortcut is a 2x2/2
average pool with the new channels zero-padded, and where the conv output is one pixel smaller
than the pooled shortcut it is zero-padded at the bottom/right (dlib's ``add_prev`` adds tensors
of different sizes that way). Descriptors are compared by Euclidean distance: dlib's
"same person" threshold is 0.6.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.core.registry import register_family
from models.families.face.common import FaceFamily

MEAN_RGB = (122.782, 117.001, 104.298)
# (face-api name, channels, down-samples); the stem "conv32_down" comes first.
BLOCKS: tuple[tuple[str, int, bool], ...] = (
    ("conv32_1", 32, False), ("conv32_2", 32, False), ("conv32_3", 32, False),
    ("conv64_down", 64, True), ("conv64_1", 64, False), ("conv64_2", 64, False), ("conv64_3", 64, False),
    ("conv128_down", 128, True), ("conv128_1", 128, False), ("conv128_2", 128, False),
    ("conv256_down", 256, True), ("conv256_1", 256, False), ("conv256_2", 256, False),
    ("conv256_down_out", 256, True),
)  # fmt: skip


@dataclass
class FaceResNetConfig:
    image_size: int = 150
    stem_width: int = 32
    blocks: tuple[tuple[str, int, bool], ...] = field(default=BLOCKS)
    dim: int = 128


class Affine(nn.Module):
    """dlib's ``affine`` layer (a folded BatchNorm): per-channel ``x * weight + bias``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]  # (B, C, h, w)


class ConvAffine(nn.Module):
    """conv (with bias; "same" padding at stride 1, "valid" at stride 2) -> affine."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0)
        self.scale = Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.conv(x))  # (B, cout, h, w)


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool, pad: int) -> None:
        super().__init__()
        self.down, self.extra_channels, self.pad = down, cout - cin, pad
        self.conv1 = ConvAffine(cin, cout, 3, 2 if down else 1)
        self.conv2 = ConvAffine(cout, cout, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))  # (B, cout, h', w')
        if not self.down:
            return F.relu(out + x)
        shortcut = F.avg_pool2d(x, 2, 2)  # (B, cin, h//2, w//2)
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))  # (B, cout, h//2, w//2)
        if self.pad:
            out = F.pad(out, (0, self.pad, 0, self.pad))  # conv output one pixel short
        return F.relu(out + shortcut)


class FaceResNet(nn.Module):
    def __init__(self, config: FaceResNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or FaceResNetConfig()
        self.stem = ConvAffine(3, cfg.stem_width, 7, 2)
        side = ((cfg.image_size - 7) // 2 + 1 - 3) // 2 + 1  # after stem conv and max-pool
        blocks, width = {}, cfg.stem_width
        for name, cout, down in cfg.blocks:
            pad = 0
            if down:
                conv_side, side = (side - 3) // 2 + 1, side // 2
                pad = side - conv_side
            blocks[name] = Residual(width, cout, down, pad)
            width = cout
        self.blocks = nn.ModuleDict(blocks)
        self.fc = nn.Linear(width, cfg.dim, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: (B, 3, 150, 150), (RGB - mean) / 255
        x = F.relu(self.stem(pixels))  # (B, 32, 72, 72)
        x = F.max_pool2d(x, 3, 2)  # (B, 32, 35, 35)
        for block in self.blocks.values():
            x = block(x)  # ... -> (B, 64, 17, 17) -> (B, 128, 8, 8) -> (B, 256, 4, 4) -> (B, 256, 2, 2)
        return self.fc(x.mean(dim=(2, 3)))  # (B, 128)


# ---- face-api TF.js weights ------------------------------------------------------------------------

_QUANTISED = {"uint8": np.uint8, "uint16": np.uint16}


def read_tfjs_weights(manifest: Path, weights: Path) -> dict[str, np.ndarray]:
    """Decode a TF.js layers-format weight manifest + binary shard(s); quantised entries are
    de-quantised as ``q * scale + min``."""
    groups = json.loads(manifest.read_text())
    data = b"".join((weights.parent / p).read_bytes() for g in groups for p in g["paths"])
    out, offset = {}, 0
    for group in groups:
        for entry in group["weights"]:
            count = int(np.prod(entry["shape"], dtype=np.int64))
            quant = entry.get("quantization")
            if quant is not None:
                dtype = _QUANTISED.get(quant["dtype"])
                if dtype is None:
                    raise ValueError(f"{entry['name']}: unsupported quantisation {quant['dtype']}")
                raw = np.frombuffer(data, dtype=dtype, count=count, offset=offset).astype(np.float32)
                values = raw * np.float32(quant["scale"]) + np.float32(quant["min"])
                offset += count * np.dtype(dtype).itemsize
            elif entry["dtype"] == "float32":
                values = np.frombuffer(data, dtype="<f4", count=count, offset=offset)
                offset += count * 4
            else:
                raise ValueError(f"{entry['name']}: unsupported dtype {entry['dtype']}")
            out[entry["name"]] = values.reshape(entry["shape"]).astype(np.float32)
    if offset != len(data):
        raise ValueError(f"TF.js weights: {len(data) - offset} bytes left over after the manifest's entries")
    return out


def state_dict_from_tfjs(tfjs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """face-api names (``conv32_1/conv1/conv/filters`` HWIO, ...) -> our state dict (OIHW, ...)."""
    rename = {"conv/filters": "conv.weight", "conv/bias": "conv.bias", "scale/weights": "scale.weight",
              "scale/biases": "scale.bias"}  # fmt: skip
    state: dict[str, torch.Tensor] = {}
    for name, value in tfjs.items():
        if name == "fc":
            state["fc.weight"] = torch.from_numpy(value.T.copy())  # (256, 128) -> (128, 256)
            continue
        prefix, _, leaf = name.partition("/")
        for old, new in rename.items():
            if name.endswith(old):
                leaf = leaf[: -len(old)] + new
        key = f"stem.{leaf}" if prefix == "conv32_down" else f"blocks.{prefix}.{leaf.replace('/', '.')}"
        tensor = torch.from_numpy(value.transpose(3, 2, 0, 1).copy() if value.ndim == 4 else value.copy())
        state[key] = tensor
    return state


def load_tfjs(manifest: Path, weights: Path) -> FaceResNet:
    module = FaceResNet()
    module.load_state_dict(state_dict_from_tfjs(read_tfjs_weights(manifest, weights)), strict=True)
    return module.eval()


@register_family("face-resnet")
class FaceResNetFamily(FaceFamily):
    image_size = 150
    template = "dlib"

    def normalise(self, crops: np.ndarray) -> np.ndarray:
        x = (crops.astype(np.float32) - np.asarray(MEAN_RGB, dtype=np.float32)) / 255.0  # (F, S, S, 3)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (F, 3, S, S)

    def build_module(self) -> FaceResNet:
        return FaceResNet(FaceResNetConfig(dim=self.spec.dim))
