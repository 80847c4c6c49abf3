"""Identity data for metric learning: images grouped by who (or what) they show.

Sources:
- ``load_identity_folders``: ``root/<identity>/*.jpg|png|...``, the layout of LFW and VGGFace2 that
  users bring; photos are either taken whole (already-aligned crops) or detected + aligned by a face
  family exactly as the service will do it;
- ``load_emoji_identities``: each emoji concept is an identity drawn by Google and by Twitter;
- ``load_face_photo_identities``: the tiny real face photos of the registries (face_recognition's
  Obama x5 + Biden, face-api's demo group photos), for the fine-tuning demo.

``pk_batches`` samples P identities x K images per step; ``augment`` makes the K views of an
identity differ (crop, flip, small rotation, colour jitter) with batched torch ops.
"""

from __future__ import annotations

import math
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.core.errors import ModelError
from models.core.fetch import Package
from models.training.recipe import TrainingError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
Cropper = Callable[[np.ndarray], list[np.ndarray]]  # an RGB photo -> aligned face crops, best first
# face_recognition 1.3.0's sdist (PyPI) holds its test photos; the same pin as tests/face_photos.py.
FACE_RECOGNITION = Package(
    "pypi", "face_recognition", "1.3.0", "face_recognition-1.3.0.tar.gz",
    "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec", sdist=True,
)  # fmt: skip
SINGLE_PHOTOS = ("obama", "obama2", "obama3", "obama_partial_face", "obama_partial_face2", "biden")


@dataclass
class IdentityImages:
    """``crops[i]`` (S, S, 3) uint8 is what the network sees; ``inputs[i]`` is what a served encoder
    is given for the same item (the original photo, which the encoder detects and aligns itself)."""

    crops: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64 identity index
    names: list[str]  # identity names, indexed by label
    inputs: list[Any] = field(default_factory=list)  # (N,) encoded bytes or RGB arrays
    views: list[str] = field(default_factory=list)  # (N,) which file / drawing style

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> IdentityImages:
        """The given rows, with identities renumbered 0..n-1 in order of first appearance."""
        old = self.labels[rows]
        kept, relabelled = np.unique(old, return_inverse=True)
        return IdentityImages(
            crops=self.crops[rows], labels=relabelled.astype(np.int64), names=[self.names[i] for i in kept],
            inputs=[self.inputs[i] for i in rows] if self.inputs else [],
            views=[self.views[i] for i in rows] if self.views else [],
        )  # fmt: skip


def split_by_identity(data: IdentityImages, holdout: int, seed: int) -> tuple[IdentityImages, IdentityImages]:
    """(train, test) with ``holdout`` whole identities in test: no identity is in both."""
    n_ids = len(data.names)
    if not 0 < holdout < n_ids:
        raise TrainingError(f"holdout must be between 1 and {n_ids - 1} identities, got {holdout}")
    test_ids = np.random.default_rng(seed).permutation(n_ids)[:holdout]
    in_test = np.isin(data.labels, test_ids)
    return data.subset(np.flatnonzero(~in_test)), data.subset(np.flatnonzero(in_test))


def _stack(crops: list[np.ndarray], size: int) -> np.ndarray:
    return np.stack(crops) if crops else np.zeros((0, size, size, 3), dtype=np.uint8)


