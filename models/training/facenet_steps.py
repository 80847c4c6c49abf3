"""The steps of the facenet recipe around its training loop: build the network (optionally from a
zoo artifact), load train / test identities, score embeddings with the verification protocols,
publish the artifact, and embed through a served encoder for ``ers eval``."""

from __future__ import annotations

import io
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from models.core.spec import EncoderSpec
from models.data.identities import (
    IdentityImages,
    face_cropper,
    load_emoji_identities,
    load_face_photo_identities,
    load_identity_folders,
    split_by_identity,
)
from models.training.facenet_config import BACKBONES, FaceNetTrainConfig
from models.training.recipe import TrainingError
from models.training.run import config_dict
from models.training.verification import (
    distance_summary,
    gallery_split,
    identity_pairs,
    nearest_hits,
    pair_distances,
    read_lfw_pairs,
    ten_fold_verification,
)

if TYPE_CHECKING:
    from models.families.face.common import FaceFamily

PARITY_TOLERANCE = 1e-4
CARD_NOTES = (
    "Trained with `ers train facenet`: triplet loss on L2-normalised embeddings over P identities x K "
    "augmented images, online semi-hard (or batch-hard) negatives. `threshold` is the mean of the ten "
    "thresholds chosen by the LFW 10-fold protocol on held-out identities (Euclidean distance; `/verify` "
    "uses it). `before_*` metrics: the same protocol on the starting network (random init, or the "
    "pretrained model when fine-tuning); `pixels_*`: raw pixels, L2-normalised."
)


