"""Label-efficiency protocols for a frozen representation: a linear probe and fine-tuning (ConVIRT's
evaluation, after Zhang et al. 2020, sec. 4.2), with every hyper-parameter chosen on a validation split.

* ``linear_probe``: multinomial logistic regression on standardised frozen features (full-batch
  L-BFGS); the L2 weight is chosen from ``L2_GRID`` by validation accuracy.
* ``fine_tune``: a trainable module (the encoder's trainable part, e.g. a projection head, or a fresh
  copy of it) followed by a linear classifier, trained with AdamW on cross-entropy. The learning rate
  is chosen from ``LR_GRID`` and the number of epochs by early stopping, both on validation accuracy.
* ``label_subset``: the labelled fraction of the training pool (1% / 10% / 100%), drawn per seed.

The test split is scored once, with what validation chose; the chosen values are returned so a
report can print them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.training.run import batches

L2_GRID = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)  # L2 weight of the probe, strongest first
LR_GRID = (1e-3, 3e-4)
MAX_EPOCHS = 60
PATIENCE = 10  # epochs without a better validation accuracy before stopping


@dataclass(frozen=True)
class Split:
    """Features ``(n, d)`` and integer labels ``(n,)`` of one split."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} feature rows but {len(self.y)} labels")


@dataclass(frozen=True)
class ProbeResult:
    test_accuracy: float
    val_accuracy: float
    chosen: dict[str, float]  # what validation picked (l2; lr and epochs)


def label_subset(n: int, fraction: float, seed: int, minimum: int = 1) -> np.ndarray:
    """Sorted indices of ``round(fraction * n)`` (at least ``minimum``) rows, drawn with ``seed``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the labelled fraction must lie in (0, 1], got {fraction}")
    size = min(n, max(minimum, round(fraction * n)))
    return np.sort(np.random.default_rng([seed, round(fraction * 1e6)]).choice(n, size=size, replace=False))


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == y).float().mean()) if len(y) else 0.0


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6  # fitted on the labelled rows only
    return [torch.from_numpy(((a - mean) / std).astype(np.float32)) for a in (train, *others)]


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float) -> nn.Linear:
    """Full-batch L-BFGS on mean cross-entropy + l2·|W|²/2 (the bias is not penalised)."""
    model = nn.Linear(x.shape[1], classes)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=100, history_size=20, tolerance_grad=1e-5,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + 0.5 * l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def linear_probe(train: Split, val: Split, test: Split, classes: int) -> ProbeResult:
    """Logistic regression on frozen features; L2 chosen on ``val``, then ``test`` scored once."""
    xs = _standardise(train.x, val.x, test.x)
    ys = [torch.from_numpy(s.y.astype(np.int64)) for s in (train, val, test)]
    best: tuple[float, float, nn.Linear] | None = None
    for l2 in L2_GRID:
        model = _fit_logistic(xs[0], ys[0], classes, l2)
        with torch.no_grad():
            val_acc = accuracy(model(xs[1]), ys[1])
        if best is None or val_acc > best[0]:  # a tie keeps the stronger regulariser (listed first)
            best = (val_acc, l2, model)
    assert best is not None
    with torch.no_grad():
        test_acc = accuracy(best[2](xs[2]), ys[2])
    return ProbeResult(test_acc, best[0], {"l2": best[1]})


def fine_tune(
    make_body: Callable[[], nn.Module],
    body_dim: int,
    train: Split,
    val: Split,
    test: Split,
    classes: int,
    seed: int,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    max_epochs: int = MAX_EPOCHS,
) -> ProbeResult:
    """Train ``make_body()`` (inputs: the frozen features) + a linear classifier on the labelled rows.

    ``make_body`` returns a fresh module each call (a copy of a trained head, or a new one), so every
    learning rate starts from the same weights. The epoch and learning rate with the best validation
    accuracy are kept; ``test`` is scored once with them."""
    x_tr, x_va, x_te = (torch.from_numpy(s.x.astype(np.float32)) for s in (train, val, test))
    y_tr, y_va, y_te = (torch.from_numpy(s.y.astype(np.int64)) for s in (train, val, test))
    best: tuple[float, float, int, nn.Module] | None = None
    for lr in LR_GRID:
        torch.manual_seed(seed)
        model = nn.Sequential(make_body(), nn.Linear(body_dim, classes))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        rng = np.random.default_rng([seed, 7])
        since_best, run_best = 0, -1.0
        for epoch in range(1, max_epochs + 1):
            model.train()
            for rows in batches(len(y_tr), batch_size, rng, drop_last=False):
                idx = torch.from_numpy(rows)
                loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                val_acc = accuracy(model(x_va), y_va)
            if val_acc > run_best:
                run_best, since_best = val_acc, 0
                if best is None or val_acc > best[0]:
                    best = (val_acc, lr, epoch, copy.deepcopy(model))
            else:
                since_best += 1
                if since_best >= PATIENCE:
                    break
    assert best is not None
    with torch.no_grad():
        test_acc = accuracy(best[3](x_te), y_te)
    return ProbeResult(test_acc, best[0], {"lr": best[1], "epochs": float(best[2])})
