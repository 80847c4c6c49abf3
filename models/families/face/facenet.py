"""FaceNet: Inception-ResNet-v1 (Szegedy et al. 2016; Schroff et al. 2015) in PyTorch, 512-d unit
embeddings, with parameter names identical to facenet-pytorch's ``InceptionResnetV1`` so its
checkpoints (e.g. ``20180402-114759-vggface2.pt``, ported from David Sandberg's TensorFlow FaceNet)
load as they are. No pretrained weights ship in any registry package, so there is no zoo entry:
``import_facenet_checkpoint`` turns a user-supplied checkpoint into an artifact.

Input: 160x160 RGB faces standardised as ``(x - 127.5) / 128`` (facenet-pytorch's
``fixed_image_standardization``); faces are found by MTCNN and aligned to the "facenet" template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.core.encoder import Batch
from models.core.errors import ArtifactError, ZooError
from models.core.images import decode_image
from models.core.registry import register_family
from models.core.spec import EncoderSpec, split_key
from models.families.face.common import FaceFamily

Size = int | tuple[int, int]


@dataclass
class FaceNetConfig:
    image_size: int = 160
    dim: int = 512
    repeats: tuple[int, int, int] = (5, 10, 5)  # Block35, Block17, Block8 (+ one final Block8)
    scales: tuple[float, float, float] = (0.17, 0.10, 0.20)
    # Small variants (trained here on 2 CPU cores): every channel count times ``width``, and no stem
    # max-pool, which keeps the grids of a 64 px input (13/6/2) near those of 160 px (17/8/3).
    width: float = 1.0
    stem_pool: bool = True
    dropout: float = 0.6
    # > 0: a colour/layout branch, the input averaged down to a ``thumbnail`` x ``thumbnail`` grid and
    # projected linearly into the embedding (added before ``last_bn``). Global average pooling throws
    # away where things are; for drawings (emoji) that layout and its colours are half the identity.
    # 0 keeps facenet-pytorch's exact parameter set.
    thumbnail: int = 0
    # a (dim, dim) basis after ``last_bn``: the baked orthogonal basis of a BT²/OCA-compatible model
    # (``models.compat.heads``); absent from facenet-pytorch's parameter set
    basis: bool = False

    def channels(self, full: int) -> int:
        return max(1, round(full * self.width))

    @property
    def grid_channels(self) -> tuple[int, int, int]:
        """Channels at the Block35, Block17 and Block8 grids: 256, 896, 1792 at full width. Derived
        from the reductions' concatenations so any ``width`` adds up exactly."""
        c35 = self.channels(256)
        c17 = self.channels(384) + self.channels(256) + c35  # Mixed6a: conv, conv chain, max-pool
        c8 = self.channels(384) + 2 * self.channels(256) + c17  # Mixed7a: three conv chains, max-pool
        return c35, c17, c8


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3, as in TensorFlow) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: Size, stride: int = 1, padding: Size = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001, momentum=0.1, affine=True)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _chain(*convs: tuple[int, int, Size, int, Size]) -> nn.Sequential:
    return nn.Sequential(*(BasicConv2d(*c) for c in convs))


class _Residual(nn.Module):
    """Shared forward of Block35/17/8: concat branches -> 1x1 conv -> scaled residual (-> ReLU)."""

    conv2d: nn.Conv2d

    def __init__(self, scale: float, relu: bool) -> None:
        super().__init__()
        self.scale, self.use_relu = scale, relu

    def _combine(self, x: torch.Tensor, branches: list[torch.Tensor]) -> torch.Tensor:
        out = self.conv2d(torch.cat(branches, dim=1)) * self.scale + x  # (B, C, h, w)
        return F.relu(out) if self.use_relu else out


