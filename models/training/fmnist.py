"""``ers train fmnist``: the Fashion-MNIST CNN, independently or backward-compatible with an old model.

Data: Fashion-MNIST train split restricted to ``classes`` (the old model of the BT² protocol sees 5
classes, the new one all 10), optionally ``train_per_class`` images per class to fit a small CPU;
metrics on the test split (query = gallery, leave-self-out, cosine). With ``--compatible-with OLD
--method bct|bt2|oca`` the new model is trained with the compat objective (models/compat), its spec
says ``compatible_with: OLD's name@version`` and ``compat_dims: OLD's dim``, and the compatibility
report against OLD goes into its card. BT² also needs an independently trained new model: config
``teacher`` names one, else the recipe first trains it (``<name>-independent``) with the same config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.compat.heads import bake, embedding_dim, wrap_for_compat
from models.compat.objective import CompatObjective, CompatWeights, prepare_targets, save_classifier
from models.compat.report import compatibility_report, cross_test, embed
from models.core.encoder import Encoder
from models.core.errors import ModelError
from models.core.spec import EncoderSpec, split_key
from models.data.fashion_mnist import CLASSES, LICENSE, FashionMNIST, load_fashion_mnist
from models.losses.compat import alignment_loss
from models.training.checkpoint import Checkpointer, rng_state, set_rng_state
from models.training.fmnist_anchor import perturbed_views
from models.training.recipe import TrainingError, TrainRequest, TrainResult, register_recipe, train_teacher
from models.training.run import batches, parse_config, pick_device, progress_bar, seed_everything, write_card


@dataclass
class FmnistConfig:
    name: str = "fmnist"
    version: str | None = None  # default: "1", or the old model's version + 1 when compatible
    classes: list[int] = field(default_factory=lambda: list(range(10)))
    dim: int = 128  # embedding width of an independent model (a compatible one: old dim [+ d_extra])
    d_extra: int = 32  # BT²/OCA extra dimensions
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    train_per_class: int | None = None  # at most this many training images per class (seeded sample)
    val_per_class: int = 0  # held out of training: the fixed validation split (validation_indices)
    eval_items: int | None = None  # test items for metrics and the report (evenly spread; None: all)
    seed: int = 0
    teacher: str | None = None  # BT²: artifact of an independently trained new model
    influence: float = 1.0  # BCT's influence loss (the frozen old classifier on the compatible prefix)
    align: float = 50.0  # BT²/OCA: 1 - cos(prefix, old feature / old prototype); weak values let it drift
    distill: float = 1.0  # BT²: relational distillation towards the independent model
    feature: float = 0.0  # OCA: also cosine to the old feature of the same item
    anchor: float = 0.0  # cosine to the old feature on perturbed copies of the images (fmnist_anchor)
    anchor_views: int = 1  # perturbed copies per training image
    root_feature: float = 0.0  # chains: cosine of the first dims to the chain's first model's feature (CoReS)
    scale: float = 16.0  # cosine-softmax temperature of the new and the (frozen) old classifier
    warm_start: bool = True  # a compatible model starts from the old CNN (same channels needed)
    freeze_stages: int = 0  # warm start: the first conv stages (weights and BN statistics) stay the old model's
    basis: bool = True  # BT²/OCA: the orthogonal basis after the extra dims (false: the ablation without it)


def _subset(labels: np.ndarray, classes: list[int], per_class: int | None, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            raise TrainingError(f"class {c} has no images")
        chosen.append(rng.permutation(members)[:per_class] if per_class else members)
    return np.sort(np.concatenate(chosen))


VALIDATION_SEED = 20261207  # not a model seed: every model of a sweep holds out the same images


def validation_indices(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Training-split indexes of the validation images: ``per_class`` of every class, the same for
    every model seed, so hyper-parameters are chosen on images no compared model trained on."""
    if per_class <= 0:
        return np.zeros(0, dtype=np.int64)
    return _subset(labels, sorted(set(labels.tolist())), per_class, VALIDATION_SEED)


