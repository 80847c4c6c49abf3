"""``ers train two-branch``: the two-branch image–text model (``models.families.two_branch``) trained with the
bidirectional ranking loss (``models.losses.ranking``) on image–caption pairs (``pairs``).

Publishes two artifacts into the models directory ``--out``: ``<name>-image@<version>`` and
``<name>-text@<version>``, each naming both in ``spec.config["towers"]`` so a collection bound to
the image tower answers text queries. Evaluation: Recall@1/5/10 image→text and text→image, beside
an untrained model and a frozen-features nearest-neighbour baseline (``two_branch_eval``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.core.errors import ArtifactError
from models.core.export import write_artifact
from models.core.spec import EncoderSpec
from models.data.pairs import PairItem, load_pair_data
from models.families.two_branch import TwoBranchConfig, TwoBranchImageFamily, TwoBranchTextFamily, build_vocab
from models.losses.ranking import RankingLossConfig, ranking_loss
from models.training import tower_compat as tc
from models.training.checkpoint import Checkpointer, rng_state, set_rng_state
from models.training.recipe import TrainingError, TrainRequest, TrainResult, register_recipe, train_teacher
from models.training.run import (
    batches,
    parse_config,
    pick_device,
    progress_bar,
    seed_everything,
    training_threads,
    write_card,
)
from models.training.two_branch_eval import (
    EvalSet,
    effnet_backbone_state,
    effnet_features,
    embed,
    evaluate_artifact,
    frozen_nn_recall,
    recall,
)
from models.training.two_branch_init import whiten_linear

RECIPE = "two-branch"
BASELINES = ("untrained", "frozen-nn", "whitened-nn")


@dataclass(frozen=True)
class DataConfig:
    source: str = "emoji"  # "emoji", or a CSV of image_path,caption
    limit: int | None = None  # emoji: that many concepts, evenly spread; CSV: the first N images
    eval_source: str | None = None  # default: emoji-twitter for emoji, a held-out fraction for a CSV
    eval_fraction: float = 0.1
    holdout_concepts: float = 0.0  # emoji: evaluate on this fraction of concepts, never trained on
    split_seed: int = 0  # draws the held-out concepts; fixed while the training seed varies
    # emoji: "val" scores the odd-numbered evaluation items (where settings are chosen), "test" the
    # even-numbered ones (reported once), "all" both
    eval_split: str = "all"


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: bool = True  # cnn: random scale and shift of the training images
    # effnet-mlp: Gaussian noise of this norm added to the unit-length frozen features, so the head
    # does not fit the exact features of one drawing style (the evaluation images are another style)
    feature_noise: float = 0.0
    # effnet-mlp with a linear head: "whiten" starts the head at the centred, PCA-projected,
    # partly whitened frozen features (two_branch_init); "random" is PyTorch's default init
    image_init: str = "random"
    whiten_power: float = 0.5  # 0: PCA projection only, 1: full whitening
    image_lr: float | None = None  # the image head's learning rate (default: lr)

    def __post_init__(self) -> None:
        if self.image_init not in ("random", "whiten"):
            raise ValueError(f"image_init must be 'random' or 'whiten', got '{self.image_init}'")


@dataclass(frozen=True)
class TwoBranchRecipeConfig:
    name: str = "emoji2b"
    version: str = "1"
    seed: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    baselines: list[str] = field(default_factory=lambda: ["untrained"])
    compat: dict[str, Any] = field(default_factory=dict)  # with --compatible-with: tower_compat.CompatSettings


def parse(config: dict[str, Any]) -> tuple[TwoBranchRecipeConfig, DataConfig, TwoBranchConfig, RankingLossConfig,
                                            OptimConfig]:  # fmt: skip
    top = parse_config(TwoBranchRecipeConfig, config)
    unknown = sorted(set(top.baselines) - set(BASELINES))
    if unknown:
        raise TrainingError(f"unknown baselines {unknown}; known: {list(BASELINES)}")
    try:
        return (top, parse_config(DataConfig, top.data), parse_config(TwoBranchConfig, top.model),
                parse_config(RankingLossConfig, top.loss), parse_config(OptimConfig, top.train))  # fmt: skip
    except ValueError as exc:
        raise TrainingError(f"bad two-branch config: {exc}") from exc


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random scale (0.85-1.1) and shift (±10%) per image; the border is the white background."""
    n = pixels.shape[0]
    scale = 0.85 + 0.25 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = 1.0 / scale, 1.0 / scale, shift
    grid = F.affine_grid(theta.to(pixels.device), list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, padding_mode="border", align_corners=False)