@dataclass
class Network:
    family: FaceFamily  # built on the draft spec; ``directory`` holds the MTCNN detector when detecting
    module: Any  # torch.nn.Module; its raw output is L2-normalised by the loss and the served family
    spec: EncoderSpec  # draft: the threshold is filled in after training
    detect: bool
    mean: tuple[float, float, float]
    scale: float
    pretrained_threshold: float | None = None  # on the unit sphere

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 255] -> the network input, as ``family.normalise`` does on numpy."""
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device)[None, :, None, None]
        return (pixels - mean) / self.scale

    def final_spec(self, cfg: FaceNetTrainConfig, threshold: float) -> EncoderSpec:
        return EncoderSpec(**{**self.spec.to_json(), "config": {**self.spec.config, "threshold": threshold}})


def _models_and_cache(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / "models", data_dir / "cache"


def _zoo_artifact(key: str, data_dir: Path) -> Path:
    """An installed artifact under ``<data_dir>/models``, pulled from the zoo when missing."""
    from models.zoo import pull

    models_dir, cache_dir = _models_and_cache(data_dir)
    if (models_dir / key).is_dir():
        return models_dir / key
    return models_dir / pull(key, models_dir, cache_dir).key


def _detects(cfg: FaceNetTrainConfig) -> bool:
    return cfg.data == "face-photos" or (cfg.data != "emoji" and cfg.detect)


def network(cfg: FaceNetTrainConfig, data_dir: Path, old: EncoderSpec | None = None, basis: bool = False) -> Network:
    """The network to train; ``old``: the model it is trained backward-compatible with (its spec says
    so), ``basis``: with a (dim, dim) basis after ``last_bn`` (BT², OCA)."""
    from models.core.registry import family_class, load_torch_module
    from models.families.face.common import find_detector_source
    from models.families.face.resnet import MEAN_RGB
    from models.zoo.face import detector_spec_config

    detect, family_name = _detects(cfg), BACKBONES[cfg.backbone]
    if family_name == "face-resnet" and not detect:
        raise TrainingError("the face-resnet backbone embeds detected faces: use face photos (detect: true)")
    if cfg.data == "face-photos" and cfg.pretrained is None:
        raise TrainingError("data 'face-photos' is a fine-tuning demo (a few dozen faces): set pretrained")
    source = _zoo_artifact(cfg.pretrained, data_dir) if cfg.pretrained else None
    detector_dir = None
    if detect:
        detector_dir = source or find_detector_source(_models_and_cache(data_dir)[0])
        detector_dir = detector_dir or _zoo_artifact("face-resnet@1", data_dir)
    shared: dict[str, Any] = {"image_size": cfg.image_size, "detect": detect, "distance": "euclidean",
                              "recipe": "facenet", "training": config_dict(cfg)}  # fmt: skip
    if detect:
        shared.update(detector_spec_config())
    metric: Literal["l2", "cosine"]
    if family_name == "facenet":
        network_keys = {"image_size": cfg.image_size, "repeats": list(cfg.repeats), "width": cfg.width,
                        "stem_pool": cfg.stem_pool, "thumbnail": cfg.thumbnail}  # fmt: skip
        if basis:
            network_keys["basis"] = True
        config = {**shared, "template": "facenet", "normalisation": "(x - 127.5) / 128", "network": network_keys}
        mean, scale, metric = (127.5, 127.5, 127.5), 128.0, "l2"
    else:
        config = {**shared, "template": "dlib", "padding": 0.25, "mean_rgb": list(MEAN_RGB)}
        mean, scale, metric = MEAN_RGB, 255.0, "cosine"  # dlib's net is not normalised: the family does it
    spec = EncoderSpec(
        name=cfg.name, version=cfg.version, family=family_name, modality="face", dim=cfg.dim, metric=metric,
        config=config, description=f"FaceNet-style triplet-loss encoder ({cfg.backbone}) trained on {cfg.data}",
        source=f"ers train facenet; data: {cfg.data}" + (f"; fine-tuned from {cfg.pretrained}" if source else ""),
        license="weights: as the training data's licence" + (f" and {source.name}'s" if source else ""),
        compatible_with=old.key if old else None, compat_dims=old.dim if old else None,
    )  # fmt: skip
    family: FaceFamily = family_class(family_name)(spec, detector_dir)  # type: ignore[assignment]
    if source is None:
        module = family.build_module()
        return Network(family, module, spec, detect, mean, scale)
    old = EncoderSpec.load(source)
    if old.family != family_name:
        raise TrainingError(f"pretrained {old.key} is a '{old.family}' model, not the {cfg.backbone} backbone")
    module = load_torch_module(family_class(old.family)(old, source), source)
    return Network(family, module, spec, detect, mean, scale, float(old.config.get("threshold", 0.0)) or None)


def load_data(cfg: FaceNetTrainConfig, net: Network, data_dir: Path) -> tuple[IdentityImages, IdentityImages]:
    cache_dir = _models_and_cache(data_dir)[1]
    if cfg.data == "face-photos":
        train, test = load_face_photo_identities(cache_dir, face_cropper(net.family), cfg.image_size)
        if net.pretrained_threshold is not None:
            # A pretrained threshold on raw dlib descriptors, moved to the unit sphere we train on.
            norms = np.linalg.norm(embed(net, train.crops, normalise=False), axis=1)
            net.pretrained_threshold /= float(norms.mean())
        return train, test
    if cfg.data == "emoji":
        data = load_emoji_identities(cache_dir, cfg.image_size, cfg.limit)
    else:
        data = load_identity_folders(Path(cfg.data), cfg.image_size, face_cropper(net.family) if net.detect else None)
    train, test = held_out(cfg, data)
    return train, data if cfg.lfw_pairs else test  # LFW's protocol scores its pairs over the whole folder


def held_out(cfg: FaceNetTrainConfig, data: IdentityImages) -> tuple[IdentityImages, IdentityImages]:
    """(train, evaluation) identities: the test split, or with ``evaluate_on: val`` a validation split
    carved out of the training identities (the test identities are then neither trained nor scored)."""
    train, test = split_by_identity(data, cfg.holdout, cfg.split_seed)
    if cfg.evaluate_on == "val":
        return split_by_identity(train, cfg.holdout, cfg.split_seed + 1)
    return train, test


def embed(net: Network, crops: np.ndarray, device: str = "cpu", batch: int = 256, normalise: bool = True) -> np.ndarray:
    """(N, S, S, 3) uint8 crops -> (N, dim) embeddings from the training module (eval mode)."""
    module = net.module.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(crops), batch):
            x = torch.from_numpy(crops[start : start + batch]).permute(0, 3, 1, 2).float().to(device)
            y = module(net.normalise(x))  # (b, dim)
            out.append((F.normalize(y, dim=1) if normalise else y).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.spec.dim), np.float32)


def metrics_from_vectors(cfg: FaceNetTrainConfig, vectors: np.ndarray, test: IdentityImages) -> dict[str, Any]:
    """Verification (10-fold LFW protocol) + gallery recall@1 (also per query), or for the tiny
    face-photos set the 10-fold protocol and the same / different distances over every pair."""
    if cfg.data == "face-photos":
        a, b = np.triu_indices(len(vectors), k=1)
        dist, same = pair_distances(vectors, np.stack([a, b], 1)), test.labels[a] == test.labels[b]
        # LFW's 10-fold protocol over every pair (15 for the 6 photos that ship): each fold's threshold is
        # chosen on the other nine. Same and different pairs are dealt round the folds separately, as
        # LFW balances its folds. The served threshold stays the pretrained one: 15 pairs cannot set it.
        folds = np.zeros(len(same), np.int64)
        folds[same], folds[~same] = np.arange(same.sum()) % 10, np.arange((~same).sum()) % 10
        verified = {k: v for k, v in ten_fold_verification(dist, same, folds).items() if k != "threshold"}
        return {**verified, "pairs": float(len(same)), **distance_summary(dist, same)}
    if cfg.lfw_pairs:
        pairs, same, folds = lfw_rows(Path(cfg.lfw_pairs), Path(cfg.data), test)
    else:
        pairs, folds = identity_pairs(test.labels, np.random.default_rng(cfg.split_seed))
        same = test.labels[pairs[:, 0]] == test.labels[pairs[:, 1]]
    dist = pair_distances(vectors, pairs)
    gallery, queries = gallery_split(test.labels, test.views, "google" if cfg.data == "emoji" else None)
    hits = nearest_hits(vectors[gallery], test.labels[gallery], vectors[queries], test.labels[queries])
    # per query as well: the split is fixed, so intervals can bootstrap over queries and seeds together
    return {**ten_fold_verification(dist, same, folds), "recall_at_1": float(hits.mean()),
            "recall_at_1_per_query": hits.astype(int).tolist(), "gallery_size": float(len(gallery)),
            **distance_summary(dist, same)}  # fmt: skip


def lfw_rows(pairs_file: Path, root: Path, test: IdentityImages) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LFW's pairs as rows of ``test`` (a whole folder; ``test.views`` holds ``<identity>/<file>``)."""
    paths, same, folds = read_lfw_pairs(pairs_file, root)
    row = {v: i for i, v in enumerate(test.views)}
    named = [(str(a.relative_to(root)), str(b.relative_to(root))) for a, b in paths]
    missing = sorted({p for pair in named for p in pair if p not in row})
    if missing:
        raise TrainingError(f"{len(missing)} images of the LFW pairs are not in the test set, e.g. {missing[:3]}")
    return np.asarray([(row[a], row[b]) for a, b in named], np.int64), same, folds


