"""Save a family's PyTorch module as safetensors + ONNX, and measure ONNX/PyTorch parity."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.core.artifact import ONNX_FILE, TORCH_FILE
from models.core.backends import OnnxRunner, TorchRunner
from models.core.encoder import Family, network_inputs
from models.core.errors import ArtifactError
from models.core.spec import EncoderSpec


def save_weights(module: Any, directory: Path) -> Path:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    path = directory / TORCH_FILE
    save_file(state, str(path))
    return path


def export_onnx(family: Family, module: Any, directory: Path, dynamic: dict[str, dict[int, str]] | None = None) -> Path:
    """Trace ``module`` on the family's example inputs; batch (and any ``dynamic``) axes stay free."""
    import torch

    batch = network_inputs(family.preprocess(family.example_inputs()))
    args = tuple(torch.from_numpy(np.ascontiguousarray(batch[n])) for n in family.input_names)
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in family.input_names}
    for name, extra in (dynamic or {}).items():
        axes[name] = {**axes.get(name, {}), **extra}
    axes[family.output_name] = {0: "batch"}
    path = directory / ONNX_FILE
    torch.onnx.export(
        module.eval(),
        args,
        str(path),
        input_names=list(family.input_names),
        output_names=[family.output_name],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    return path


def parity(family: Family, module: Any, onnx_path: Path, inputs: Sequence[Any]) -> float:
    """Max abs difference between PyTorch and ONNX Runtime raw outputs on ``inputs``."""
    batch = network_inputs(family.preprocess(inputs))
    torch_out = TorchRunner(module, family.input_names, device="cpu")(batch)
    onnx_out = OnnxRunner(onnx_path)(batch)
    return float(np.max(np.abs(torch_out - onnx_out)))


def write_artifact(
    family: Family,
    module: Any,
    destination: Path,
    max_diff: float = 1e-4,
    dynamic: dict[str, dict[int, str]] | None = None,
    extra_files: dict[str, Path] | None = None,
) -> EncoderSpec:
    """Save weights + ONNX + spec for ``module`` and publish ``destination`` after a parity check.

    ``dynamic``: axes besides the batch left free in the ONNX graph (a text model's sequence axis).
    ``extra_files``: files the family reads at preprocessing (e.g. ``tokenizer.json``), copied in first.
    """
    from models.core.artifact import publish_artifact

    staging = destination.with_name(f".staging-{destination.name}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name, source in (extra_files or {}).items():
        shutil.copyfile(source, staging / name)
    family.directory = staging
    save_weights(module, staging)
    export_onnx(family, module, staging, dynamic)
    family.spec.save(staging)
    diff = parity(family, module, staging / ONNX_FILE, family.example_inputs())
    if diff > max_diff:
        shutil.rmtree(staging)
        raise ArtifactError(f"{family.spec.key}: ONNX differs from PyTorch by {diff:.2e} (> {max_diff:.0e})")
    return publish_artifact(staging, destination)