class Block35(_Residual):  # 35x35 grid in the paper; 17x17 at 160 px
    def __init__(self, scale: float = 1.0, ch: int = 256, b: int = 32) -> None:
        super().__init__(scale, relu=True)
        self.branch0 = BasicConv2d(ch, b, 1)
        self.branch1 = _chain((ch, b, 1, 1, 0), (b, b, 3, 1, 1))
        self.branch2 = _chain((ch, b, 1, 1, 0), (b, b, 3, 1, 1), (b, b, 3, 1, 1))
        self.conv2d = nn.Conv2d(3 * b, ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._combine(x, [self.branch0(x), self.branch1(x), self.branch2(x)])  # (B, 256, 17, 17)


class Block17(_Residual):
    def __init__(self, scale: float = 1.0, ch: int = 896, b: int = 128) -> None:
        super().__init__(scale, relu=True)
        self.branch0 = BasicConv2d(ch, b, 1)
        self.branch1 = _chain((ch, b, 1, 1, 0), (b, b, (1, 7), 1, (0, 3)), (b, b, (7, 1), 1, (3, 0)))
        self.conv2d = nn.Conv2d(2 * b, ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._combine(x, [self.branch0(x), self.branch1(x)])  # (B, 896, 8, 8)


class Block8(_Residual):
    def __init__(self, scale: float = 1.0, relu: bool = True, ch: int = 1792, b: int = 192) -> None:
        super().__init__(scale, relu=relu)
        self.branch0 = BasicConv2d(ch, b, 1)
        self.branch1 = _chain((ch, b, 1, 1, 0), (b, b, (1, 3), 1, (0, 1)), (b, b, (3, 1), 1, (1, 0)))
        self.conv2d = nn.Conv2d(2 * b, ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._combine(x, [self.branch0(x), self.branch1(x)])  # (B, 1792, 3, 3)


class Mixed6a(nn.Module):  # reduction A: 17x17x256 -> 8x8x896
    def __init__(self, cfg: FaceNetConfig) -> None:
        super().__init__()
        c, cin = cfg.channels, cfg.grid_channels[0]
        self.branch0 = BasicConv2d(cin, c(384), 3, 2)
        self.branch1 = _chain((cin, c(192), 1, 1, 0), (c(192), c(192), 3, 1, 1), (c(192), c(256), 3, 2, 0))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)


class Mixed7a(nn.Module):  # reduction B: 8x8x896 -> 3x3x1792
    def __init__(self, cfg: FaceNetConfig) -> None:
        super().__init__()
        c, cin = cfg.channels, cfg.grid_channels[1]
        self.branch0 = _chain((cin, c(256), 1, 1, 0), (c(256), c(384), 3, 2, 0))
        self.branch1 = _chain((cin, c(256), 1, 1, 0), (c(256), c(256), 3, 2, 0))
        self.branch2 = _chain((cin, c(256), 1, 1, 0), (c(256), c(256), 3, 1, 1), (c(256), c(256), 3, 2, 0))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


class InceptionResnetV1(nn.Module):
    def __init__(self, config: FaceNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or FaceNetConfig()
        c = cfg.channels
        c35, c17, c8 = cfg.grid_channels
        self.conv2d_1a = BasicConv2d(3, c(32), 3, 2)
        self.conv2d_2a = BasicConv2d(c(32), c(32), 3, 1)
        self.conv2d_2b = BasicConv2d(c(32), c(64), 3, 1, 1)
        self.maxpool_3a: nn.Module = nn.MaxPool2d(3, stride=2) if cfg.stem_pool else nn.Identity()
        self.conv2d_3b = BasicConv2d(c(64), c(80), 1)
        self.conv2d_4a = BasicConv2d(c(80), c(192), 3)
        self.conv2d_4b = BasicConv2d(c(192), c35, 3, 2)
        self.repeat_1 = nn.Sequential(*(Block35(cfg.scales[0], c35, c(32)) for _ in range(cfg.repeats[0])))
        self.mixed_6a = Mixed6a(cfg)
        self.repeat_2 = nn.Sequential(*(Block17(cfg.scales[1], c17, c(128)) for _ in range(cfg.repeats[1])))
        self.mixed_7a = Mixed7a(cfg)
        self.repeat_3 = nn.Sequential(*(Block8(cfg.scales[2], True, c8, c(192)) for _ in range(cfg.repeats[2])))
        self.block8 = Block8(relu=False, ch=c8, b=c(192))
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.last_linear = nn.Linear(c8, cfg.dim, bias=False)
        self.last_bn = nn.BatchNorm1d(cfg.dim, eps=0.001, momentum=0.1, affine=True)
        if cfg.thumbnail:
            if cfg.image_size % cfg.thumbnail:
                raise ValueError(f"thumbnail {cfg.thumbnail} must divide image_size {cfg.image_size}")
            self.thumbnail_linear = nn.Linear(3 * cfg.thumbnail**2, cfg.dim, bias=False)
        if cfg.basis:
            self.basis = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: (B, 3, 160, 160), (RGB - 127.5) / 128; shapes below are for the full 160 px model
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(pixels)))  # (B, 64, 77, 77)
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x))))  # (B, 256, 17, 17)
        x = self.mixed_6a(self.repeat_1(x))  # (B, 896, 8, 8)
        x = self.mixed_7a(self.repeat_2(x))  # (B, 1792, 3, 3)
        x = self.block8(self.repeat_3(x))  # (B, 1792, 3, 3)
        x = self.dropout(self.avgpool_1a(x)).flatten(1)  # (B, 1792)
        x = self.last_linear(x)  # (B, 512)
        if self.config.thumbnail:
            t = self.config.thumbnail
            thumb = F.avg_pool2d(pixels, self.config.image_size // t).flatten(1)  # (B, 3 * t * t)
            x = x + self.thumbnail_linear(thumb)  # (B, 512)
        x = self.last_bn(x)  # (B, 512)
        if self.config.basis:
            x = self.basis(x)  # (B, 512): old-compatible directions first, the new model's own after
        return F.normalize(x, p=2, dim=1)  # unit length


NETWORK_KEYS = ("image_size", "repeats", "scales", "width", "stem_pool", "thumbnail", "basis")


def facenet_config(spec: EncoderSpec) -> FaceNetConfig:
    """The network a spec describes: ``spec.config["network"]`` (trained variants) or the full model."""
    given = dict(spec.config.get("network") or {})
    unknown = sorted(set(given) - set(NETWORK_KEYS))
    if unknown:
        raise ArtifactError(f"{spec.key}: unknown facenet network settings {unknown}; known: {list(NETWORK_KEYS)}")
    for key in ("repeats", "scales"):
        if key in given:
            given[key] = tuple(given[key])
    given.setdefault("image_size", int(spec.config.get("image_size", 160)))
    return FaceNetConfig(dim=spec.dim, **given)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3): the whole image squashed, bilinear with antialiasing.
    Training data goes through this same function, so served vectors match training code."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


