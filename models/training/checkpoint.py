"""Epoch checkpoints that resume training exactly, with no pickle on disk.

A checkpoint is a directory ``epoch-NNNN/`` holding ``tensors.safetensors`` (every tensor of the
module and optimizer states, the RNG states) and ``state.json`` (the structure around them: optimizer
hyper-parameters, the epoch, the recipe's extra fields). It is written to a temp directory and
published by ``models.core.durable.publish_dir`` (fsynced, then renamed into place), so a crash
mid-write leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from models.core.durable import publish_dir
from models.training.recipe import TrainingError

TENSORS = "tensors.safetensors"
STATE = "state.json"


def _flatten(value: Any, tensors: dict[str, Any], path: str) -> Any:
    """JSON-able structure with tensors replaced by references; keeps int dict keys and tuples."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {"__ndarray__": path}
    if isinstance(value, dict):
        return {"__dict__": [[k, _flatten(v, tensors, f"{path}/{k}")] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TrainingError(f"cannot checkpoint a {type(value).__name__} at {path}")


def _unflatten(value: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy()
    if "__tuple__" in value:
        return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
    return {k: _unflatten(v, tensors) for k, v in value["__dict__"]}


def rng_state() -> dict[str, Any]:
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class Checkpointer:
    """``save(epoch, state)`` after each epoch; ``latest()`` for ``--resume``. Keeps the last ``keep``."""

    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.directory = directory
        self.keep = keep

    def save(self, epoch: int, state: dict[str, Any]) -> Path:
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"epoch-{epoch:04d}"
        tmp = self.directory / f".tmp-epoch-{epoch:04d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors: dict[str, Any] = {}
        structure = _flatten({"epoch": epoch, **state}, tensors, "s")
        save_file(tensors, str(tmp / TENSORS))
        (tmp / STATE).write_text(json.dumps(structure))
        publish_dir(tmp, final)
        for old in self.epochs()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def epochs(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("epoch-*") if (p / STATE).is_file())

    def latest(self) -> dict[str, Any] | None:
        """The newest complete checkpoint's state (with ``epoch``), or None when there is none."""
        from safetensors.torch import load_file

        epochs = self.epochs()
        if not epochs:
            return None
        path = epochs[-1]
        try:
            tensors = load_file(str(path / TENSORS))
            state = _unflatten(json.loads((path / STATE).read_text()), tensors)
        except (OSError, ValueError) as exc:
            raise TrainingError(f"checkpoint {path} is unreadable: {exc}") from exc
        return dict(state)
