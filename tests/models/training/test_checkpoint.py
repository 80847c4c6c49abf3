"""Epoch checkpoints: a resumed run continues exactly where the saved one stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.training.checkpoint import Checkpointer, rng_state, set_rng_state
from models.training.recipe import TrainingError, recipe
from models.training.run import load_config, parse_config


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    x = torch.randn(16, 4)
    loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss)


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    for _ in range(3):
        _step(model, opt)
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(), "note": (1, "a")})
    expected = [_step(model, opt) for _ in range(3)]

    state = ckpt.latest()
    assert state is not None and state["epoch"] == 1 and state["note"] == (1, "a")
    model2 = torch.nn.Linear(4, 1)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.05)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    assert [_step(model2, opt2) for _ in range(3)] == expected


def test_keeps_the_last_checkpoints_and_ignores_partial_ones(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, keep=2)
    for epoch in range(4):
        ckpt.save(epoch, {"w": torch.full((2,), float(epoch))})
    (tmp_path / ".tmp-epoch-0004").mkdir()  # a crash mid-write leaves only a temp directory
    assert [p.name for p in ckpt.epochs()] == ["epoch-0002", "epoch-0003"]
    state = ckpt.latest()
    assert state is not None and state["epoch"] == 3 and state["w"].tolist() == [3.0, 3.0]
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_unknown_recipe_and_config_keys_are_refused(tmp_path: Path) -> None:
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        epochs: int = 1

    with pytest.raises(TrainingError, match="unknown recipe"):
        recipe("no-such-family")
    with pytest.raises(TrainingError, match=r"unknown config keys \['epoch'\]"):
        parse_config(Cfg, {"epoch": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(TrainingError, match="mapping"):
        load_config(bad)
    with pytest.raises(TrainingError, match="neither a file nor a shipped config"):
        load_config("nope-tiny")
