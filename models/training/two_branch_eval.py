"""Evaluation of the two-branch model: Recall@1/5/10 in both directions, the frozen-features
nearest-neighbour baseline, and frozen EfficientNet-Lite0 features (computed once, cached).

Protocol: N evaluation items, each an image and its canonical caption. ``i2t_r@k``: for each image,
is its caption among the k most similar of all N captions (annotation). ``t2i_r@k``: for each
caption, is its image among the k most similar of all N images (image search).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.core.artifact import TORCH_FILE, sha256_file, verify_artifact
from models.core.encoder import encode
from models.core.errors import ArtifactError
from models.data.pairs import PairData, load_eval_items, load_pair_data
from models.families.two_branch import bow_features, build_vocab
from models.training.recipe import TrainingError

KS = (1, 5, 10, 20, 50)
EFFNET = "effnet-lite0@1"
CHUNK = 64


@dataclass
class EvalSet:
    images: torch.Tensor  # the image tower's training-time inputs (pixels or frozen features)
    captions: list[str]


def recall(sim: np.ndarray | torch.Tensor, prefix: str = "", per_query: bool = False) -> dict[str, Any]:
    """``sim[i, j]``: image i vs caption j, matching pairs on the diagonal. Ties count against us.

    ``per_query``: also each query's R@1 hit (``i2t_r@1_per_query``, 0/1 per item, in item order),
    so the seeds bench can bootstrap over queries and pair two rows query by query."""
    s = torch.as_tensor(sim, dtype=torch.float32)
    out: dict[str, Any] = {}
    for direction, m in (("i2t", s), ("t2i", s.T)):
        rank = (m > m.diagonal()[:, None]).sum(dim=1)  # (N,): items ranked strictly above the match
        for k in KS:
            out[f"{prefix}{direction}_r@{k}"] = round(float((rank < k).float().mean()), 4)
        if per_query:
            out[f"{prefix}{direction}_r@1_per_query"] = (rank < 1).int().tolist()
    return out


@torch.no_grad()
def embed(
    towers: tuple[torch.nn.Module, torch.nn.Module],
    image_head: Callable[[torch.Tensor], torch.Tensor],
    text_batch: Callable[[list[str]], torch.Tensor],
    data: EvalSet,
    device: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the evaluation items with the training ``towers`` (image, text) in eval mode;
    ``image_head`` runs the image tower on its training-time inputs."""
    modules = list(towers)
    text_tower = towers[1]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        starts = range(0, len(data.captions), 256)
        image = torch.cat([image_head(data.images[i : i + 256].to(device)).cpu() for i in starts])
        text = torch.cat([text_tower(text_batch(data.captions[i : i + 256])).cpu() for i in starts])
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
    return image.numpy(), text.numpy()


def effnet_backbone_state(data_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    directory = data_dir / "models" / EFFNET
    try:
        verify_artifact(directory)
    except ArtifactError as exc:
        raise TrainingError(f"{EFFNET} is needed for the effnet-mlp tower: {exc.message}") from exc
    return load_file(str(directory / TORCH_FILE))


def effnet_features(images: Sequence[bytes], data_dir: Path, progress: bool = False, what: str = "") -> np.ndarray:
    """(n, 1280) L2-normalised EfficientNet-Lite0 features of ``images``, cached by content under
    ``<data_dir>/cache/two-branch/`` (plain ``.npy``, no pickle): every run on the same images and
    the same weights reuses them."""
    from models.core.registry import load_encoder
    from models.training.run import progress_bar, training_threads
    from models.zoo import pull

    directory = data_dir / "models" / EFFNET
    pull(EFFNET, data_dir / "models", data_dir / "cache")
    digest = hashlib.sha256(sha256_file(directory / "model.onnx").encode())
    for image in images:
        digest.update(hashlib.sha256(image).digest())
    path = data_dir / "cache" / "two-branch" / f"effnet-{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    encoder = load_encoder(directory, backend="onnx", threads=training_threads())
    chunks = []
    with progress_bar(len(images), f"effnet-lite0 features ({what})", progress) as bar:
        for i in range(0, len(images), CHUNK):
            chunks.append(encode(encoder, images[i : i + CHUNK]))
            bar.step(len(images[i : i + CHUNK]))
    features = np.concatenate(chunks) if chunks else np.zeros((0, 1280), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, features, allow_pickle=False)
    tmp.replace(path)
    return features


def match_captions(queries: list[str], data: PairData) -> np.ndarray:
    """For each query caption, the training item it names: an exact caption match, else the item
    whose captions share the most words (bag-of-words cosine)."""
    exact: dict[str, int] = {}
    for i, item in enumerate(data.train):
        for c in item.captions:
            exact.setdefault(c.strip().lower(), i)
    vocab = {w: i for i, w in enumerate(build_vocab((c for it in data.train for c in it.captions), 20000))}
    docs = bow_features([" ".join(it.captions) for it in data.train], vocab)
    docs /= np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(queries), dtype=np.int64)
    for row, q in enumerate(queries):
        if q.strip().lower() in exact:
            out[row] = exact[q.strip().lower()]
        else:
            out[row] = int(np.argmax(docs @ bow_features([q], vocab)[0]))
    return out


