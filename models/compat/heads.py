"""The compat head around any backbone, and the width of a compatible embedding.

* BCT: the backbone's own ``d_old``-wide embedding; no extra layer.
* BT² and OCA: the backbone outputs ``d_old + d_extra``; an orthogonal basis transformation
  (``torch.nn.utils.parametrizations.orthogonal``) mixes it. An orthogonal map keeps every bit of the
  backbone's information while the losses decide which directions land in the first ``d_old`` dims
  (the old-compatible part) and which in the ``d_extra`` ones (the new model's own information).

For serving, ``bake`` replaces the parametrisation by the plain matrix it computes, so the exported
module is an ordinary ``Linear`` (ONNX-friendly; the state dict keys are ``backbone.*`` and
``basis.weight``). A family whose spec says ``config["basis"] = true`` builds ``with_basis(backbone, dim)``
to load such weights.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal

Method = Literal["bct", "bt2", "oca"]
METHODS: tuple[str, ...] = ("bct", "bt2", "oca")
DEFAULT_D_EXTRA = 32


class CompatModel(nn.Module):
    """``backbone`` (any module returning ``(B, dim)``) followed by an optional ``(dim, dim)`` basis."""

    def __init__(self, backbone: nn.Module, basis: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.basis = basis

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        z = self.backbone(*args, **kwargs)  # (B, dim)
        return z if self.basis is None else self.basis(z)  # (B, dim), orthogonally mixed


def embedding_dim(method: str | None, d_old: int, d_extra: int = DEFAULT_D_EXTRA) -> int:
    """Width the backbone must output to be trained with ``method`` against a ``d_old``-wide old model."""
    if method is None or method == "bct":
        return d_old
    if method in ("bt2", "oca"):
        if d_extra < 0:
            raise ValueError("d_extra must be >= 0")
        return d_old + d_extra
    raise ValueError(f"unknown compat method '{method}'; known: {METHODS}")


def with_basis(backbone: nn.Module, dim: int) -> CompatModel:
    """The serving architecture: backbone + a plain ``Linear(dim, dim)`` that holds the baked basis."""
    return CompatModel(backbone, nn.Linear(dim, dim, bias=False))


def orthogonal_basis(linear: nn.Linear) -> nn.Linear:
    """Parametrise a square, bias-free ``linear`` as orthogonal, starting at the identity (so training
    starts from the backbone's own coordinates); in place, returned for chaining."""
    if linear.in_features != linear.out_features or linear.bias is not None:
        raise ValueError("an orthogonal basis is a square Linear without bias")
    with torch.no_grad():
        linear.weight.copy_(torch.eye(linear.in_features))
    return orthogonal(linear)


def bake_basis(linear: nn.Module | None) -> None:
    """Freeze a parametrised basis into the plain matrix it computes (in place): an ordinary ``Linear``
    for export, whose state dict key is ``weight``."""
    if linear is not None and parametrize.is_parametrized(linear):
        parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)


def wrap_for_compat(backbone: nn.Module, method: str | None, dim: int, basis: bool = True) -> CompatModel:
    """The trainable model for ``method``: BT²/OCA add an orthogonal basis on the ``dim``-wide output.
    ``basis=False`` keeps their extra dims without it (the ablation that measures the basis's own effect)."""
    if method is None or method == "bct":
        return CompatModel(backbone, None)
    embedding_dim(method, 1)  # validates the name
    return CompatModel(backbone, orthogonal_basis(nn.Linear(dim, dim, bias=False)) if basis else None)


def bake(model: CompatModel) -> CompatModel:
    """Freeze the parametrised basis into its plain matrix (in place) for export; returns ``model``."""
    bake_basis(model.basis)
    return model
