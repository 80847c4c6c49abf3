"""``ers train facenet``: triplet-loss metric learning of a face-style encoder (FaceNet).

P identities x K augmented images per step, L2-normalised embeddings, triplet loss (margin 0.2 on
squared distances) with online semi-hard (default) or batch-hard mining. Backbones: a configurable
Inception-ResNet-v1 (``models/families/face/facenet.py``; small widths for 64 px) or dlib's face ResNet
(``face-resnet``), optionally starting from a zoo artifact's weights (fine-tuning).

Data (``data``): ``emoji`` (each emoji concept an identity, Google + Twitter drawings), ``face-photos``
(the registries' sample face photos; for the fine-tuning demo) or a ``root/<identity>/<images>``
folder. Evaluation on held-out identities: verification accuracy with the 10-fold threshold of the
LFW protocol (the threshold is stored in the spec and used by ``/verify``) and recall@1 on a gallery.

With ``--compatible-with OLD --method bct|bt2|oca`` the model is trained to search OLD's vectors
(``facenet_compat``): the compatibility terms, grouped by identity, join the triplet loss.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.core.spec import EncoderSpec
from models.data.identities import AugmentConfig, augment, pk_batches
from models.losses.metric import triplet_loss
from models.training import facenet_compat as fc
from models.training import facenet_steps as fd
from models.training.checkpoint import Checkpointer, rng_state, set_rng_state
from models.training.facenet_config import FaceNetTrainConfig
from models.training.recipe import TrainingError, TrainRequest, TrainResult, register_recipe, train_teacher
from models.training.run import config_dict, parse_config, pick_device, progress_bar, seed_everything, write_card

RECIPE = "facenet"


def _lr_at(cfg: FaceNetTrainConfig, step: int, total: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 5% of ``lr``."""
    warm = max(1, total // 20)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * progress)))


def _train_loop(cfg: FaceNetTrainConfig, module: Any, train: Any, net: fd.Network, request: TrainRequest,
                device: str, compat: fc.FaceCompat | None = None) -> dict[str, Any]:  # fmt: skip
    """Train ``module`` in place with epoch checkpoints; returns the loss history. ``compat``: the
    backward-compatibility terms added to the triplet loss (``facenet_compat``)."""
    ckpt = Checkpointer(request.out / ".checkpoints" / cfg.name)
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    aug = AugmentConfig(**cfg.augment)
    batches_per_epoch = len(np.unique(train.labels)) // cfg.p
    steps = min(batches_per_epoch, cfg.max_steps_per_epoch or batches_per_epoch)
    if steps == 0:
        raise TrainingError(f"{len(np.unique(train.labels))} training identities cannot fill one batch of p={cfg.p}")
    history: list[float] = []
    start = 0
    state = ckpt.latest() if request.resume else None
    if state is not None:
        if state.get("config") != config_dict(cfg):
            raise TrainingError("--resume: the checkpoint was made with a different config; train afresh")
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        history, start = list(state["history"]), int(state["epoch"]) + 1
    crops = torch.from_numpy(train.crops).permute(0, 3, 1, 2)  # (N, 3, S, S) uint8, on the CPU
    labels = torch.from_numpy(train.labels)
    with progress_bar(cfg.epochs * steps, f"facenet {cfg.name}", request.progress) as bar:
        bar.step(start * steps)
        for epoch in range(start, cfg.epochs):
            module.train()
            # Per-epoch generators: a resumed run draws exactly the batches and views it would have.
            rng = np.random.default_rng([cfg.seed, epoch])
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            losses = []
            for i, rows in enumerate(pk_batches(train.labels, cfg.p, cfg.k, rng)):
                if i == steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(cfg, epoch * steps + i, cfg.epochs * steps)
                views = augment(crops[rows].float(), aug, gen)  # (P*K, 3, S, S) in [0, 255]
                emb = F.normalize(module(net.normalise(views.to(device))), dim=1)  # (P*K, dim)
                stats = triplet_loss(emb, labels[rows].to(device), cfg.margin, cfg.mining, cfg.squared)  # type: ignore[arg-type]
                terms = compat.terms(emb, rows) if compat is not None else {}
                loss = stats.loss + sum(terms.values()) if terms else stats.loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                parts = {k: float(v.detach()) for k, v in terms.items()}
                bar.step(loss=losses[-1], active=stats.active / max(1, stats.triplets), **parts)
            history.append(float(np.mean(losses)))
            ckpt.save(epoch, {"model": module.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
                              "history": history, "config": config_dict(cfg)})  # fmt: skip
    return {"loss_history": history, "steps_per_epoch": steps}


def recalibrate_batchnorm(module: Any, net: fd.Network, crops: np.ndarray, device: str, batch: int) -> None:
    """Recompute every BatchNorm's running statistics as a plain average over (un-augmented) training
    crops. The running averages of a short run lag the weights they describe; with them, eval-mode
    outputs can collapse onto one point although the train-mode embedding is spread."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes below
    module.train()
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()  # dropout would inflate the variance the eval-mode network never sees
    order = np.random.default_rng(0).permutation(len(crops))[: 32 * batch]
    with torch.no_grad():
        for start in range(0, len(order) - batch + 1, batch):
            x = torch.from_numpy(crops[np.sort(order[start : start + batch])]).permute(0, 3, 1, 2).float()
            module(net.normalise(x.to(device)))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    module.eval()


@register_recipe(RECIPE)
class FaceNetRecipe:
    name = RECIPE

    def train(self, request: TrainRequest) -> TrainResult:
        cfg = parse_config(FaceNetTrainConfig, request.config)
        old_spec, method = None, request.method if request.compatible_with is not None else None
        teacher = None
        if request.compatible_with is not None:
            if method is None:
                raise TrainingError("--compatible-with needs --method bct|bt2|oca")
            old_spec, cfg = fc.compat_config(cfg, request.compatible_with, method)
            if method == "bt2":  # BT² distils from an independently trained new model: trained first
                teacher = train_teacher(request, "facenet", lambda alone: self.train(alone).artifact)
        seed_everything(cfg.seed)
        device = pick_device(request.device)
        data_dir = request.data_dir or Path(".ers-data")
        began = time.monotonic()
        net = fd.network(cfg, data_dir, old_spec, fc.uses_basis(method))
        train, test = fd.load_data(cfg, net, data_dir)
        module = net.module.to(device)
        compat = None
        if old_spec is not None and request.compatible_with is not None and method is not None:
            compat = fc.prepare(cfg, old_spec, request.compatible_with, method, train, teacher, module, device)
        if cfg.pretrained is None:  # a fair untrained baseline: its BatchNorm statistics set on the data
            recalibrate_batchnorm(module, net, train.crops, device, cfg.p * cfg.k)
        before = fd.score(cfg, net, test, device)  # the untrained (or pretrained) starting point
        history = _train_loop(cfg, module, train, net, request, device, compat)
        fc.finish(module)
        recalibrate_batchnorm(module, net, train.crops, device, cfg.p * cfg.k)
        after = fd.score(cfg, net, test, device)
        threshold = after.pop("threshold", net.pretrained_threshold)
        if threshold is None:
            raise TrainingError("no verification threshold: the test set has too few identities for 10 folds")
        spec = net.final_spec(cfg, threshold)
        artifact = fd.publish(net, spec, test, request.out / spec.key)
        metrics: dict[str, Any] = {
            **after, "threshold": threshold, **{f"before_{k}": v for k, v in before.items()},
            **fd.pixel_baseline(cfg, test), "first_epoch_loss": history["loss_history"][0],
            "last_epoch_loss": history["loss_history"][-1], "epochs": cfg.epochs,
            "steps_per_epoch": history["steps_per_epoch"], "train_identities": len(train.names),
            "test_identities": len(test.names), "device": device, "train_seconds": time.monotonic() - began,
            "method": method or "independent", "evaluated_on": cfg.evaluate_on,
        }  # fmt: skip
        write_card(artifact, spec, metrics, config_dict(cfg), fd.CARD_NOTES)
        return TrainResult(artifact, metrics)

    def evaluate(self, artifact: Path, data: str | None, data_dir: Path | None) -> dict[str, Any]:
        """Score an artifact through the served encoder (ONNX, the service's preprocessing)."""
        from models.core.artifact import verify_artifact
        from models.core.registry import load_encoder

        spec: EncoderSpec = verify_artifact(artifact)
        trained = spec.config.get("training")
        if not isinstance(trained, dict):
            raise TrainingError(f"{artifact} has no facenet training config in its spec")
        cfg = parse_config(FaceNetTrainConfig, {**trained, **({"data": data} if data else {})})
        data_dir = data_dir or Path(".ers-data")
        encoder = load_encoder(artifact, backend="onnx")
        test = fd.load_eval_data(cfg, spec, artifact, data_dir, whole_folder=data is not None)
        vectors = fd.served_vectors(encoder, test.inputs)
        return {**fd.metrics_from_vectors(cfg, vectors, test), "threshold": float(spec.config["threshold"]),
                **fd.pixel_baseline(cfg, test)}  # fmt: skip
