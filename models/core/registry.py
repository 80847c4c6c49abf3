"""Families registered by name (like timm's ``register_model``), and loading an artifact."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from models.core.artifact import ONNX_FILE, TORCH_FILE, verify_artifact
from models.core.backends import OnnxRunner, TorchRunner
from models.core.encoder import Family, ModelEncoder
from models.core.errors import ArtifactError
from models.core.quantize import INT8, PRECISION_KEY

F = TypeVar("F", bound=type[Family])
_FAMILIES: dict[str, type[Family]] = {}
# Modules that register families; imported lazily so `import models` stays cheap.
FAMILY_MODULES = (
    "models.families.text_hash",
    "models.families.bert",
    "models.families.efficientnet",
    "models.families.face.resnet",
    "models.families.face.facenet",
    "models.families.face.common",
    "models.families.two_branch",
    "models.families.convirt",
    "models.families.unified",
    "models.families.fmnist_cnn",
)
Backend = Literal["auto", "onnx", "torch"]


def register_family(name: str) -> Callable[[F], F]:
    def wrap(cls: F) -> F:
        if name in _FAMILIES and _FAMILIES[name] is not cls:
            raise ValueError(f"family '{name}' is registered twice")
        cls.name = name
        _FAMILIES[name] = cls
        return cls

    return wrap


def family_class(name: str) -> type[Family]:
    if name not in _FAMILIES:
        for module in FAMILY_MODULES:
            importlib.import_module(module)
    if name not in _FAMILIES:
        raise ArtifactError(f"unknown encoder family '{name}'; known: {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def load_torch_module(family: Family, directory: Path) -> object:
    from safetensors.torch import load_file

    module = family.build_module()
    state = load_file(str(directory / TORCH_FILE))
    module.load_state_dict(state, strict=True)  # type: ignore[attr-defined]
    return module


def load_encoder(directory: Path, backend: Backend = "auto", threads: int = 1) -> ModelEncoder:
    """Verify an artifact directory and load it on the best available backend."""
    spec = verify_artifact(directory)
    family = family_class(spec.family)(spec, directory)
    has_onnx, has_torch = (directory / ONNX_FILE).exists(), (directory / TORCH_FILE).exists()
    precision = spec.config.get(PRECISION_KEY, "fp32")  # absent: an fp32 artifact
    if precision not in ("fp32", INT8):
        raise ArtifactError(f"{spec.key}: unknown precision '{precision}' in spec config")
    if precision == INT8:
        # Its weights exist only as the quantised ONNX graph: PyTorch would have to serve fp32 weights
        # (if any were present) under the int8 name, and fp16 conversion on CUDA would undo the int8.
        if backend == "torch":
            raise ArtifactError(f"{spec.key} is int8 and runs on ONNX Runtime only; use backend onnx or auto")
        if not has_onnx:
            raise ArtifactError(f"{directory} has no {ONNX_FILE} (an int8 artifact runs on ONNX Runtime only)")
        return ModelEncoder(family, OnnxRunner(directory / ONNX_FILE, threads, fp16_on_cuda=False), "onnx")
    if backend == "onnx" or (backend == "auto" and has_onnx):
        if not has_onnx:
            raise ArtifactError(f"{directory} has no {ONNX_FILE}")
        return ModelEncoder(family, OnnxRunner(directory / ONNX_FILE, threads), "onnx")
    if not has_torch:
        raise ArtifactError(f"{directory} has no {TORCH_FILE}")
    runner = TorchRunner(load_torch_module(family, directory), family.input_names)
    return ModelEncoder(family, runner, "torch")