def score(cfg: FaceNetTrainConfig, net: Network, test: IdentityImages, device: str) -> dict[str, Any]:
    return metrics_from_vectors(cfg, embed(net, test.crops, device, cfg.eval_batch), test)


THUMBNAIL_BASELINE = 16  # px: blurred pixels, a stronger pixel baseline than full-size ones on emoji


def pixel_baseline(cfg: FaceNetTrainConfig, test: IdentityImages) -> dict[str, Any]:
    """The same protocol on raw pixels and on 16 x 16 thumbnails (each flattened and L2-normalised):
    what training must beat."""
    out = {}
    for prefix, side in (("pixels", 0), ("thumbnails", THUMBNAIL_BASELINE)):
        crops = test.crops.astype(np.float32)  # (N, S, S, 3)
        if side and crops.shape[1] % side == 0 and crops.shape[1] > side:
            n, s = len(crops), crops.shape[1]
            crops = crops.reshape(n, side, s // side, side, s // side, 3).mean(axis=(2, 4))  # box-average
        elif side:
            continue  # the image size is not a multiple of the thumbnail's
        flat = crops.reshape(len(crops), -1)
        flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
        scored = metrics_from_vectors(cfg, flat, test)
        out.update({f"{prefix}_{k}": v for k, v in scored.items() if k != "gallery_size"})
    return out


def publish(net: Network, spec: EncoderSpec, test: IdentityImages, destination: Path) -> Path:
    """Weights + ONNX (checked against PyTorch on real test crops) + spec (+ detector), published
    atomically as ``destination``."""
    from PIL import Image

    from models.core.artifact import ONNX_FILE, publish_artifact
    from models.core.export import save_weights
    from models.families.face.common import EXAMPLE_FILE, embedder_parity, export_embedder, install_detector

    module = net.module.cpu().eval()
    staging = destination.with_name(f".staging-{destination.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if net.detect:
            install_detector(staging, net.family.directory, None)  # detector/ and its example face
        else:
            example = test.crops[0] if not test.inputs else test.inputs[0]
            out = io.BytesIO()
            Image.fromarray(np.asarray(example)).save(out, format="JPEG", quality=95)
            (staging / EXAMPLE_FILE).write_bytes(out.getvalue())  # warms the encoder up when loaded
        save_weights(module, staging)
        export_embedder(module, staging, spec.config["image_size"])
        pixels = net.family.normalise(test.crops[:16])
        diff = embedder_parity(module, staging / ONNX_FILE, pixels)
        if diff > PARITY_TOLERANCE:
            raise TrainingError(f"ONNX export of {spec.key} differs from PyTorch by {diff:.2e}")
        spec.save(staging)
        publish_artifact(staging, destination)
        return destination
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def served_vectors(encoder: Any, inputs: Sequence[Any], batch: int = 64) -> np.ndarray:
    """One vector per input from a loaded encoder: its most confident face (the whole image when the
    encoder does not detect), exactly as the service picks a query face."""
    out = []
    for start in range(0, len(inputs), batch):
        chunk = list(inputs[start : start + batch])
        prepared = encoder.preprocess(chunk)
        vectors = encoder.postprocess(encoder.forward(prepared), prepared)
        owners, scores = prepared["_owner"], prepared["_scores"]
        for i in range(len(chunk)):
            rows = np.flatnonzero(owners == i)
            if len(rows) == 0:
                raise TrainingError(f"no face found in evaluation input {start + i}")
            out.append(vectors[rows[np.argmax(scores[rows])]])
    return np.stack(out) if out else np.zeros((0, encoder.spec.dim), np.float32)


def load_eval_data(cfg: FaceNetTrainConfig, spec: EncoderSpec, artifact: Path, data_dir: Path,
                   whole_folder: bool) -> IdentityImages:  # fmt: skip
    """The test identities of a training run (same split), or all of a folder given to ``ers eval``."""
    from models.core.registry import family_class

    family: FaceFamily = family_class(spec.family)(spec, artifact)  # type: ignore[assignment]
    cache_dir = _models_and_cache(data_dir)[1]
    size = int(spec.config["image_size"])
    if cfg.data == "face-photos":
        return load_face_photo_identities(cache_dir, face_cropper(family), size)[1]
    if cfg.data == "emoji":
        return held_out(cfg, load_emoji_identities(cache_dir, size, cfg.limit))[1]
    data = load_identity_folders(Path(cfg.data), size, face_cropper(family) if spec.config.get("detect") else None)
    # LFW's pairs name images anywhere in the folder: its protocol scores the whole folder.
    return data if whole_folder or cfg.lfw_pairs else held_out(cfg, data)[1]
