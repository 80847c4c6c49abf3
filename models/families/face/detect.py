"""MTCNN face detection (P-Net -> R-Net -> O-Net) with 5 landmarks, in our own PyTorch + numpy.

The three networks' parameter names match facenet-pytorch's ``pnet.pt``/``rnet.pt``/``onet.pt``
(Zhang et al. 2016, weights ported from the original Caffe model), so its state dicts load as they
are; we store them as safetensors. The cascade follows facenet-pytorch's ``detect_face`` (image
pyramid, P-Net proposals, NMS, R-Net refinement, O-Net + landmarks, box calibration), except that
R-/O-Net crops are zero-padded squares where the box leaves the image (as in the original MTCNN)
rather than clipped to the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from models.core.backends import ensure_torch_threads

DETECTOR_FILES = ("pnet.safetensors", "rnet.safetensors", "onet.safetensors")


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    score: float
    landmarks: np.ndarray  # (5, 2) x, y: left eye, right eye, nose, mouth left, mouth right (image left/right)


@dataclass
class DetectorConfig:
    min_face_size: int = 20  # pixels; the pyramid starts at scale 12 / min_face_size
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-, R-, O-Net face probability
    factor: float = 0.709  # pyramid scale step
    max_side: int = 1600  # cap on the first pyramid level's longer side (bounds P-Net's work on huge photos)
    nms: tuple[float, ...] = field(default=(0.5, 0.7, 0.7, 0.7))  # per-scale, P-Net, R-Net, O-Net (Min)


def _prelu_stack(channels: list[int], kernels: list[int], pools: list[tuple[int, int] | None]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (k, pool) in enumerate(zip(kernels, pools, strict=True)):
        layers += [nn.Conv2d(channels[i], channels[i + 1], kernel_size=k), nn.PReLU(channels[i + 1])]
        if pool is not None:
            layers.append(nn.MaxPool2d(pool[0], pool[1], ceil_mode=True))
    return layers


class PNet(nn.Module):
    """Fully convolutional proposal net: 12x12 receptive field, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1, self.pool1, self.conv2, self.prelu2, self.conv3, self.prelu3 = _prelu_stack(
            [3, 10, 16, 32], [3, 3, 3], [(2, 2), None, None]
        )
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (B, 3, H, W) scaled to [-1, 1]
        x = self.prelu1(self.conv1(x))  # (B, 10, H-2, W-2)
        x = self.pool1(x)  # (B, 10, ceil((H-2)/2), ...)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))  # (B, 32, h, w)
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)  # (B, 4, h, w), (B, 2, h, w)


class RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1, self.pool1, self.conv2, self.prelu2, self.pool2, self.conv3, self.prelu3 = (
            _prelu_stack([3, 28, 48, 64], [3, 3, 2], [(3, 2), (3, 2), None])
        )
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (B, 3, 24, 24)
        x = self.pool1(self.prelu1(self.conv1(x)))  # (B, 28, 11, 11)
        x = self.pool2(self.prelu2(self.conv2(x)))  # (B, 48, 4, 4)
        x = self.prelu3(self.conv3(x))  # (B, 64, 3, 3)
        x = x.permute(0, 3, 2, 1).reshape(len(x), -1)  # (B, 576) in the Caffe (W, H, C) order
        x = self.prelu4(self.dense4(x))  # (B, 128)
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)  # (B, 4), (B, 2)


class ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers = _prelu_stack([3, 32, 64, 64, 128], [3, 3, 3, 2], [(3, 2), (3, 2), (2, 2), None])
        self.conv1, self.prelu1, self.pool1, self.conv2, self.prelu2, self.pool2 = layers[:6]
        self.conv3, self.prelu3, self.pool3, self.conv4, self.prelu4 = layers[6:]
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: (B, 3, 48, 48)
        x = self.pool1(self.prelu1(self.conv1(x)))  # (B, 32, 23, 23)
        x = self.pool2(self.prelu2(self.conv2(x)))  # (B, 64, 10, 10)
        x = self.pool3(self.prelu3(self.conv3(x)))  # (B, 64, 4, 4)
        x = self.prelu4(self.conv4(x))  # (B, 128, 3, 3)
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).reshape(len(x), -1)))  # (B, 256)
        # box offsets (B, 4), landmarks (B, 10: five x then five y, relative to the box), probs (B, 2)
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best first. ``method``: "union" (IoU) or "min"."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each (x1, y1, x2, y2, ...) box to a square around its centre."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _calibrate(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    out[:, :4] = boxes[:, :4] + offsets * np.concatenate([w, h, w, h], axis=1)
    return out


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> torch.Tensor:
    """(B, 3, size, size) crops of integer boxes, zero outside the image, scaled to [-1, 1]."""
    height, width = image.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
    for i, (x1, y1, x2, y2) in enumerate(np.trunc(boxes[:, :4]).astype(np.int64)):
        x2, y2 = max(x2, x1), max(y2, y1)  # a degenerate regression still gives a 1-pixel crop
        patch = np.zeros((y2 - y1 + 1, x2 - x1 + 1, 3), dtype=np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width - 1), min(y2, height - 1)
        if sx2 >= sx1 and sy2 >= sy1:
            patch[sy1 - y1 : sy2 - y1 + 1, sx1 - x1 : sx2 - x1 + 1] = image[sy1 : sy2 + 1, sx1 : sx2 + 1]
        out[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy((out.transpose(0, 3, 1, 2) - 127.5) * 0.0078125)


class FaceDetector:
    """MTCNN on RGB uint8 images: ``detect(image) -> list[Face]`` sorted by score (best first)."""

    def __init__(self, weights_dir: Path, config: DetectorConfig | None = None) -> None:
        from safetensors.torch import load_file

        self.config = config or DetectorConfig()
        self.pnet, self.rnet, self.onet = PNet().eval(), RNet().eval(), ONet().eval()
        for net, filename in zip((self.pnet, self.rnet, self.onet), DETECTOR_FILES, strict=True):
            net.load_state_dict(load_file(str(weights_dir / filename)), strict=True)

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> list[Face]:
        ensure_torch_threads()
        boxes = self._propose(image)
        if len(boxes):
            boxes = self._refine(image, boxes)
        if not len(boxes):
            return []
        boxes, points = self._output(image, boxes)
        faces = [
            Face((float(b[0]), float(b[1]), float(b[2]), float(b[3])), float(b[4]), p.astype(np.float64))
            for b, p in zip(boxes, points, strict=True)
        ]
        return sorted(faces, key=lambda f: -f.score)

    def _propose(self, image: np.ndarray) -> np.ndarray:
        """Stage 1: P-Net over an image pyramid -> squared candidate boxes (N, 5: x1 y1 x2 y2 score)."""
        cfg, (height, width) = self.config, image.shape[:2]
        scale, scales = min(12.0 / cfg.min_face_size, cfg.max_side / max(height, width)), []
        while min(height, width) * scale >= 12:
            scales.append(scale)
            scale *= cfg.factor
        found = []
        for s in scales:
            resized = cv2.resize(image, (int(width * s + 1), int(height * s + 1)), interpolation=cv2.INTER_AREA)
            x = torch.from_numpy((resized.astype(np.float32).transpose(2, 0, 1)[None] - 127.5) * 0.0078125)
            reg, prob = (t[0].numpy() for t in self.pnet(x))  # (4, h, w), (2, h, w)
            ys, xs = np.nonzero(prob[1] >= cfg.thresholds[0])
            if not len(ys):
                continue
            cells = np.stack([xs, ys], axis=1).astype(np.float32)
            q1, q2 = np.floor((2 * cells + 1) / s), np.floor((2 * cells + 12) / s)  # 12x12 cell, stride 2
            b = np.concatenate([q1, q2, prob[1, ys, xs, None], reg[:, ys, xs].T], axis=1)  # (n, 9)
            found.append(b[nms(b[:, :4], b[:, 4], cfg.nms[0])])
        if not found:
            return np.zeros((0, 5), dtype=np.float32)
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], cfg.nms[1])]
        w, h = boxes[:, 2:3] - boxes[:, 0:1], boxes[:, 3:4] - boxes[:, 1:2]
        calibrated = boxes[:, :4] + boxes[:, 5:9] * np.concatenate([w, h, w, h], axis=1)
        return _square(np.concatenate([calibrated, boxes[:, 4:5]], axis=1))

    def _refine(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net rescoring and box regression on 24x24 crops."""
        reg, prob = (t.numpy() for t in self.rnet(_crops(image, boxes, 24)))
        keep = prob[:, 1] > self.config.thresholds[1]
        boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], axis=1)
        pick = nms(boxes[:, :4], boxes[:, 4], self.config.nms[2])
        return _square(_calibrate(boxes[pick], reg[keep][pick]))

    def _output(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 3: O-Net scores, final boxes and five landmarks on 48x48 crops."""
        boxes = np.concatenate([np.trunc(boxes[:, :4]), boxes[:, 4:5]], axis=1)
        reg, marks, prob = (t.numpy() for t in self.onet(_crops(image, boxes, 48)))
        keep = prob[:, 1] > self.config.thresholds[2]
        boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], axis=1)
        reg, marks = reg[keep], marks[keep]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points = np.stack([w * marks[:, :5] + boxes[:, 0:1], h * marks[:, 5:] + boxes[:, 1:2]], axis=2)  # (n, 5, 2)
        boxes = _calibrate(boxes, reg)
        pick = nms(boxes[:, :4], boxes[:, 4], self.config.nms[3], method="min")
        return boxes[pick], points[pick]
