"""``ers train convirt``: ConVIRT image and text towers (``models.families.convirt``) trained with the bidirectional
InfoNCE loss (``models.losses.contrastive.convirt_info_nce``, tau = 0.1, lambda = 0.75 by default).

Data: the emoji image–name pairs (``models.data.emoji``; each concept drawn in two styles, one style
drawn at random per concept per epoch) or a MIMIC-CXR/CheXpert-style CSV of image path + report +
labels (``models.data.medical``; DICOM or image files). A fixed share of concepts (emoji, by a hash of
the code) or rows (CSV, by a hash of the path) is held out for evaluation, whatever the seed or limit.

What is trained, and why: on 2 CPU cores, back-propagating through EfficientNet and all of MiniLM is
too slow for the time limit, so the image backbone (ImageNet EfficientNet-Lite0) is frozen and its
pooled features are computed once; the text tower fine-tunes only its last ``text_trainable_layers``
MiniLM layers (the paper too freezes BERT's embeddings and lower layers), with the frozen layers'
output computed once; both projection heads are trained from scratch. The published towers are the
whole networks (backbone + head), so the service embeds raw images and text.

Publishes ``<out>/<name>-image@<version>`` and ``<out>/<name>-text@<version>`` (``config["towers"]``
names both) with ``metrics.json`` and ``MODEL_CARD.md``; checkpoints go to ``<out>/.checkpoints/<name>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.core.artifact import sha256_file
from models.core.encoder import Encoder
from models.core.errors import ModelError
from models.core.export import write_artifact
from models.core.spec import EncoderSpec
from models.data.convirt_pairs import KS, PairData, load_pairs, nearest_text_features, precision_at_k, zoo_artifact
from models.families.convirt import ConvirtImageFamily, ConvirtImageTower, ConvirtTextFamily, ConvirtTextTower
from models.losses.contrastive import convirt_info_nce
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

RECIPE = "convirt"
IMAGE_ZOO, TEXT_ZOO = "effnet-lite0", "minilm-l6"


@dataclass(frozen=True)
class ConvirtConfig:
    name: str = "convirt-emoji"
    version: str = "1"
    seed: int = 0
    data: str = "emoji"  # "emoji", or a CSV of image path + report text + CheXpert-style labels
    limit: int | None = None  # emoji: that many concepts, evenly spread; CSV: the first N rows
    test_percent: int = 20  # held out for evaluation (by a hash of the emoji code / the image path)
    val_percent: int = 0  # > 0: that share of the training pairs is evaluated instead, the test pairs unused
    label: str = "category"  # emoji label for precision@k: category | subcategory (CSV: first finding)
    image_size: int = 224
    projection_hidden: int = 512
    dim: int = 128
    max_tokens: int = 64
    text_trainable_layers: int = 2  # the last N MiniLM layers are fine-tuned; embeddings and the rest frozen
    temperature: float = 0.1
    weight: float = 0.75  # lambda: weight of the image->text direction
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3  # projection heads
    text_lr: float = 5e-5  # fine-tuned MiniLM layers
    weight_decay: float = 1e-4
    compat: dict[str, Any] = field(default_factory=dict)  # with --compatible-with: tower_compat.CompatSettings


@dataclass
class CompatPlan:
    """What a backward-compatible run trains against (``tower_compat``)."""

    old: EncoderSpec  # the old image (gallery) tower
    artifact: Path
    method: str
    settings: tc.CompatSettings
    teacher: Encoder | None  # BT²: the independently trained new image tower


def config_key(cfg: ConvirtConfig) -> str:
    """What a checkpoint must have been made with to be resumed."""
    return json.dumps(asdict(cfg), sort_keys=True)


class Run:
    """Towers, cached frozen features and the optimiser of one training run."""

    def __init__(self, cfg: ConvirtConfig, request: TrainRequest, plan: CompatPlan | None = None) -> None:
        from safetensors.torch import load_file

        self.cfg, self.request, self.plan = cfg, request, plan
        self.device = pick_device(request.device)
        self.data_dir = request.data_dir or Path(".ers-data")
        image_dir, text_dir = zoo_artifact(IMAGE_ZOO, self.data_dir), zoo_artifact(TEXT_ZOO, self.data_dir)
        self.data: PairData = load_pairs(
            cfg.data, cfg.limit, cfg.test_percent, cfg.label, self.data_dir, val_percent=cfg.val_percent
        )
        self.image_family, self.text_family = self._families(image_dir, text_dir)
        self.tokenizer_file = text_dir / "tokenizer.json"
        self.image_digest = sha256_file(image_dir / "model.safetensors")
        seed_everything(cfg.seed)  # the heads' initialisation depends on the seed alone
        self.image_tower: ConvirtImageTower = self.image_family.build_module()
        self.text_tower: ConvirtTextTower = self.text_family.build_module()
        self.image_tower.backbone.load_state_dict(load_file(str(image_dir / "model.safetensors")))
        self.text_tower.backbone.load_state_dict(load_file(str(text_dir / "model.safetensors")))
        layers = len(self.text_tower.backbone.encoder.layer)
        if not 0 <= cfg.text_trainable_layers <= layers:
            raise TrainingError(f"text_trainable_layers must lie in 0..{layers}, got {cfg.text_trainable_layers}")
        self.frozen_layers = layers - cfg.text_trainable_layers
        self.image_tower.to(self.device).eval()
        self.text_tower.to(self.device).eval()
        self.trainable = [n for n, p in self._named_trainable()]
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in self._named_trainable() if "head" in n], "lr": cfg.lr},
             {"params": [p for n, p in self._named_trainable() if "head" not in n], "lr": cfg.text_lr}],
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
        self.train_images = self._image_features(self.data.train_images)  # (concepts, views, 1280)
        self.train_text = self._text_prefix(self.data.train_texts)
        self.eval_gallery = self._image_features([[g] for g in self.data.gallery])[:, 0]
        self.eval_queries = self._image_features([[q] for q in self.data.image_queries])[:, 0]
        self.eval_text = self._text_prefix(self.data.texts)
        self.compat: tc.TowerCompat | None = None
        if plan is not None:  # every view of every training pair, the pair its class
            views = self.train_images.shape[1]
            images = [img for pair in self.data.train_images for img in pair]
            pairs = np.repeat(np.arange(len(self.data.train_images)), views)
            self.compat = tc.prepare(plan.old, plan.artifact, plan.method, images, pairs, cfg.dim, plan.settings,
                                     plan.teacher, self.device)  # fmt: skip
            if self.compat.parameters():
                self.optimizer.add_param_group({"params": self.compat.parameters(), "lr": cfg.lr})

    def _families(self, image_dir: Path, text_dir: Path) -> tuple[ConvirtImageFamily, ConvirtTextFamily]:
        from models.core.artifact import verify_artifact

        cfg = self.cfg
        towers = {"image": f"{cfg.name}-image@{cfg.version}", "text": f"{cfg.name}-text@{cfg.version}"}
        protocol = {k: getattr(cfg, k) for k in ("data", "limit", "test_percent", "val_percent", "label", "seed")}
        if Path(cfg.data).is_file():
            protocol["data"] = str(Path(cfg.data).resolve())
        common = {"recipe": RECIPE, "towers": towers, "projection_hidden": cfg.projection_hidden, **protocol}
        old = self.plan.old if self.plan else None
        if self.plan is not None:  # both towers search the old image tower's vectors on their first old.dim dims
            common.update({"compatible_tower": "image", "method": self.plan.method})
        old_key, old_dim = (old.key, old.dim) if old else (None, None)
        base_image, base_text = verify_artifact(image_dir), verify_artifact(text_dir)
        resize = round(cfg.image_size * base_image.config["resize_size"] / base_image.config["image_size"])
        described = f"ConVIRT (bidirectional InfoNCE, tau {cfg.temperature}, lambda {cfg.weight}) on {cfg.data}"
        source = f"ers train convirt from {base_image.key} + {base_text.key}"
        image_config = {**base_image.config, "image_size": cfg.image_size, "resize_size": resize, **common}
        image = EncoderSpec(f"{cfg.name}-image", cfg.version, "convirt-image", "image", cfg.dim, "cosine",
                            config=image_config, description=f"image tower of {described}", source=source,
                            license=base_image.license, compatible_with=old_key,
                            compat_dims=old_dim)  # fmt: skip
        text = EncoderSpec(f"{cfg.name}-text", cfg.version, "convirt-text", "text", cfg.dim, "cosine",
                           config={**base_text.config, "max_tokens": cfg.max_tokens, **common},
                           description=f"text tower of {described}", source=source,
                           license=base_text.license, compatible_with=old_key,
                           compat_dims=old_dim)  # fmt: skip
        text_family = ConvirtTextFamily(text, text_dir)  # reads the tokenizer from the MiniLM artifact
        return ConvirtImageFamily(image), text_family

    def _named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        out = [(f"image.{n}", p) for n, p in self.image_tower.head.named_parameters()]
        out += [(f"text.{n}", p) for n, p in self.text_tower.head.named_parameters()]
        layers = self.text_tower.backbone.encoder.layer[self.frozen_layers :]
        out += [(f"text.layer.{n}", p) for n, p in layers.named_parameters()]
        return out

    @torch.inference_mode()
    def _image_features(self, items: list[list[Any]]) -> torch.Tensor:
        """``(n, views, 1280)`` frozen backbone features; every item has the same number of views.

        Cached under ``<data_dir>/cache/convirt/`` by a sha256 of the backbone weights, the image size
        and every image's bytes (safetensors, no pickle): a resumed or repeated run skips the backbone."""
        from safetensors.torch import load_file, save_file

        flat = [view for views in items for view in views]
        digest = hashlib.sha256(f"{self.image_digest}:{self.cfg.image_size}:{len(flat)}".encode())
        for view in flat:
            digest.update(hashlib.sha256(view if isinstance(view, bytes) else np.asarray(view).tobytes()).digest())
        cache = self.data_dir / "cache" / "convirt" / f"features-{digest.hexdigest()[:32]}.safetensors"
        if cache.is_file():
            features = load_file(str(cache))["features"].to(self.device)
            return features.reshape(len(items), -1, features.shape[-1])
        chunks = []
        with progress_bar(len(flat), "image features", self.request.progress) as bar:
            for start in range(0, len(flat), 32):
                pixels = self.image_family.preprocess(flat[start : start + 32])["pixels"]
                chunks.append(self.image_tower.backbone(torch.from_numpy(pixels).to(self.device)))
                bar.step(len(pixels))
        features = torch.cat(chunks) if chunks else torch.zeros(0, 1280, device=self.device)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        save_file({"features": features.cpu().contiguous()}, str(tmp))
        tmp.replace(cache)  # atomic: a crash never leaves a half-written cache entry
        return features.reshape(len(items), -1, features.shape[-1])

    @torch.inference_mode()
    def _text_prefix(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states after the frozen layers ``(n, S, H)`` and the attention mask ``(n, S)``."""
        batch = {k: torch.from_numpy(v).to(self.device) for k, v in self.text_family.preprocess(texts).items()}
        hidden = [self.text_tower.frozen_prefix(batch["input_ids"][i : i + 256], batch["attention_mask"][i : i + 256],
                                                batch["token_type_ids"][i : i + 256], self.frozen_layers)
                  for i in range(0, len(texts), 256)]  # fmt: skip
        return torch.cat(hidden), batch["attention_mask"]

    def _text_embed(self, prefix: tuple[torch.Tensor, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        mask = prefix[1][idx]
        length = int(mask.sum(dim=1).max())  # trim the padding the whole set needed, not this batch
        return self.text_tower.trainable_suffix(prefix[0][idx, :length], mask[:, :length], self.frozen_layers)

    def steps_per_epoch(self) -> int:
        return len(self.data.train_texts) // min(self.cfg.batch_size, len(self.data.train_texts))

    def epoch(self, epoch: int, bar: Any) -> float:
        rng = np.random.default_rng([self.cfg.seed, epoch])  # batches depend on (seed, epoch): resume-exact
        size = min(self.cfg.batch_size, len(self.data.train_texts))
        self.text_tower.train()
        losses = []
        for idx in batches(len(self.data.train_texts), size, rng):
            views = rng.integers(0, self.train_images.shape[1], size=len(idx))  # one drawing style per concept
            index = torch.from_numpy(idx).to(self.device)
            image = self.image_tower.head(self.train_images[index, torch.from_numpy(views).to(self.device)])
            text = self._text_embed(self.train_text, index)  # (B, dim)
            terms: dict[str, torch.Tensor] = {}
            if self.compat is not None:
                image, text = self.compat.mix(image, text)
                terms = self.compat.terms(image, text, idx * self.train_images.shape[1] + views, idx)
            loss = convirt_info_nce(image, text, self.cfg.temperature, self.cfg.weight)
            if terms:
                loss = loss + torch.stack(list(terms.values())).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
            bar.step(loss=losses[-1])
        self.text_tower.eval()
        return float(np.mean(losses))

    @torch.inference_mode()
    def scores(self) -> dict[str, Any]:
        """Image->image and text->image precision@k by label on the held-out set, this model's towers
        (with each query's p@5: ``i2i_p@5_per_query``, ``t2i_p@5_per_query``)."""
        d = self.data
        gallery = self.image_tower.head(self.eval_gallery).cpu().numpy()
        queries = self.image_tower.head(self.eval_queries).cpu().numpy()
        texts = self._text_embed(self.eval_text, torch.arange(len(d.texts), device=self.device)).cpu().numpy()
        i2i = precision_at_k(queries, gallery, d.query_labels, d.gallery_labels, d.queries_are_gallery, per_query=True)
        t2i = precision_at_k(texts, gallery, d.text_labels, d.gallery_labels, False, per_query=True)
        return {**{f"i2i_{k}": v for k, v in i2i.items()}, **{f"t2i_{k}": v for k, v in t2i.items()}}

    def baselines(self) -> dict[str, Any]:
        """Untrained towers; frozen-features NN (i2i: the frozen backbone features; t2i: each text's nearest
        training text by TF-IDF, then that item's frozen features, ``nearest_text_features``); chance."""
        d = self.data
        gallery = self.eval_gallery.cpu().numpy()
        frozen = precision_at_k(self.eval_queries.cpu().numpy(), gallery, d.query_labels, d.gallery_labels,
                                d.queries_are_gallery, per_query=True)  # fmt: skip
        named = nearest_text_features(d.train_texts, self.train_images.cpu().numpy(), d.texts)  # (texts, 1280)
        frozen_t2i = precision_at_k(named, gallery, d.text_labels, d.gallery_labels, False, per_query=True)
        chance_i2i = precision_at_k(None, None, d.query_labels, d.gallery_labels, d.queries_are_gallery, per_query=True)
        chance_t2i = precision_at_k(None, None, d.text_labels, d.gallery_labels, False, per_query=True)
        untrained = {f"untrained_{k}": v for k, v in self.scores().items()}
        return {**untrained, **{f"frozen_nn_i2i_{k}": v for k, v in frozen.items()},
                **{f"frozen_nn_t2i_{k}": v for k, v in frozen_t2i.items()},
                **{f"chance_i2i_{k}": v for k, v in chance_i2i.items()},
                **{f"chance_t2i_{k}": v for k, v in chance_t2i.items()}}  # fmt: skip

    def state(self, extra: dict[str, Any]) -> dict[str, Any]:
        named = dict(self._named_trainable())
        return {"weights": {n: p.detach() for n, p in named.items()}, "optimizer": self.optimizer.state_dict(),
                "rng": rng_state(), "config": config_key(self.cfg), "bases": self._bases_state(), **extra}  # fmt: skip

    def _bases(self) -> list[torch.nn.Module]:
        c = self.compat
        return [] if c is None else [b for b in (c.gallery_basis, c.query_basis) if b is not None]

    def _bases_state(self) -> list[dict[str, torch.Tensor]]:
        return [b.state_dict() for b in self._bases()]

    def restore(self, state: dict[str, Any]) -> None:
        named = dict(self._named_trainable())
        if set(state["weights"]) != set(named):
            raise TrainingError("the checkpoint's trainable weights do not match this model")
        with torch.no_grad():
            for name, param in named.items():
                param.copy_(state["weights"][name].to(self.device))
        for basis, saved in zip(self._bases(), state.get("bases", []), strict=True):
            basis.load_state_dict(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])

    def publish(self, out: Path, metrics: dict[str, Any], config: dict[str, Any]) -> Path:
        notes = ("Image backbone (EfficientNet-Lite0, ImageNet) frozen; text tower MiniLM-L6 with its last "
                 f"{self.cfg.text_trainable_layers} layers fine-tuned; both projection heads trained. Precision@k "
                 f"by {self.data.label_name} on held-out data ({self.data.description}).")  # fmt: skip
        destinations = []
        for family, module in ((self.image_family, self.image_tower), (self.text_family, self.text_tower)):
            destination = out / family.spec.key
            is_text = isinstance(family, ConvirtTextFamily)
            names = family.input_names if is_text else ()
            write_artifact(family, module.cpu().eval(), destination, dynamic={n: {1: "sequence"} for n in names},
                           extra_files={"tokenizer.json": self.tokenizer_file} if is_text else None)  # fmt: skip
            write_card(destination, family.spec, metrics, config, notes)
            destinations.append(destination)
        module.to(self.device)
        return destinations[0]


@register_recipe(RECIPE)
class ConvirtRecipe:
    name: str

    def train(self, request: TrainRequest) -> TrainResult:
        cfg = parse_config(ConvirtConfig, request.config)
        plan = None
        if request.compatible_with is not None:
            if request.method is None:
                raise TrainingError("--compatible-with needs --method bct|bt2|oca")
            old, dim, settings = tc.compatible_width(cfg.compat, request.compatible_with, request.method,
                                                     f"{cfg.name}-image@{cfg.version}")  # fmt: skip
            cfg = dataclasses.replace(cfg, dim=dim)
            teacher = (train_teacher(request, "convirt", lambda alone: self.train(alone).artifact)
                       if request.method == "bt2" else None)  # fmt: skip
            plan = CompatPlan(old, request.compatible_with, request.method, settings, teacher)
        elif cfg.compat:
            raise TrainingError("the config's compat section needs --compatible-with and --method")
        torch.set_num_threads(training_threads())
        started = time.monotonic()
        checkpoints = Checkpointer(request.out / ".checkpoints" / cfg.name)
        state = checkpoints.latest() if request.resume else None
        if request.resume and state is None:
            raise TrainingError(f"nothing to resume: no checkpoint in {checkpoints.directory}")
        if state is not None and state["config"] != config_key(cfg):
            raise TrainingError("the checkpoint was made with another config; resume with the same config")
        try:
            run = Run(cfg, request, plan)
        except ModelError as exc:
            raise TrainingError(f"convirt: {exc.message}") from exc
        start, losses, baselines = 0, [], {}
        if state is not None:
            run.restore(state)
            start, losses, baselines = int(state["epoch"]), list(state["losses"]), dict(state["baselines"])
        else:
            baselines = run.baselines()
        steps = run.steps_per_epoch()
        with progress_bar(steps * cfg.epochs, f"convirt {cfg.name}", request.progress) as bar:
            bar.step(steps * start)
            for epoch in range(start, cfg.epochs):
                losses.append(run.epoch(epoch, bar))
                checkpoints.save(epoch + 1, run.state({"losses": losses, "baselines": baselines}))
        if run.compat is not None:
            run.compat.fold(run.image_tower, run.text_tower)  # the published towers are plain ConVIRT towers
        metrics: dict[str, Any] = {**run.scores(), **baselines, "loss_first_epoch": losses[0] if losses else None,
                                   "loss_last_epoch": losses[-1] if losses else None, "epochs": cfg.epochs,
                                   "train_pairs": len(run.data.train_texts), "device": run.device,
                                   "train_seconds": round(time.monotonic() - started, 1)}  # fmt: skip
        artifact = run.publish(request.out, metrics, request.config)
        return TrainResult(artifact, metrics)

    def evaluate(self, artifact: Path, data: str | None, data_dir: Path | None) -> dict[str, Any]:
        from models.data.convirt_pairs import evaluate_artifact

        return evaluate_artifact(artifact, data, data_dir or Path(".ers-data"))


__all__ = ["KS", "ConvirtConfig", "ConvirtRecipe"]
