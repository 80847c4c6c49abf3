"""Recipes registered by name (``ers train two-branch ...``), like the encoder families.

A recipe turns a config (a YAML file, see ``configs/``) into an artifact directory that the
service loads through ``models.core.registry.load_encoder``; ``evaluate`` scores an artifact. The
artifact's spec records the recipe in ``spec.config["recipe"]`` so ``ers eval`` finds its code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from models.core.errors import ModelError

CompatMethod = Literal["bct", "bt2", "oca"]
# Modules that register recipes; imported on first lookup so `import models` stays cheap.
RECIPE_MODULES = (
    "models.training.two_branch",
    "models.training.facenet",
    "models.training.convirt",
    "models.training.unified",
    "models.training.fmnist",
)


class TrainingError(ModelError):
    """A recipe cannot run: bad config, missing data, incompatible resume state."""

    code = "training_error"


@dataclass(frozen=True)
class TrainRequest:
    config: dict[str, Any]  # the parsed YAML (family-specific keys, validated by the recipe)
    out: Path  # artifact directory to publish (checkpoints go to ``out/../<name>.ckpt``)
    resume: bool = False  # continue from the last complete epoch checkpoint
    device: str = "auto"  # "auto" (cuda when present), "cpu", "cuda"
    data_dir: Path | None = None  # ERS data dir: where zoo models and fetched data sets are cached
    # Backward-compatible training (the compat issue): the old artifact and the method.
    compatible_with: Path | None = None
    method: CompatMethod | None = None
    progress: bool = True
    # BT² only: an independent new model already trained (the same config without compatibility; its
    # gallery tower) to distil from, instead of training ``<name>-independent`` first
    teacher: Path | None = None

    def __post_init__(self) -> None:
        if self.teacher is not None and self.method != "bt2":
            raise TrainingError("a teacher is for --method bt2 only (BT² distils from it)")


@dataclass
class TrainResult:
    artifact: Path
    metrics: dict[str, Any] = field(default_factory=dict)


class Recipe(Protocol):
    name: str

    def train(self, request: TrainRequest) -> TrainResult: ...

    def evaluate(self, artifact: Path, data: str | None, data_dir: Path | None) -> dict[str, Any]: ...


R = TypeVar("R")
_RECIPES: dict[str, Any] = {}


def register_recipe(name: str) -> Callable[[R], R]:
    def wrap(cls: R) -> R:
        if name in _RECIPES and _RECIPES[name] is not cls:
            raise ValueError(f"recipe '{name}' is registered twice")
        cls.name = name  # type: ignore[attr-defined]
        _RECIPES[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    for module in RECIPE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A recipe module not written yet must not hide the others; any other import error is a bug.
            if exc.name != module:
                raise


def recipe(name: str) -> Recipe:
    if name not in _RECIPES:
        _load_all()
    if name not in _RECIPES:
        raise TrainingError(f"unknown recipe '{name}'; known: {sorted(_RECIPES)}")
    return _RECIPES[name]()  # type: ignore[no-any-return]


def recipe_names() -> list[str]:
    _load_all()
    return sorted(_RECIPES)


def train_teacher(request: TrainRequest, default_name: str, train: Callable[[TrainRequest], Path]) -> Any:
    """BT²'s teacher: ``request.teacher``, or the same config trained on its own (no compatibility) as
    ``<name>-independent``.

    ``train`` runs the recipe on that request and returns the artifact the teacher's features come
    from (a two-tower recipe: its gallery tower). Returns the loaded ``Encoder``."""
    import dataclasses

    from models.core.artifact import verify_artifact
    from models.core.registry import load_encoder

    if request.teacher is not None:  # trained already (a sweep shares one across its BT² runs)
        verify_artifact(request.teacher)
        return load_encoder(request.teacher)
    config = {k: v for k, v in request.config.items() if k not in ("compat", "teacher")}
    config["name"] = f"{config.get('name', default_name)}-independent"
    alone = dataclasses.replace(request, config=config, compatible_with=None, method=None, teacher=None)
    return load_encoder(train(alone))
