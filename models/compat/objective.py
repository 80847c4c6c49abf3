"""What a compatible model is trained against, and the per-method loss.

``CompatTargets`` is computed once, before training, by running the *old encoder artifact* (any
family, through the ordinary ``encode``) over the new training set:

* ``old_features`` (N, d_old): the old model's embedding of each training item (BT²'s target);
* ``old_prototypes`` (C, d_old): per class, the mean old feature (OCA's target);
* ``old_classifier`` (C, d_old): BCT's frozen old classifier: the old model's trained class weights
  where its artifact ships them (``classifier.safetensors``), and for every other class the
  pseudo-classifier weight of BCT: the class mean of old features. Artifacts of metric-learning
  families have no classifier, so all rows are class means then;
* ``teacher`` (N, d_t), BT² only: the embedding of an independently trained new model.

``CompatObjective`` holds the new model's own cosine classifier and returns the method's loss:

* independent: CE(new classifier, z)
* BCT: CE + λ_inf · influence(z)
* BT²: CE + λ_inf · influence(z[:d_old]) + λ_align · (1 − cos(z[:d_old], old feature))
       + λ_distill · relational distillation(z, teacher)
* OCA: CE + λ_inf · influence(z[:d_old]) + λ_align · (1 − cos(z[:d_old], old prototype of the class))
       [+ λ_feature · (1 − cos(z[:d_old], old feature)), optional]

A recipe with its own loss (triplet, InfoNCE…) adds ``compat_terms`` to it instead of calling the
objective, which then needs no classifier of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.compat.report import embed
from models.core.encoder import Encoder
from models.losses.compat import alignment_loss, classification_loss, influence_loss, relational_distillation_loss

CLASSIFIER_FILE = "classifier.safetensors"  # optional: {"weight": (C, d), "classes": (C,) int64}


@dataclass
class CompatWeights:
    influence: float = 1.0
    align: float = 1.0
    distill: float = 1.0
    feature: float = 0.0  # OCA: also 1 - cos(prefix, old feature of the same item) (keeps the old function)
    scale: float = 16.0  # cosine-softmax temperature of every classifier
    distill_temperature: float = 0.1


@dataclass
class CompatTargets:
    old_features: torch.Tensor  # (N, d_old), unit rows
    old_prototypes: torch.Tensor  # (C, d_old), unit rows
    old_classifier: torch.Tensor  # (C, d_old), unit rows
    teacher: torch.Tensor | None = None  # (N, d_t), unit rows

    @property
    def d_old(self) -> int:
        return int(self.old_features.shape[1])

    def to(self, device: str) -> CompatTargets:
        teacher = None if self.teacher is None else self.teacher.to(device)
        return CompatTargets(self.old_features.to(device), self.old_prototypes.to(device),
                             self.old_classifier.to(device), teacher)  # fmt: skip


def _unit(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return nn.functional.normalize(t, dim=1)


def save_classifier(artifact: Path, weight: torch.Tensor, classes: Sequence[int]) -> None:
    """Ship a trained classifier beside the weights, so a later BCT can use the real old head."""
    from safetensors.torch import save_file

    tensors = {"weight": weight.detach().float().cpu().contiguous(), "classes": torch.tensor(list(classes))}
    save_file(tensors, str(artifact / CLASSIFIER_FILE))


def load_classifier(artifact: Path | None) -> dict[int, torch.Tensor]:
    if artifact is None or not (artifact / CLASSIFIER_FILE).is_file():
        return {}
    from safetensors.torch import load_file

    tensors = load_file(str(artifact / CLASSIFIER_FILE))
    return {int(c): w for c, w in zip(tensors["classes"].tolist(), tensors["weight"], strict=True)}


def prepare_targets(old: Encoder, inputs: Sequence[Any] | np.ndarray, labels: np.ndarray, num_classes: int,
                    teacher: Encoder | None = None, old_artifact: Path | None = None,
                    class_ids: Sequence[int] | None = None) -> CompatTargets:  # fmt: skip
    """Embed the training set with the old (and teacher) encoder; build prototypes and the old classifier.

    ``labels`` are class indexes 0..num_classes-1; ``class_ids[i]`` is the data set's id of index i
    (how the old artifact's ``classifier.safetensors`` names its rows; default: the index itself).
    """
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    feats = embed(old, inputs)  # (N, d_old)
    prototypes = np.zeros((num_classes, feats.shape[1]), dtype=np.float32)
    for c in range(num_classes):
        members = feats[labels == c]
        if len(members) == 0:
            raise ValueError(f"class {c} has no training items; the old classifier needs one")
        prototypes[c] = members.mean(axis=0)
    classifier = _unit(prototypes).clone()
    index_of = {int(c): i for i, c in enumerate(class_ids if class_ids is not None else range(num_classes))}
    for c, row in load_classifier(old_artifact).items():
        if c in index_of and row.shape[0] == feats.shape[1]:
            classifier[index_of[c]] = nn.functional.normalize(row.float(), dim=0)
    teacher_feats = None if teacher is None else _unit(embed(teacher, inputs))
    return CompatTargets(_unit(feats), _unit(prototypes), classifier, teacher_feats)


class CompatObjective(nn.Module):
    """The new model's cosine classifier + the method's compatibility terms (see the module doc)."""

    def __init__(self, method: str | None, num_classes: int, dim: int, targets: CompatTargets | None = None,
                 weights: CompatWeights | None = None) -> None:  # fmt: skip
        super().__init__()
        if method is not None and targets is None:
            raise ValueError(f"method {method} needs CompatTargets from the old model")
        if method == "bt2" and (targets is None or targets.teacher is None):
            raise ValueError("BT² distils towards an independently trained new model: targets.teacher is missing")
        if targets is not None and targets.d_old > dim:
            raise ValueError(f"the embedding ({dim}) is narrower than the old model ({targets.d_old})")
        self.method, self.targets = method, targets
        self.weights = weights or CompatWeights()
        classifier = torch.randn(num_classes, dim) * 0.01  # (C, dim)
        if targets is not None:  # start where the old model is: its (pseudo-)classifier on the compatible dims,
            # so the first steps' CE gradients do not throw a warm-started backbone out of the old space
            classifier[:, : targets.d_old] = targets.old_classifier.detach().cpu()
        self.classifier = nn.Parameter(classifier)

    def compat_terms(
        self, z: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, distill: bool = True
    ) -> dict[str, torch.Tensor]:
        """The compatibility losses alone, for (B, dim) embeddings of training items ``index``; BT²'s
        relational distillation only with ``distill`` (a query tower has no teacher of its own)."""
        if self.method is None:
            return {}
        assert self.targets is not None
        w, t = self.weights, self.targets
        prefix = z[:, : t.d_old]  # (B, d_old): the part compared with old vectors
        terms = {"influence": w.influence * influence_loss(prefix, t.old_classifier, labels, w.scale)}
        if self.method == "bt2":
            assert t.teacher is not None
            terms["align"] = w.align * alignment_loss(prefix, t.old_features[index])
            if distill:
                terms["distill"] = w.distill * relational_distillation_loss(z, t.teacher[index], w.distill_temperature)
        elif self.method == "oca":
            terms["align"] = w.align * alignment_loss(prefix, t.old_prototypes[labels])
            if w.feature:
                terms["feature"] = w.feature * alignment_loss(prefix, t.old_features[index])
        return terms

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        terms = {"ce": classification_loss(z, self.classifier, labels, self.weights.scale)}
        terms.update(self.compat_terms(z, labels, index))
        loss = torch.stack(list(terms.values())).sum()
        return loss, {k: float(v.detach()) for k, v in terms.items()}