def training_indices(labels: np.ndarray, classes: list[int], per_class: int | None, val_per_class: int,
                     seed: int) -> np.ndarray:  # fmt: skip
    """Training-split indexes a model trains on: ``classes``' images outside the validation split, at
    most ``per_class`` of each (a seeded sample)."""
    pool = np.setdiff1d(np.arange(len(labels)), validation_indices(labels, val_per_class))
    return pool[_subset(labels[pool], classes, per_class, seed)]


def eval_split(data: FashionMNIST, items: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The test split, or ``items`` of it evenly spread (every class stays represented)."""
    n = len(data.test_labels)
    keep = np.arange(n) if not items or items >= n else np.linspace(0, n - 1, items).astype(np.int64)
    return data.test_images[keep], data.test_labels[keep]


def _version(cfg: FmnistConfig, old: EncoderSpec | None) -> str:
    if cfg.version is not None:
        return cfg.version
    if old is not None and old.name == cfg.name and old.version.isdigit():
        return str(int(old.version) + 1)
    return "1"


def _chain_root(old_path: Path) -> Path | None:
    """The first model of OLD's compatibility chain (artifacts of a chain lie side by side), or None when
    OLD is that first model."""
    path = old_path
    try:
        spec = EncoderSpec.load(path)
        while spec.compatible_with:
            path = old_path.parent / spec.compatible_with
            spec = EncoderSpec.load(path)
    except ModelError as exc:
        raise TrainingError(f"root_feature: {exc.message} (a chain's artifacts must lie side by side)") from exc
    return None if path == old_path else path


def _load(path: Path) -> Encoder:
    from models.core.registry import load_encoder

    try:
        return load_encoder(path)
    except ModelError as exc:
        raise TrainingError(f"cannot load {path}: {exc.message}") from exc


def _warm_start(cnn: Any, old: EncoderSpec, artifact: Path, channels: list[int]) -> None:
    from safetensors.torch import load_file

    from models.core.artifact import TORCH_FILE
    from models.families.fmnist_cnn import plain_state, warm_start

    if old.family != "fmnist-cnn" or list(old.config.get("channels", [])) != list(channels):
        raise TrainingError(f"warm_start needs an old fmnist-cnn with channels {channels}; {old.key} is "
                            f"{old.family} {old.config.get('channels')} (set warm_start: false)")  # fmt: skip
    try:
        warm_start(cnn, plain_state(load_file(str(artifact / TORCH_FILE))))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot warm-start from {old.key}: {exc}") from exc


def _freeze(cnn: Any, stages: int) -> Any:
    """Fix the first ``stages`` conv stages (4 modules each: conv, BN, ReLU, pool); returns them as one
    module so the train loop can keep their BN layers in eval mode."""
    from torch import nn

    if not 0 <= stages <= len(cnn.features) // 4:
        raise TrainingError(f"freeze_stages must lie in 0..{len(cnn.features) // 4}, got {stages}")
    frozen = nn.Sequential(*list(cnn.features)[: 4 * stages])
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


@register_recipe("fmnist")
class FmnistRecipe:
    name = "fmnist"

    def train(self, request: TrainRequest) -> TrainResult:
        import torch

        from models.core.export import write_artifact
        from models.families.fmnist_cnn import FmnistCNN, FmnistCNNConfig, FmnistCNNFamily

        cfg = parse_config(FmnistConfig, request.config)
        if request.data_dir is None:
            raise TrainingError("fmnist needs a data dir (--data-dir) to cache Fashion-MNIST")
        if not cfg.basis and (request.compatible_with is None or request.method not in ("bt2", "oca")):
            raise TrainingError("basis: false drops BT²/OCA's orthogonal basis: it needs --compatible-with OLD "
                                "--method bt2|oca")  # fmt: skip
        if not cfg.classes or not set(cfg.classes) <= set(range(10)):
            raise TrainingError(f"classes must be a non-empty subset of 0..9, got {cfg.classes}")
        device = pick_device(request.device)
        seed_everything(cfg.seed)
        data = load_fashion_mnist(request.data_dir / "cache")
        classes = sorted(set(cfg.classes))
        train_idx = training_indices(data.train_labels, classes, cfg.train_per_class, cfg.val_per_class, cfg.seed)
        images = data.train_images[train_idx]  # (N, 28, 28) uint8
        labels = np.searchsorted(classes, data.train_labels[train_idx])  # (N,) class index

        old: Encoder | None = None
        anchor_x: torch.Tensor | None = None
        anchor_y: torch.Tensor | None = None
        root_y: torch.Tensor | None = None  # (N, d_root) the chain's first model's features of the images
        method = request.method if request.compatible_with is not None else None
        targets = None
        dim = cfg.dim
        if request.compatible_with is not None:
            old = _load(request.compatible_with)
            teacher = None
            if cfg.teacher and request.teacher:
                raise TrainingError("name BT²'s teacher once: the config's teacher or --teacher, not both")
            # the config's teacher is --teacher spelled in YAML: one path (train_teacher), refused unless bt2
            taught = dataclasses.replace(request, teacher=Path(cfg.teacher)) if cfg.teacher else request
            if method == "bt2":
                teacher = train_teacher(taught, "fmnist", lambda alone: self.train(alone).artifact)
            targets = prepare_targets(old, images, labels, len(classes), teacher, request.compatible_with, classes)
            if cfg.anchor:
                views = perturbed_views(images, cfg.anchor_views, cfg.seed)  # (M, 28, 28)
                anchor_x = torch.from_numpy(FmnistCNNFamily.pixels_of(views))  # (M, 1, 28, 28)
                anchor_y = torch.nn.functional.normalize(torch.from_numpy(embed(old, views)), dim=1)  # (M, d_old)
            root = _chain_root(request.compatible_with) if cfg.root_feature else None
            if root is not None:  # a stationary target: later steps' drift cannot pile up (CoReS)
                root_y = torch.nn.functional.normalize(torch.from_numpy(embed(_load(root), images)), dim=1)
            dim = embedding_dim(method, old.spec.dim, cfg.d_extra)
        version = _version(cfg, old.spec if old else None)
        key = f"{cfg.name}@{version}"
        split_key(key)
        if old is not None and old.spec.key == key:
            raise TrainingError(f"the new model would reuse the old key {key}; set a different version")

        cnn = FmnistCNN(FmnistCNNConfig(channels=tuple(cfg.channels), dim=dim))
        if old is not None and request.compatible_with is not None and cfg.warm_start:
            _warm_start(cnn, old.spec, request.compatible_with, cfg.channels)
        frozen = _freeze(cnn, cfg.freeze_stages if old is not None and cfg.warm_start else 0)
        model = wrap_for_compat(cnn, method, dim, cfg.basis).to(device)
        weights = CompatWeights(influence=cfg.influence, align=cfg.align, distill=cfg.distill, feature=cfg.feature,
                                scale=cfg.scale)  # fmt: skip
        objective = CompatObjective(method, len(classes), dim, targets.to(device) if targets else None, weights)
        objective.to(device)
        params = [p for p in model.parameters() if p.requires_grad] + list(objective.parameters())
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = max(1, len(images) // cfg.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
        checkpoints = Checkpointer(request.out / ".checkpoints" / key)
        start = 0
        if request.resume and (state := checkpoints.latest()) is not None:
            model.load_state_dict(state["model"])
            objective.load_state_dict(state["objective"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            start = int(state["epoch"]) + 1
        pixels = torch.from_numpy(FmnistCNNFamily.pixels_of(images))  # (N, 1, 28, 28)
        y_all = torch.from_numpy(labels)
        history: list[float] = []
        with progress_bar((cfg.epochs - start) * steps_per_epoch, f"fmnist {key} {method or 'independent'}",
                          request.progress) as bar:  # fmt: skip
            for epoch in range(start, cfg.epochs):
                model.train()
                frozen.eval()  # frozen stages keep the old BN statistics too
                rng = np.random.default_rng(cfg.seed * 1000 + epoch)
                total = 0.0
                for idx in batches(len(images), cfg.batch_size, rng):
                    index = torch.from_numpy(idx)
                    x = pixels[index].to(device)
                    z = model(x)  # (B, dim)
                    loss, parts = objective(z, y_all[index].to(device), index.to(device))
                    if root_y is not None:
                        term = cfg.root_feature * alignment_loss(z[:, : root_y.shape[1]], root_y[index].to(device))
                        loss, parts = loss + term, {**parts, "root": float(term.detach())}
                    if anchor_x is not None and anchor_y is not None:
                        pick = torch.from_numpy(rng.integers(0, len(anchor_x), len(idx)))
                        prefix = model(anchor_x[pick].to(device))[:, : anchor_y.shape[1]]  # (B, d_old)
                        term = cfg.anchor * alignment_loss(prefix, anchor_y[pick].to(device))
                        loss, parts = loss + term, {**parts, "anchor": float(term.detach())}
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    total += float(loss.detach())
                    bar.step(loss=float(loss.detach()), **parts)
                history.append(total / steps_per_epoch)
                checkpoints.save(epoch, {
                    "model": model.state_dict(), "objective": objective.state_dict(), "rng": rng_state(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                })  # fmt: skip

        model = bake(model.cpu().eval())
        basis = model.basis is not None
        spec = EncoderSpec(
            name=cfg.name, version=version, family="fmnist-cnn", modality="image", dim=dim, metric="cosine",
            compatible_with=old.spec.key if old else None, compat_dims=old.spec.dim if old else None,
            config={"recipe": self.name, "channels": list(cfg.channels), "dim": dim, "basis": basis,
                    "classes": classes, "method": method or "independent"},
            description=f"Fashion-MNIST CNN trained on classes {classes}"
            + (f", {method.upper()}-compatible with {old.spec.key}" if old and method else ""),
            source="ers train fmnist", license=f"trained on Fashion-MNIST, {LICENSE}",
        )  # fmt: skip
        served = model if basis else model.backbone
        artifact = request.out / key
        write_artifact(FmnistCNNFamily(spec), served, artifact)
        save_classifier(artifact, objective.classifier, classes)
        metrics: dict[str, Any] = {"train_items": len(images), "epochs": cfg.epochs,
                                   "final_loss": history[-1] if history else math.nan}  # fmt: skip
        notes = ""
        new = _load(artifact)
        test_x, test_y = eval_split(data, cfg.eval_items)
        test_vectors = embed(new, test_x)
        scores = cross_test(test_vectors, test_y, test_vectors, test_y, leave_self_out=True)
        metrics.update({f"test_{k}": v for k, v in scores.items()})
        if old is not None:
            report = compatibility_report(old, new, test_x, test_y)
            metrics["compatibility"] = report.to_json()
            notes = report.markdown()
        write_card(artifact, spec, metrics, dataclasses.asdict(cfg), notes)
        return TrainResult(artifact=artifact, metrics=metrics)

    def evaluate(self, artifact: Path, data: str | None, data_dir: Path | None) -> dict[str, Any]:
        """Test-split retrieval; for a compatible model also the report against its old model
        (looked up beside it, ``<models dir>/<compatible_with>``). ``data``: number of test items."""
        from models.core.artifact import verify_artifact

        if data_dir is None:
            raise TrainingError("fmnist evaluation needs a data dir (--data-dir)")
        try:
            items = int(data) if data else None
        except ValueError as exc:
            raise TrainingError(f"--data for fmnist is a number of test items, got '{data}'") from exc
        spec = verify_artifact(artifact)
        dataset = load_fashion_mnist(data_dir / "cache")
        test_x, test_y = eval_split(dataset, items)
        new = _load(artifact)
        vectors = embed(new, test_x)
        metrics: dict[str, Any] = {f"test_{k}": v for k, v in cross_test(vectors, test_y, vectors, test_y,
                                                                          leave_self_out=True).items()}  # fmt: skip
        metrics["classes"] = [CLASSES[c] for c in spec.config.get("classes", [])]
        if spec.compatible_with and (artifact.parent / spec.compatible_with).is_dir():
            report = compatibility_report(_load(artifact.parent / spec.compatible_with), new, test_x, test_y)
            metrics["compatibility"] = report.to_json()
        return metrics