def load_identity_folders(root: Path, image_size: int, cropper: Cropper | None = None) -> IdentityImages:
    """``root/<identity>/<image>``; with ``cropper`` each photo's most confident face is used (photos
    with none are skipped), without it every image is resized whole."""
    from models.core.images import decode_image
    from models.families.face.facenet import resize_square

    if not root.is_dir():
        raise TrainingError(f"identity folder root {root} does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    crops, labels, inputs, views = [], [], [], []
    names: list[str] = []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        found = 0
        for path in files:
            data = path.read_bytes()
            try:
                image = decode_image(data)
            except ModelError as exc:
                raise TrainingError(f"{path}: {exc.message}") from exc
            faces = cropper(image) if cropper is not None else [resize_square(image, image_size)]
            if not faces:
                continue
            crops.append(faces[0])
            labels.append(len(names))
            inputs.append(data)
            views.append(f"{folder.name}/{path.name}")  # the path under root: LFW pairs name files so
            found += 1
        if found:
            names.append(folder.name)
    if len(names) < 2:
        raise TrainingError(f"{root} needs at least two identity folders with usable images, found {len(names)}")
    return IdentityImages(_stack(crops, image_size), np.asarray(labels, np.int64), names, inputs, views)


def load_emoji_identities(cache_dir: Path, image_size: int, limit: int | None = None) -> IdentityImages:
    """Every emoji concept as an identity with two images: Google's (view "google") then Twitter's."""
    from models.core.images import decode_image
    from models.data.emoji import STYLES, flatten_png, load_emoji
    from models.families.face.facenet import resize_square

    emojis = load_emoji(cache_dir, limit)
    crops, labels, inputs, views = [], [], [], []
    for label, emoji in enumerate(emojis):
        for style in STYLES:
            image = decode_image(flatten_png(emoji.png(style)))  # (64, 64, 3), transparency on white
            crops.append(resize_square(image, image_size))
            labels.append(label)
            inputs.append(image)
            views.append(style)
    names = [e.text for e in emojis]
    return IdentityImages(_stack(crops, image_size), np.asarray(labels, np.int64), names, inputs, views)


def face_cropper(family: Any) -> Cropper:
    """Detect + align like ``FaceFamily.preprocess`` of ``family`` (same detector, template, padding,
    size), so training crops are exactly the crops the served encoder embeds."""
    from models.families.face.align import align
    from models.families.face.common import DLIB_PADDING

    size = int(family.spec.config.get("image_size", family.image_size))
    padding = float(family.spec.config.get("padding", DLIB_PADDING))

    def crop(image: np.ndarray) -> list[np.ndarray]:
        faces = sorted(family.detector.detect(image), key=lambda f: -f.score)
        return [align(image, f.landmarks, size, family.template, padding) for f in faces]

    return crop


def load_face_photo_identities(cache_dir: Path, cropper: Cropper, size: int) -> tuple[IdentityImages, IdentityImages]:
    """(train, test) from the registries' face photos. train: every face of face-api's demo group
    photos as its own identity; test: face_recognition's single-person photos (Obama x5, Biden x1),
    people who are not in train."""
    from models.core.fetch import Fetcher
    from models.core.images import decode_image
    from models.zoo.face import FACE_API_TARBALL, SAMPLE_MEMBERS

    fetcher = Fetcher(cache_dir)
    with tarfile.open(fetcher.fetch(FACE_API_TARBALL)) as tf:
        group = {Path(m).stem: _member(tf, m) for m in SAMPLE_MEMBERS}
    with tarfile.open(fetcher.fetch(FACE_RECOGNITION)) as tf:
        single = {n: _member(tf, f"face_recognition-1.3.0/tests/test_images/{n}.jpg") for n in SINGLE_PHOTOS}
    train_crops, train_names = [], []
    for photo, data in group.items():
        for i, face in enumerate(cropper(decode_image(data))):
            train_crops.append(face)
            train_names.append(f"{photo}-face{i}")
    train = IdentityImages(_stack(train_crops, size), np.arange(len(train_names), dtype=np.int64), train_names)
    test_crops, test_labels, test_inputs = [], [], []
    for name, data in single.items():
        faces = cropper(decode_image(data))
        if not faces:
            raise TrainingError(f"no face found in {name}.jpg: the detector is broken")
        test_crops.append(faces[0])
        test_labels.append(0 if name.startswith("obama") else 1)
        test_inputs.append(data)
    test = IdentityImages(_stack(test_crops, size), np.asarray(test_labels, np.int64), ["obama", "biden"],
                          test_inputs, list(single))  # fmt: skip
    return train, test


def _member(tf: tarfile.TarFile, name: str) -> bytes:
    fileobj = tf.extractfile(name)
    if fileobj is None:
        raise TrainingError(f"{name} is missing from its package")
    with fileobj:
        return fileobj.read()


def pk_batches(labels: np.ndarray, p: int, k: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """One epoch: identities shuffled into groups of ``p``; ``k`` rows each (an identity with fewer
    images repeats them, and augmentation makes the repeats differ). Yields (p*k,) row indices."""
    by_identity = [np.flatnonzero(labels == i) for i in range(int(labels.max()) + 1)] if len(labels) else []
    identities = [i for i, rows in enumerate(by_identity) if len(rows)]
    if len(identities) < p:
        raise TrainingError(f"a P x K batch needs {p} identities; the training set has {len(identities)}")
    order = rng.permutation(identities)
    for start in range(0, len(order) - p + 1, p):
        picks = []
        for identity in order[start : start + p]:
            rows = rng.permutation(by_identity[identity])
            picks.append(np.resize(rows, k) if len(rows) < k else rows[:k])
        yield np.concatenate(picks)


@dataclass
class AugmentConfig:
    crop_scale: float = 0.85  # the smallest side fraction kept by the random crop
    max_rotation: float = 10.0  # degrees
    flip: bool = True  # off for data where mirroring changes identity (emoji arrows point left/right)
    jitter: float = 0.2  # brightness / contrast / saturation factors drawn from [1 - j, 1 + j]


def augment(images: Any, cfg: AugmentConfig, generator: Any) -> Any:
    """(B, 3, S, S) float pixels in [0, 255] -> augmented, same shape: one affine warp (scale,
    rotation, shift, mirror) and colour jitter per image."""
    import torch
    import torch.nn.functional as F

    b = len(images)

    def uniform(low: float, high: float) -> Any:
        return torch.rand(b, generator=generator) * (high - low) + low

    scale = uniform(cfg.crop_scale, 1.0)
    angle = uniform(-cfg.max_rotation, cfg.max_rotation) * (math.pi / 180.0)
    shift_x, shift_y = uniform(-1, 1) * (1 - scale), uniform(-1, 1) * (1 - scale)
    mirror = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(b)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    rows = [torch.stack([cos * mirror, -sin, shift_x], 1), torch.stack([sin * mirror, cos, shift_y], 1)]
    theta = torch.stack(rows, 1)  # (B, 2, 3): output -> input sampling coordinates
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)  # (B, S, S, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    factors = [uniform(1 - cfg.jitter, 1 + cfg.jitter).to(images)[:, None, None, None] for _ in range(3)]
    out = out * factors[0]  # brightness
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * factors[1] + mean  # contrast
    gray = (out * torch.tensor([0.299, 0.587, 0.114]).to(images)[None, :, None, None]).sum(1, keepdim=True)
    out = (out - gray) * factors[2] + gray  # saturation
    return out.clamp(0.0, 255.0)
