"""Backward-compatible two-tower models: ``--compatible-with OLD_GALLERY_TOWER``.

Image–text models (two-branch, ConVIRT) store *image* vectors and are searched by images and texts;
Unified stores *item* vectors and is searched by items and user records. Either way both new towers
learn to search the old gallery: the compatibility terms of ``models.compat`` are applied to the
first ``d_old`` dims of the new gallery embedding *and* of the new query-tower embedding, against the
old gallery tower's features of the training gallery inputs. The grouping is what the gallery item
is (a pair's concept: its old prototype is the mean old feature of its drawings; an item); a query
embedding is grouped with its positive. Each recipe's own loss (ranking, InfoNCE, in-batch softmax)
on the full embeddings stays its objective.

BT² and OCA widen both towers by ``d_extra`` dims and mix each with an orthogonal basis (trained as
an orthogonal parametrisation starting at the identity). The basis is folded into the tower's output
``Linear`` when training ends (``W (P x + b) = (W P) x + W b``, and an orthogonal ``W`` commutes with
the normalisation a cosine index applies), so the published towers are ordinary towers of the family.
BT² distils (image branch) from an independently trained new model, trained first as
``<name>-independent``.

Both published specs say ``compatible_with: OLD`` and ``compat_dims: d_old``; ``config["compatible_tower"]``
names OLD's role (the gallery tower: "image", "item"), which the query tower's vectors search too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.compat.heads import bake_basis, embedding_dim, orthogonal_basis
from models.compat.objective import CompatObjective, CompatWeights, prepare_targets
from models.core.encoder import Encoder
from models.core.spec import EncoderSpec
from models.training.recipe import TrainingError
from models.training.run import parse_config


@dataclass(frozen=True)
class CompatSettings:
    """The ``compat:`` section of a two-branch, ConVIRT or Unified config (used with ``--compatible-with``)."""

    d_extra: int = 32  # BT², OCA: dims beyond the old model's (BCT: none)
    influence: float = 1.0
    align: float = 1.0
    distill: float = 1.0
    feature: float = 0.0

    def weights(self) -> CompatWeights:
        return CompatWeights(influence=self.influence, align=self.align, distill=self.distill, feature=self.feature)


def compatible_width(section: dict[str, Any], old_artifact: Path, method: str, new_key: str,
                     modality: str = "image") -> tuple[EncoderSpec, int, CompatSettings]:  # fmt: skip
    """The old gallery tower's spec (it must embed ``modality``), the width the new towers need, and
    the ``compat:`` settings."""
    from models.core.artifact import verify_artifact

    settings = parse_config(CompatSettings, section)
    old = verify_artifact(old_artifact)
    if old.modality != modality:
        raise TrainingError(f"{old.key} embeds '{old.modality}', not '{modality}': the new model is compatible "
                            "with the gallery tower of the old model; pass that artifact")  # fmt: skip
    if old.key == new_key:
        raise TrainingError(f"the new gallery tower would reuse the old key {old.key}; set a different version")
    return old, embedding_dim(method, old.dim, settings.d_extra), settings


def output_linear(tower: nn.Module) -> nn.Linear:
    """A tower's last ``Linear``: two-branch's ``proj`` or last ``mlp`` layer (Unified's too), ConVIRT's
    ``head.out``."""
    head = getattr(tower, "head", None)
    layer = head.out if isinstance(head, nn.Module) else getattr(tower, "proj", None) or tower.mlp[-1]  # type: ignore[index]
    if not isinstance(layer, nn.Linear):
        raise TrainingError(f"{type(tower).__name__} has no output Linear to fold a basis into")
    return layer


@dataclass
class TowerCompat:
    old: EncoderSpec
    method: str
    objective: CompatObjective  # only its compat_terms: the ranking loss is the model's objective
    gallery_basis: nn.Module | None  # the gallery tower's (image, or Unified's item tower)
    query_basis: nn.Module | None  # the query tower's (text, or Unified's query tower)
    roles: tuple[str, str] = ("image", "text")  # how the loss terms are named

    def parameters(self) -> list[nn.Parameter]:
        return [p for b in (self.gallery_basis, self.query_basis) if b is not None for p in b.parameters()]

    def mix(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, dim) unit embeddings of both towers, each through its basis (orthogonal: still unit)."""
        if self.gallery_basis is None or self.query_basis is None:
            return image, text
        return self.gallery_basis(image), self.query_basis(text)

    def terms(self, image: torch.Tensor, text: torch.Tensor, items: np.ndarray,
              pairs: np.ndarray) -> dict[str, torch.Tensor]:  # fmt: skip
        """The compatibility losses of both towers' embeddings: ``items`` index the images ``prepare``
        embedded, ``pairs`` the pair (class) of each."""
        index = torch.from_numpy(np.asarray(items, dtype=np.int64)).to(image.device)
        labels = torch.from_numpy(np.asarray(pairs, dtype=np.int64)).to(image.device)
        gallery, query = self.roles
        out = {f"{gallery}_{k}": v for k, v in self.objective.compat_terms(image, labels, index).items()}
        # BT²'s distillation is left out: the teacher's relations are between gallery items
        text_terms = self.objective.compat_terms(text, labels, index, distill=False)
        out.update({f"{query}_{k}": v for k, v in text_terms.items()})
        return out

    def fold(self, image_tower: nn.Module, text_tower: nn.Module) -> None:
        """Fold each trained basis into its tower's output ``Linear``: ``W P`` and ``W b``."""
        for basis, tower in ((self.gallery_basis, image_tower), (self.query_basis, text_tower)):
            if basis is None:
                continue
            bake_basis(basis)
            w = torch.as_tensor(basis.weight).detach().to(torch.float32)  # (dim, dim), orthogonal
            layer = output_linear(tower)
            with torch.no_grad():
                layer.weight.copy_(w @ layer.weight)
                if layer.bias is not None:
                    layer.bias.copy_(w @ layer.bias)
        self.gallery_basis = self.query_basis = None


def prepare(old_spec: EncoderSpec, old_artifact: Path, method: str, images: list[Any], pairs: np.ndarray,
            dim: int, settings: CompatSettings, teacher: Encoder | None, device: str,
            roles: tuple[str, str] = ("image", "text")) -> TowerCompat:  # fmt: skip
    """Embed the training ``images`` (pair ``pairs[i]`` each) with the old gallery tower (and the BT²
    teacher); the objective and, for BT²/OCA, one orthogonal basis per tower."""
    from models.core.registry import load_encoder

    old = load_encoder(old_artifact)
    n_pairs = int(np.max(pairs)) + 1
    targets = prepare_targets(old, images, np.asarray(pairs), n_pairs, teacher, old_artifact)
    objective = CompatObjective(method, n_pairs, dim, targets.to(device), settings.weights()).to(device)
    bases: list[nn.Module | None] = [None, None]
    if method in ("bt2", "oca"):
        bases = [orthogonal_basis(nn.Linear(dim, dim, bias=False)).to(device) for _ in range(2)]
    return TowerCompat(old_spec, method, objective, bases[0], bases[1], roles)
