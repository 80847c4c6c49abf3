"""EfficientNet-Lite image encoder in plain PyTorch (family ``efficientnet-lite``).

The architecture of Google's EfficientNet-Lite (tensorflow/tpu ``efficientnet/lite``) as ported to
PyTorch by ``efficientnet-lite-pytorch``: MBConv blocks with ReLU6, no squeeze-excite, stem and head
not scaled, BatchNorm eps 1e-3 and TensorFlow "SAME" padding (asymmetric on stride-2 convolutions),
computed statically for the fixed input size as the reference does. Inference only: no drop-connect.
``forward`` returns the ``(B, 1280)`` global-average-pooled features (what we embed); ``classify``
applies the ImageNet-1k classifier on top, kept so the real weights can be checked on real photos.

Our parameter names are cleaner than the reference checkpoint's (``_blocks.3._depthwise_conv`` ->
``blocks.3.dw_conv``); ``from_reference_state_dict`` renames a reference state dict one to one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from models.core.encoder import Batch, Family
from models.core.images import DEFAULT_MAX_PIXELS, decode_image
from models.core.registry import register_family

Stage = tuple[int, int, int, int, int, int]  # (repeats, kernel, stride, expand_ratio, in_channels, out_channels)
# EfficientNet-Lite0 (width = depth = 1.0): the B0 stages without squeeze-excite.
LITE0_STAGES: tuple[Stage, ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet's ``round_filters``: scale by ``width``, round to a multiple of ``divisor``, never
    more than 10% down."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def scaled_stages(width: float, depth: float) -> tuple[Stage, ...]:
    """Lite0's stages scaled as ``efficientnet-lite-pytorch`` (``fix_head_stem``) scales them: channels by
    ``width``, repeats by ``ceil(depth * r)``, except that the first and last stages keep their repeats
    and the first stage reads the unscaled 32-channel stem."""
    stages = []
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(LITE0_STAGES):
        fixed = i in (0, len(LITE0_STAGES) - 1)
        r = repeats if fixed else math.ceil(depth * repeats)
        c_in = cin if i == 0 else round_channels(cin, width)
        stages.append((r, kernel, stride, expand, c_in, round_channels(cout, width)))
    return tuple(stages)


# Preprocessing (spec.config), as the TF EfficientNet-Lite evaluation: the centre crop of 224/256 of the
# shorter side (TF's CROP_PADDING = 32), resized bicubic to ``image_size``, then (x - mean_rgb) / stddev_rgb
# on the 0-255 scale. Lite models were trained with inception-style 127/128 ("for better post-quantization"),
# not the ImageNet mean/std that efficientnet-lite-pytorch's README copies from EfficientNet-PyTorch; the
# converted checkpoint agrees (e.g. sklearn's flower.jpg: daisy at 36% with 127/128 vs 13% with ImageNet's).
PREPROCESS_DEFAULTS: dict[str, Any] = {
    "image_size": 224,
    "resize_size": 256,
    "mean_rgb": [127.0, 127.0, 127.0],
    "stddev_rgb": [128.0, 128.0, 128.0],
    "max_pixels": DEFAULT_MAX_PIXELS,
}


@dataclass(frozen=True)
class EfficientNetLiteConfig:
    image_size: int = 224
    stem_channels: int = 32
    head_channels: int = 1280
    num_classes: int = 1000
    bn_eps: float = 1e-3
    stages: tuple[Stage, ...] = LITE0_STAGES

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> EfficientNetLiteConfig:
        """From ``spec.config`` (preprocessing keys such as ``mean_rgb`` are ignored); the stages follow
        ``width_coefficient`` and ``depth_coefficient`` (both 1.0, Lite0, when absent)."""
        names = {f.name for f in fields(cls)} - {"stages"}
        width, depth = float(config.get("width_coefficient", 1.0)), float(config.get("depth_coefficient", 1.0))
        stages = LITE0_STAGES if (width, depth) == (1.0, 1.0) else scaled_stages(width, depth)
        return cls(**{k: v for k, v in config.items() if k in names}, stages=stages)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME": output ceil(size / stride); an odd total pad puts the extra pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Bias-free convolution with TF "SAME" padding for a fixed ``input_size`` (square)."""

    def __init__(self, cin: int, cout: int, kernel: int, input_size: int, stride: int = 1, groups: int = 1) -> None:
        before, after = same_padding(input_size, kernel, stride)
        symmetric = before == after
        super().__init__(cin, cout, kernel, stride, padding=before if symmetric else 0, groups=groups, bias=False)
        self.pad = None if symmetric else (before, after, before, after)  # F.pad order: (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (+ identity when shapes match)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, size: int, eps: float) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand_conv: nn.Module | None = None
        if expand != 1:
            self.expand_conv = SameConv2d(cin, hidden, 1, size)
            self.expand_bn = nn.BatchNorm2d(hidden, eps=eps)
        self.dw_conv = SameConv2d(hidden, hidden, kernel, size, stride=stride, groups=hidden)
        self.dw_bn = nn.BatchNorm2d(hidden, eps=eps)
        self.project_conv = SameConv2d(hidden, cout, 1, -(-size // stride))
        self.project_bn = nn.BatchNorm2d(cout, eps=eps)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x  # (B, cin, H, W)
        if self.expand_conv is not None:
            h = F.relu6(self.expand_bn(self.expand_conv(h)))  # (B, cin*e, H, W)
        h = F.relu6(self.dw_bn(self.dw_conv(h)))  # (B, cin*e, H/s, W/s)
        h = self.project_bn(self.project_conv(h))  # (B, cout, H/s, W/s), linear bottleneck
        return x + h if self.residual else h


class EfficientNetLite(nn.Module):
    def __init__(self, cfg: EfficientNetLiteConfig) -> None:
        super().__init__()
        self.cfg = cfg
        size = cfg.image_size
        self.stem_conv = SameConv2d(3, cfg.stem_channels, 3, size, stride=2)
        self.stem_bn = nn.BatchNorm2d(cfg.stem_channels, eps=cfg.bn_eps)
        size = -(-size // 2)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, cin, cout in cfg.stages:
            for i in range(repeats):  # the first block of a stage strides and changes width
                blocks.append(
                    MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand, size, cfg.bn_eps)
                )
                size = -(-size // stride) if i == 0 else size
        self.blocks = nn.ModuleList(blocks)
        last = cfg.stages[-1][5]
        self.head_conv = SameConv2d(last, cfg.head_channels, 1, size)
        self.head_bn = nn.BatchNorm2d(cfg.head_channels, eps=cfg.bn_eps)
        self.classifier = nn.Linear(cfg.head_channels, cfg.num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` normalised pixels -> ``(B, 1280)`` pooled features."""
        x = F.relu6(self.stem_bn(self.stem_conv(pixels)))  # (B, 32, S/2, S/2)
        for block in self.blocks:
            x = block(x)  # ... -> (B, 320, S/32, S/32)
        x = F.relu6(self.head_bn(self.head_conv(x)))  # (B, 1280, S/32, S/32)
        return x.mean(dim=(2, 3))  # (B, 1280)

    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits ``(B, 1000)`` (dropout is identity at inference)."""
        return self.classifier(self.forward(pixels))


_TOP_RENAMES = {
    "_conv_stem": "stem_conv",
    "_bn0": "stem_bn",
    "_conv_head": "head_conv",
    "_bn1": "head_bn",
    "_fc": "classifier",
}
_BLOCK_RENAMES = {
    "_expand_conv": "expand_conv",
    "_bn0": "expand_bn",
    "_depthwise_conv": "dw_conv",
    "_bn1": "dw_bn",
    "_project_conv": "project_conv",
    "_bn2": "project_bn",
}


def from_reference_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet-lite-pytorch`` state dict to our names (unknown names raise KeyError)."""
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            parts = ["blocks", parts[1], _BLOCK_RENAMES[parts[2]], *parts[3:]]
        else:
            parts[0] = _TOP_RENAMES[parts[0]]
        renamed[".".join(parts)] = value
    return renamed


def center_crop_resize(image: np.ndarray, resize_size: int, crop_size: int) -> np.ndarray:
    """Like resize(shorter side -> resize_size) then centre crop ``crop_size``, but crops first, in source
    pixels, so a 1 x 40000 strip never becomes a huge intermediate image."""
    height, width = image.shape[:2]
    side = min(height, width) * crop_size / resize_size  # the crop, measured in source pixels
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    resized = Image.fromarray(image).resize((crop_size, crop_size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(resized)


@register_family("efficientnet-lite")
class EfficientNetLiteFamily(Family):
    input_names = ("pixels",)
    output_name = "features"

    def _setting(self, key: str) -> Any:
        return self.spec.config.get(key, PREPROCESS_DEFAULTS[key])

    def preprocess(self, inputs: Sequence[Any]) -> Batch:
        size, resize = int(self._setting("image_size")), int(self._setting("resize_size"))
        mean = np.asarray(self._setting("mean_rgb"), dtype=np.float32)
        std = np.asarray(self._setting("stddev_rgb"), dtype=np.float32)
        max_pixels = int(self._setting("max_pixels"))
        pixels = np.empty((len(inputs), 3, size, size), dtype=np.float32)
        for i, item in enumerate(inputs):
            rgb = center_crop_resize(decode_image(item, max_pixels=max_pixels), resize, size)  # (S, S, 3) uint8
            pixels[i] = ((rgb.astype(np.float32) - mean) / std).transpose(2, 0, 1)  # (3, S, S)
        return {"pixels": pixels}

    def build_module(self) -> EfficientNetLite:
        return EfficientNetLite(EfficientNetLiteConfig.from_dict(self.spec.config)).eval()

    def example_inputs(self) -> Sequence[Any]:
        """Synthetic RGB images of several shapes and aspect ratios: gradients, stripes and seeded noise."""
        rng = np.random.default_rng(0)
        images = []
        for height, width in ((224, 224), (300, 180), (97, 411), (640, 480)):
            yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
            base = np.stack([xx / width, yy / height, np.sin(xx / 9.0) * np.cos(yy / 13.0) * 0.5 + 0.5], axis=2)
            noisy = base * 200.0 + rng.normal(0.0, 25.0, size=(height, width, 3))
            images.append(np.clip(noisy, 0, 255).astype(np.uint8))
        return images