class Trainer:
    """One run: data, towers, optimiser; ``epoch()`` trains one pass over the training items."""

    def __init__(self, request: TrainRequest) -> None:
        self.request = request
        self.top, self.data_cfg, self.model_cfg, self.loss_cfg, self.optim = parse(request.config)
        self.device = pick_device(request.device)
        self.data_dir = request.data_dir or Path(".ers-data")
        self.old: EncoderSpec | None = None  # the old image tower a compatible model searches
        self.compat: tc.TowerCompat | None = None
        teacher, settings, method = None, None, request.method
        if request.compatible_with is not None:
            if method is None:
                raise TrainingError("--compatible-with needs --method bct|bt2|oca")
            new_key = f"{self.top.name}-image@{self.top.version}"
            self.old, dim, settings = tc.compatible_width(self.top.compat, request.compatible_with, method, new_key)
            self.model_cfg = dataclasses.replace(self.model_cfg, dim=dim)
            if method == "bt2":  # BT² distils from an independently trained new model: trained first
                teacher = train_teacher(request, "emoji2b", lambda alone: TwoBranchRecipe().train(alone).artifact)
        elif self.top.compat:
            raise TrainingError("the config's compat section needs --compatible-with and --method")
        seed_everything(self.top.seed)
        d = self.data_cfg
        self.data = load_pair_data(d.source, self.data_dir / "cache", d.limit, d.eval_source, d.eval_fraction,
                                   self.top.seed, d.holdout_concepts, d.split_seed, d.eval_split)  # fmt: skip
        if len(self.data.train) < 2:
            raise TrainingError("two-branch training needs at least 2 image–caption pairs")
        captions = [c for item in self.data.train for c in item.captions]
        needs_vocab = self.model_cfg.text_tower in ("bow", "gru")
        vocab = build_vocab(captions, self.model_cfg.vocab_size) if needs_vocab else []
        self.image_family, self.text_family = self._families(vocab)
        self.image_tower = self.image_family.build_module()
        self.text_tower = self.text_family.build_module()
        if self.model_cfg.image_tower == "effnet-mlp":  # the frozen backbone gets ImageNet weights
            backbone: Any = self.image_tower.backbone
            backbone.load_state_dict(effnet_backbone_state(self.data_dir), strict=True)
        self.image_inputs = self._image_inputs(self.data.train, "train")
        self.eval = EvalSet(self._image_inputs(self.data.eval, "eval"), [it.captions[0] for it in self.data.eval])
        if self.optim.image_init == "whiten":
            self._whiten_head()
        self.image_tower.to(self.device)
        self.text_tower.to(self.device)
        if self.old is not None and settings is not None and method is not None and request.compatible_with:
            images = [it.image for it in self.data.train]  # each pair its own class
            self.compat = tc.prepare(self.old, request.compatible_with, method, images, np.arange(len(images)),
                                     self.model_cfg.dim, settings, teacher, self.device)  # fmt: skip
        o = self.optim
        groups = [{"params": [p for p in self.image_tower.parameters() if p.requires_grad],
                   "lr": o.lr if o.image_lr is None else o.image_lr},
                  {"params": list(self.text_tower.parameters()), "lr": o.lr}]  # fmt: skip
        if self.compat is not None and self.compat.parameters():
            groups.append({"params": self.compat.parameters(), "lr": o.lr})
        self.optimizer = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
        self.rng = np.random.default_rng(self.top.seed)
        self.generator = torch.Generator().manual_seed(self.top.seed)
        self.history: list[float] = []

    def _whiten_head(self) -> None:
        if self.model_cfg.image_tower != "effnet-mlp" or self.model_cfg.image_hidden != 0:
            raise TrainingError("image_init: whiten needs the effnet-mlp image tower with a linear head "
                                "(image_hidden: 0)")  # fmt: skip
        tower: Any = self.image_tower
        whiten_linear(tower.mlp[-1], self.image_inputs, self.optim.whiten_power)

    def _families(self, vocab: list[str]) -> tuple[TwoBranchImageFamily, TwoBranchTextFamily]:
        top, m = self.top, self.model_cfg
        towers = {"image": f"{top.name}-image@{top.version}", "text": f"{top.name}-text@{top.version}"}
        data = {**asdict(self.data_cfg), "source": self._absolute(self.data_cfg.source),
                "eval_source": self._absolute(self.data_cfg.eval_source)}  # fmt: skip
        common = {"recipe": RECIPE, "towers": towers, "model": m.to_dict(), "data": data, "seed": top.seed}
        old = self.old
        if old is not None:  # both towers search the old image tower's vectors on their first old.dim dims
            common.update({"compatible_tower": "image", "method": self.request.method})
        old_key, old_dim = (old.key, old.dim) if old else (None, None)
        image_extra: dict[str, Any] = {}
        if m.image_tower == "effnet-mlp":
            image_extra = {k: v for k, v in self._effnet_spec().config.items()}
        described = f"two-branch image–text model ({m.image_tower} image tower, {m.text_tower} text tower)"
        image = EncoderSpec(f"{top.name}-image", top.version, "two-branch-image", "image", m.dim, "cosine",
                            config={**image_extra, **common}, description=f"image tower of the {described}",
                            source=f"ers train two-branch on {self.data.description}", compatible_with=old_key,
                            compat_dims=old_dim)  # fmt: skip
        text = EncoderSpec(f"{top.name}-text", top.version, "two-branch-text", "text", m.dim, "cosine",
                           config={**common, "vocab": vocab}, description=f"text tower of the {described}",
                           source=f"ers train two-branch on {self.data.description}", compatible_with=old_key,
                           compat_dims=old_dim)  # fmt: skip
        return TwoBranchImageFamily(image), TwoBranchTextFamily(text)

    @staticmethod
    def _absolute(source: str | None) -> str | None:
        return str(Path(source).resolve()) if source and Path(source).is_file() else source

    def _effnet_spec(self) -> EncoderSpec:
        from models.core.artifact import verify_artifact
        from models.zoo import pull

        try:
            pull("effnet-lite0", self.data_dir / "models", self.data_dir / "cache")
            return verify_artifact(self.data_dir / "models" / "effnet-lite0@1")
        except ArtifactError as exc:
            raise TrainingError(f"the effnet-mlp image tower needs effnet-lite0@1: {exc.message}") from exc

    def _image_inputs(self, items: list[PairItem], what: str) -> torch.Tensor:
        """cnn: preprocessed pixels; effnet-mlp: L2-normalised frozen features (computed once, cached)."""
        images = [it.image for it in items]
        if self.model_cfg.image_tower == "effnet-mlp":
            features = effnet_features(images, self.data_dir, progress=self.request.progress, what=what)
            return torch.from_numpy(features)
        pixels = np.concatenate([self.image_family.preprocess(images[i : i + 256])["pixels"]
                                 for i in range(0, len(images), 256)])  # fmt: skip
        return torch.from_numpy(pixels)

    def image_head(self, inputs: torch.Tensor) -> torch.Tensor:
        tower: Any = self.image_tower
        return tower.head(inputs) if self.model_cfg.image_tower == "effnet-mlp" else tower(inputs)

    def text_batch(self, texts: list[str]) -> torch.Tensor:
        (value,) = self.text_family.preprocess(texts).values()
        return torch.from_numpy(value).to(self.device)

    @property
    def steps_per_epoch(self) -> int:
        n, size = len(self.data.train), min(self.optim.batch_size, len(self.data.train))
        return n // size

    def epoch(self, bar: Any) -> float:
        self.image_tower.train()
        self.text_tower.train()
        losses = []
        size = min(self.optim.batch_size, len(self.data.train))
        for idx in batches(len(self.data.train), size, self.rng):
            items = [self.data.train[int(i)] for i in idx]
            texts = [it.captions[int(self.rng.integers(len(it.captions)))] for it in items]
            images = self.image_inputs[torch.from_numpy(idx)]
            if self.model_cfg.image_tower == "cnn" and self.optim.augment:
                images = augment(images, self.generator)
            elif self.model_cfg.image_tower == "effnet-mlp" and self.optim.feature_noise > 0:
                noise = torch.randn(images.shape, generator=self.generator)
                images = F.normalize(images + noise * (self.optim.feature_noise / images.shape[1] ** 0.5), dim=-1)
            image_z = self.image_head(images.to(self.device))  # (B, dim)
            text_z = self.text_tower(self.text_batch(texts))  # (B, dim)
            terms: dict[str, torch.Tensor] = {}
            if self.compat is not None:
                image_z, text_z = self.compat.mix(image_z, text_z)
                terms = self.compat.terms(image_z, text_z, idx, idx)
            loss, parts = ranking_loss(image_z, text_z, self.loss_cfg)
            if terms:
                loss = loss + torch.stack(list(terms.values())).sum()
                parts = {**parts, **{k: float(v.detach()) for k, v in terms.items()}}
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
            bar.step(loss=losses[-1], **parts)
        self.history.append(float(np.mean(losses)))
        return self.history[-1]

    def evaluate(self) -> dict[str, Any]:
        towers = (self.image_tower, self.text_tower)
        image, text = embed(towers, self.image_head, self.text_batch, self.eval, self.device)
        return recall(image @ text.T, per_query=True)

    def state(self) -> dict[str, Any]:
        return {"image": self.image_tower.state_dict(), "text": self.text_tower.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": rng_state(), "loader": self.rng.bit_generator.state,
                "augment": self.generator.get_state(), "history": self.history,
                "config": self.request.config,
                "bases": [] if self.compat is None else [b.state_dict() for b in (self.compat.gallery_basis,
                                                                                  self.compat.query_basis) if b],
                # dropout on a GPU draws from CUDA's generators, which rng_state() leaves out
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device == "cuda" else []}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> int:
        if state.get("config") != self.request.config:
            raise TrainingError("the checkpoint was made with a different config; resume with the same one")
        self.image_tower.load_state_dict(state["image"])
        self.text_tower.load_state_dict(state["text"])
        if self.compat is not None:
            bases = [b for b in (self.compat.gallery_basis, self.compat.query_basis) if b is not None]
            for basis, saved in zip(bases, state.get("bases", []), strict=True):
                basis.load_state_dict(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.rng.bit_generator.state = state["loader"]
        self.generator.set_state(state["augment"])
        if self.device == "cuda" and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(list(state["cuda_rng"]))
        self.history = list(state["history"])
        return int(state["epoch"])


def fit(request: TrainRequest) -> tuple[Trainer, dict[str, Any]]:
    """Train (or resume) to the configured epoch, checkpointing each epoch; the trainer and its metrics."""
    torch.set_num_threads(training_threads())
    started = time.perf_counter()
    t = Trainer(request)
    checkpoints = Checkpointer(request.out / ".checkpoints" / t.top.name)
    metrics: dict[str, Any] = {}
    if "untrained" in t.top.baselines:
        metrics.update({f"untrained_{k}": v for k, v in t.evaluate().items()})
    first_epoch = 0
    if request.resume:
        state = checkpoints.latest()
        if state is None:
            raise TrainingError(f"nothing to resume: no checkpoint in {checkpoints.directory}")
        first_epoch = t.restore(state)
    epochs = t.optim.epochs
    steps = (epochs - first_epoch) * t.steps_per_epoch
    with progress_bar(steps, f"two-branch {t.top.name}", request.progress) as bar:
        for epoch in range(first_epoch, epochs):
            t.epoch(bar)
            checkpoints.save(epoch + 1, t.state())
    if t.compat is not None:
        t.compat.fold(t.image_tower, t.text_tower)  # the published towers are plain two-branch towers
    metrics.update(t.evaluate())
    if "frozen-nn" in t.top.baselines:
        metrics.update(frozen_nn_recall(t.data, t.data_dir, request.progress))
    if "whitened-nn" in t.top.baselines:
        power = t.optim.whiten_power
        metrics.update(frozen_nn_recall(t.data, t.data_dir, request.progress, whiten=(t.model_cfg.dim, power)))
    metrics.update({"epochs": epochs, "steps": epochs * t.steps_per_epoch, "train_items": len(t.data.train),
                    "eval_items": len(t.data.eval), "loss_first_epoch": t.history[0] if t.history else None,
                    "loss_last_epoch": t.history[-1] if t.history else None, "loss_history": t.history,
                    "device": t.device, "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
    return t, metrics


def publish(t: Trainer, request: TrainRequest, metrics: dict[str, Any]) -> TrainResult:
    """Both towers as artifacts in the models directory ``request.out``, with metrics and model card."""
    artifacts = {}
    notes = (f"Trained on {t.data.description}. Recall@K on the evaluation items: `i2t_*` ranks every caption "
             "for each image, `t2i_*` every image for each caption; `untrained_*`, `frozen_nn_*` and "
             "`whitened_nn_*` are the baselines.")  # fmt: skip
    for family, module in ((t.image_family, t.image_tower), (t.text_family, t.text_tower)):
        destination = request.out / family.spec.key
        spec = write_artifact(family, module.cpu().eval(), destination)
        write_card(destination, spec, metrics, request.config, notes)
        artifacts[family.spec.key] = destination
    return TrainResult(artifacts[t.image_family.spec.key], metrics)


@register_recipe(RECIPE)
class TwoBranchRecipe:
    name = RECIPE

    def train(self, request: TrainRequest) -> TrainResult:
        trainer, metrics = fit(request)
        return publish(trainer, request, metrics)

    def evaluate(self, artifact: Path, data: str | None, data_dir: Path | None) -> dict[str, Any]:
        return evaluate_artifact(artifact, data, data_dir or Path(".ers-data"))