@register_family("facenet")
class FaceNetFamily(FaceFamily):
    """Faces found by MTCNN and aligned, or, with ``spec.config["detect"] = false``, every input
    image taken whole as one already-aligned crop (face folders cropped beforehand, or the emoji
    "identities" the recipe trains on here)."""

    image_size = 160
    template = "facenet"

    def normalise(self, crops: np.ndarray) -> np.ndarray:
        x = (crops.astype(np.float32) - 127.5) / 128.0  # (F, S, S, 3)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (F, 3, S, S)

    def preprocess(self, inputs: Sequence[Any]) -> Batch:
        if self.spec.config.get("detect", True):
            return super().preprocess(inputs)
        size = int(self.spec.config.get("image_size", self.image_size))
        images = [decode_image(item) for item in inputs]
        crops = np.zeros((0, size, size, 3), np.uint8)
        if images:
            crops = np.stack([resize_square(im, size) for im in images])  # (N, S, S, 3)
        return {
            "pixels": self.normalise(crops),  # (N, 3, S, S) float32
            "_owner": np.arange(len(images), dtype=np.int64),  # one "face" per input: the whole image
            "_boxes": np.asarray([[0, 0, im.shape[1], im.shape[0]] for im in images], np.float32).reshape(-1, 4),
            "_scores": np.ones(len(images), dtype=np.float32),
        }

    def build_module(self) -> InceptionResnetV1:
        return InceptionResnetV1(facenet_config(self.spec))


