"""The facenet recipe's configuration (``ers train facenet --config``), apart from the recipe so
that its steps (``facenet_steps``) and its loop (``facenet``) both read it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.training.recipe import TrainingError

BACKBONES = {"inception-resnet-v1": "facenet", "face-resnet": "face-resnet"}  # backbone -> family


@dataclass
class FaceNetTrainConfig:
    name: str = "facenet-emoji"
    version: str = "1"
    seed: int = 0
    # data: "emoji" | "face-photos" | a folder root/<identity>/<image>
    data: str = "emoji"
    limit: int | None = None  # emoji: this many concepts (evenly spread), for tiny runs
    holdout: int = 300  # identities kept out of training for evaluation (emoji, folders)
    # The identity split and the verification pairs are drawn with split_seed, not seed: every training
    # seed is scored on the same identities (split_seed 0 reproduces the split of the seed-0 runs).
    split_seed: int = 0
    # "val": another `holdout` identities are carved out of the training ones and scored instead of the
    # test identities, which stay unseen (how configs and ablations are chosen)
    evaluate_on: str = "test"
    detect: bool = False  # folders: detect + align faces with MTCNN; else images are aligned crops
    lfw_pairs: str | None = None  # folders: evaluate on LFW's pairs.txt instead of drawn pairs
    # backbone: "inception-resnet-v1" | "face-resnet"; pretrained: a zoo artifact to start from
    backbone: str = "inception-resnet-v1"
    pretrained: str | None = None
    image_size: int = 64
    dim: int = 128
    width: float = 0.25
    repeats: list[int] = field(default_factory=lambda: [2, 4, 2])
    stem_pool: bool = False
    thumbnail: int = 0  # inception-resnet-v1: a linear colour/layout branch on a t x t thumbnail (0: none)
    dropout: float = 0.2
    # optimisation
    epochs: int = 10
    max_steps_per_epoch: int | None = None
    p: int = 32  # identities per batch
    k: int = 4  # images per identity
    margin: float = 0.2
    mining: str = "semi-hard"  # | "batch-hard"
    squared: bool = True  # triplet loss on squared distances, as in the FaceNet paper
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: dict[str, Any] = field(default_factory=dict)  # AugmentConfig overrides
    eval_batch: int = 256
    # backward-compatible training (``--compatible-with OLD --method bct|bt2|oca``): models/compat's
    # terms added to the triplet loss, with the identities as the classes (``facenet_compat``)
    d_extra: int = 32  # BT² / OCA: dims beyond the old model's (BCT: none)
    influence: float = 1.0  # the weights of the terms (models.compat.objective.CompatWeights)
    align: float = 1.0
    distill: float = 1.0
    feature: float = 0.0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise TrainingError(f"backbone must be one of {sorted(BACKBONES)}, got '{self.backbone}'")
        if self.mining not in ("semi-hard", "batch-hard"):
            raise TrainingError(f"mining must be semi-hard or batch-hard, got '{self.mining}'")
        if self.evaluate_on not in ("test", "val"):
            raise TrainingError(f"evaluate_on must be test or val, got '{self.evaluate_on}'")
        if self.evaluate_on == "val" and self.data == "face-photos":
            raise TrainingError("the face-photos set is too small for a validation split: evaluate_on must be test")
        if self.p < 2 or self.k < 2:
            raise TrainingError("a P x K batch needs p >= 2 identities and k >= 2 images each")
        if self.thumbnail < 0 or (self.thumbnail and self.image_size % self.thumbnail):
            raise TrainingError(f"thumbnail must be 0 or divide image_size {self.image_size}, got {self.thumbnail}")
        if self.thumbnail and self.backbone != "inception-resnet-v1":
            raise TrainingError("thumbnail is an option of the inception-resnet-v1 backbone")
        if self.backbone == "face-resnet" and (self.image_size, self.dim) != (150, 128):
            raise TrainingError("the face-resnet backbone takes 150 px faces and gives 128-d vectors")