def frozen_nn_recall(
    data: PairData, data_dir: Path, progress: bool, whiten: tuple[int, float] | None = None
) -> dict[str, Any]:
    """The baseline with no joint space: an image is compared with a caption through the training
    image that caption names (frozen EfficientNet-Lite0 cosine). For the emoji protocol this is
    cross-style image retrieval: Twitter drawing vs the Google drawing paired with the caption.

    ``whiten=(dims, power)``: the same in the centred, PCA-projected, power-whitened space fitted on
    the training drawings (the two-branch head's starting point, with no training at all)."""
    train = effnet_features([it.image for it in data.train], data_dir, progress, "train, baseline")
    evaluation = effnet_features([it.image for it in data.eval], data_dir, progress, "eval, baseline")
    prefix = "frozen_nn_"
    if whiten is not None:
        from models.training.two_branch_init import whiten_linear

        head = torch.nn.Linear(train.shape[1], whiten[0])
        whiten_linear(head, torch.from_numpy(train), whiten[1])
        with torch.no_grad():
            train, evaluation = (torch.nn.functional.normalize(head(torch.from_numpy(x)), dim=1).numpy()
                                 for x in (train, evaluation))  # fmt: skip
        prefix = "whitened_nn_"
    named = train[match_captions([it.captions[0] for it in data.eval], data)]  # (N, F): caption j -> image
    return recall(evaluation @ named.T, prefix=prefix, per_query=True)


def _encode_all(encoder: Any, inputs: Sequence[Any]) -> np.ndarray:
    return np.concatenate([encode(encoder, inputs[i : i + CHUNK]) for i in range(0, len(inputs), CHUNK)])


def evaluate_artifact(artifact: Path, data: str | None, data_dir: Path) -> dict[str, Any]:
    """Recall@K of a published model (either tower's artifact; its sibling is found through
    ``spec.config["towers"]``), run through ``load_encoder`` as the service runs it."""
    from models.core.registry import load_encoder

    spec = verify_artifact(artifact)
    towers = spec.config.get("towers")
    if not isinstance(towers, dict) or not {"image", "text"} <= towers.keys():
        raise TrainingError(f"{artifact}: not a two-branch tower (spec.config has no image/text towers)")
    image = load_encoder(artifact.parent / towers["image"], backend="onnx")
    text = load_encoder(artifact.parent / towers["text"], backend="onnx")
    trained_on = spec.config.get("data", {})
    source = data or trained_on.get("eval_source") or ("emoji-twitter" if trained_on.get("source") == "emoji" else None)
    if data is None and trained_on.get("source") == "emoji":  # the run's own evaluation items, split as trained
        held = load_pair_data("emoji", data_dir / "cache", trained_on.get("limit"), trained_on.get("eval_source"), 0.1,
                              0, trained_on.get("holdout_concepts", 0.0), trained_on.get("split_seed", 0),
                              trained_on.get("eval_split", "all"))  # fmt: skip
        items = held.eval
        if trained_on.get("holdout_concepts") or trained_on.get("eval_split", "all") != "all":
            source = held.description  # which concepts and which half, not just the style
    elif source is None:  # a CSV with a held-out split: the same seeded split again
        items = load_pair_data(trained_on["source"], data_dir / "cache", trained_on.get("limit"), None,
                               trained_on.get("eval_fraction", 0.1), int(spec.config.get("seed", 0))).eval  # fmt: skip
        source = f"{trained_on['source']} (held out)"
    else:
        limit = trained_on.get("limit") if source.startswith("emoji") else None
        items = load_eval_items(source, data_dir / "cache", limit)
    sim = _encode_all(image, [it.image for it in items]) @ _encode_all(text, [it.captions[0] for it in items]).T
    return {**recall(sim), "items": len(items), "data": source}