def _checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "not a plain state dict"
        raise ZooError(f"{path} is not a PyTorch state dict loadable with weights_only=True: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ZooError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _some(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` completed for ``module``: the classifier head (``logits.*``) is dropped, missing
    ``num_batches_tracked`` counters are filled in; any other difference raises ZooError naming it."""
    expected = module.state_dict()
    given = {k: v for k, v in state.items() if not k.startswith("logits.")}
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in given:
            given[key] = expected[key]
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    wrong = [k for k, v in expected.items() if k in given and given[k].shape != v.shape]
    shapes = [f"{k} {tuple(given[k].shape)} != {tuple(expected[k].shape)}" for k in wrong]
    problems = [
        f"{len(keys)} {what}: {_some(keys)}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes))
        if keys
    ]
    if problems:
        raise ZooError("checkpoint does not match facenet-pytorch's InceptionResnetV1: " + "; ".join(problems))
    return given


def import_facenet_checkpoint(
    path: Path,
    models_dir: Path,
    name: str = "facenet",
    version: str = "1",
    threshold: float = 1.1,
    cache_dir: Path | None = None,
) -> EncoderSpec:
    """Publish ``<models_dir>/<name>@<version>`` from a facenet-pytorch ``InceptionResnetV1`` state
    dict (``.pt``): safetensors + ONNX + MTCNN detector + spec. The detector comes from an installed
    face artifact (e.g. face-resnet@1) or else from the facenet-pytorch wheel (fetched into
    ``cache_dir``, default ``<models_dir>/../cache``). ``threshold``: Euclidean distance between unit
    embeddings below which two faces are the same person (about 1.1 for the VGGFace2 weights)."""
    import shutil

    from models.core.artifact import publish_artifact
    from models.core.export import save_weights
    from models.core.fetch import Fetcher
    from models.families.face.common import embedder_parity, export_embedder, find_detector_source, install_detector
    from models.zoo.face import FACENET_PYTORCH_WHEEL, PARITY_TOLERANCE, detector_spec_config

    module = InceptionResnetV1().eval()
    module.load_state_dict(check_state_dict(module, _checkpoint_state(path)), strict=True)
    spec = EncoderSpec(
        name=name, version=version, family="facenet", modality="face", dim=512, metric="l2",
        config={"image_size": 160, "template": "facenet", "normalisation": "(x - 127.5) / 128",
                "threshold": threshold, "distance": "euclidean", **detector_spec_config()},
        description="FaceNet Inception-ResNet-v1 (facenet-pytorch checkpoint), 512-d unit face embeddings",
        source=f"imported from {path.name}; MTCNN from PyPI facenet-pytorch 2.6.0",
        license="as the imported checkpoint's; MTCNN weights: MIT (facenet-pytorch)",
    )  # fmt: skip
    split_key(spec.key)
    staging = models_dir / f".staging-{spec.key}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        source = find_detector_source(models_dir)
        wheel = None
        if source is None:
            wheel = Fetcher(cache_dir or models_dir.parent / "cache").fetch(FACENET_PYTORCH_WHEEL)
        install_detector(staging, source, wheel)
        save_weights(module, staging)
        onnx_path = export_embedder(module, staging, 160)
        pixels = np.random.default_rng(0).normal(0.0, 0.5, (4, 3, 160, 160)).astype(np.float32)
        diff = embedder_parity(module, onnx_path, pixels)
        if diff > PARITY_TOLERANCE:
            raise ZooError(f"ONNX export of {spec.key} differs from PyTorch by {diff:.2e}")
        spec.save(staging)
        return publish_artifact(staging, models_dir / spec.key)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
