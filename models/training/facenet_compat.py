"""Backward-compatible FaceNet: ``ers train facenet --compatible-with OLD --method bct|bt2|oca``.

The old artifact (the face encoder whose vectors a collection holds) embeds the new training set once;
``models.compat`` turns those features into its targets with the training *identities* as the classes:
BCT's influence loss through the old (pseudo-)classifier, BT²'s alignment to the old feature of each
item plus relational distillation from an independently trained new model, OCA's alignment to the
old prototype of each identity. Every step adds those terms, on the embedding's first ``d_old`` dims,
to the triplet loss, which stays the model's own objective.

BT² and OCA widen the embedding by ``d_extra`` dims and mix it with an orthogonal basis after
``last_bn`` (trained as an orthogonal parametrisation, baked to a plain matrix for export), so the
losses decide which directions serve old galleries and which carry the new model's own information.
BCT keeps the old width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.compat.heads import bake_basis, embedding_dim, orthogonal_basis
from models.compat.objective import CompatObjective, CompatWeights, prepare_targets
from models.core.encoder import Encoder
from models.core.spec import EncoderSpec
from models.data.identities import IdentityImages
from models.training.facenet_config import FaceNetTrainConfig
from models.training.recipe import TrainingError


@dataclass
class FaceCompat:
    """What the training loop adds for a compatible model."""

    old: EncoderSpec
    method: str
    objective: CompatObjective  # only its compat_terms: the triplet loss is the model's objective
    classes: torch.Tensor  # (N,) the identity (class index) of each training item

    def terms(self, emb: torch.Tensor, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The compatibility losses of the (B, dim) embeddings of training items ``rows``."""
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(emb.device)
        return self.objective.compat_terms(emb, self.classes.to(emb.device)[index], index)


def compat_config(cfg: FaceNetTrainConfig, old_artifact: Path, method: str) -> tuple[EncoderSpec, FaceNetTrainConfig]:
    """The old model's spec and the config to train: its ``dim`` the compatible width for ``method``.
    Refuses what cannot be compatible: another modality, a fixed-width backbone, the old key reused."""
    from models.core.artifact import verify_artifact

    old = verify_artifact(old_artifact)
    if old.modality != "face":
        raise TrainingError(f"{old.key} embeds '{old.modality}', not faces: a facenet model cannot search its vectors")
    if cfg.backbone != "inception-resnet-v1":
        raise TrainingError("backward-compatible facenet training needs the inception-resnet-v1 backbone "
                            "(face-resnet's width is fixed at 128, with no room for extra dims)")  # fmt: skip
    dim = embedding_dim(method, old.dim, cfg.d_extra)
    if f"{cfg.name}@{cfg.version}" == old.key:
        raise TrainingError(f"the new model would reuse the old key {old.key}; set a different version")
    return old, dataclasses.replace(cfg, dim=dim)


def uses_basis(method: str | None) -> bool:
    return method in ("bt2", "oca")


def prepare(
    cfg: FaceNetTrainConfig,
    old_spec: EncoderSpec,
    old_artifact: Path,
    method: str,
    train: IdentityImages,
    teacher: Encoder | None,
    module: Any,
    device: str,
) -> FaceCompat:
    """Embed the training identities with the old model (and the BT² teacher), build the objective,
    and make ``module``'s basis (BT², OCA) a trainable orthogonal map starting at the identity."""
    from models.core.registry import load_encoder

    old = load_encoder(old_artifact)
    # What a served encoder is given for each item (the photo, for detecting models), else the crop.
    inputs: Any = train.inputs if len(train.inputs) == len(train) else list(train.crops)
    names, classes = np.unique(train.labels, return_inverse=True)
    targets = prepare_targets(old, inputs, classes, len(names), teacher, old_artifact)
    weights = CompatWeights(influence=cfg.influence, align=cfg.align, distill=cfg.distill, feature=cfg.feature)
    objective = CompatObjective(method, len(names), cfg.dim, targets.to(device), weights).to(device)
    if uses_basis(method):
        orthogonal_basis(module.basis)
    return FaceCompat(old_spec, method, objective, torch.from_numpy(classes.astype(np.int64)))


def finish(module: Any) -> None:
    """Bake a trained basis into a plain matrix: the exported module is the served architecture."""
    bake_basis(getattr(module, "basis", None))
