"""Bridges: an upgrade between encoders nobody trained for compatibility, served like any encoder.

A bridge is an artefact directory in the models dir (``spec.json`` with ``family: "bridge"``,
``model.safetensors`` with the fitted weights, ``manifest.json``), made by a migration from calibration
pairs (``models.compat.pretrained``). Its spec names the encoders it composes (``config.old`` /
``config.new``); ``load_bridge`` builds it from those encoders, so it needs no network of its own:

* ``fuse`` (d_old dims, ``compatible_with`` old): SLERP(old(x), Procrustes(new(x)), blend). A query is
  encoded by both models and, because the fused vector lives in the old space, it searches the stored
  old vectors in full; the fused score is the blend of the old and the mapped new score.
* ``adapter`` (d_old + d_extra dims, ``compatible_with`` old on the first d_old): a head on the frozen new
  encoder, BT²-style. Old vectors are searched through the prefix; a backfill re-encodes the gallery with
  the bridge, whose extra dims keep the new model's information.
* ``transform`` (d_new dims, compatible with nothing by spec): the query encoder is the new encoder; the
  fitted map rewrites *stored* old vectors into its space (``TransformBridge.rewrite``), so the old
  gallery is searched without its raw inputs (the collection keeps the rewritten copy as derived data).

Because fuse and adapter are ``compatible_with`` the old encoder, the collections' prefix search, writes
and backfills treat them like a BT²-trained model. Key: ``<new name>@<new version>.<method>-<digest>``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from models.compat.heads import CompatModel
from models.compat.pretrained import AdapterModel, FuseModel, ProcrustesMap, ResidualMap, TransformModel, unit
from models.core.artifact import TORCH_FILE, publish_artifact, verify_artifact
from models.core.batching import forward_all
from models.core.encoder import Batch, Encoder, FloatArray
from models.core.errors import ArtifactError
from models.core.registry import load_encoder
from models.core.spec import EncoderSpec, split_key

FAMILY = "bridge"
BRIDGE_METHODS = ("fuse", "adapter", "transform")
INPUTS = "inputs"  # the one batch key: the raw inputs, as an object array (one row per input)
EncoderGetter = Callable[[str], Encoder]
Fitted = FuseModel | AdapterModel | TransformModel


def is_bridge(spec: EncoderSpec) -> bool:
    return spec.family == FAMILY


class BridgeEncoder:
    """The ``Encoder`` protocol over the composed encoders. ``preprocess`` checks each input with every
    part (so a bad input fails before any forward) and keeps the raw inputs; ``forward`` runs the parts'
    three stages and the bridge's map; ``postprocess`` has nothing left to do (rows are unit already)."""

    backend = "bridge"

    def __init__(self, spec: EncoderSpec, parts: dict[str, Encoder], combine: Callable[..., np.ndarray]) -> None:
        if spec.modality == "face":
            raise ArtifactError(f"{spec.key}: bridges do not serve face encoders (one input may give several faces)")
        self.spec = spec
        self.parts = parts
        self.combine = combine

    def preprocess(self, inputs: Sequence[Any]) -> Batch:
        for part in self.parts.values():
            part.preprocess(inputs)  # raises the part's own error for a bad input
        rows = np.empty(len(inputs), dtype=object)
        rows[:] = list(inputs)
        return {INPUTS: rows}

    def forward(self, batch: Batch, threads: int | None = None) -> np.ndarray:
        inputs = list(batch[INPUTS])
        vectors = {}
        for name, part in self.parts.items():
            inner = part.preprocess(inputs)  # length-grouped below: one forward padded to the longest input
            vectors[name] = part.postprocess(forward_all(part.forward, inner, threads), inner)  # (n, d_part)
        return self.combine(**vectors)  # (n, spec.dim)

    def postprocess(self, raw: np.ndarray, batch: Batch) -> FloatArray:
        return np.asarray(raw, dtype=np.float32)


class TransformBridge(BridgeEncoder):
    """Queries are the new encoder's vectors; ``rewrite`` maps stored old vectors into that space."""

    def __init__(self, spec: EncoderSpec, new: Encoder, model: TransformModel) -> None:
        super().__init__(spec, {"new": new}, lambda new: unit(new))
        self.model = model

    def rewrite(self, old_vectors: np.ndarray) -> FloatArray:
        return self.model.apply(old_vectors).astype(np.float32)  # (n, d_new), unit rows


# ---- writing a bridge -----------------------------------------------------------------------------------


def bridge_key(method: str, old: EncoderSpec, new: EncoderSpec, weights: dict[str, np.ndarray]) -> str:
    """A key naming the new encoder, the method and a digest of the fitted weights (immutable artefact)."""
    digest = hashlib.sha256(f"{old.key}|{new.key}|{method}".encode())
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(weights[name]).tobytes())
    key = f"{new.name}@{new.version}.{method}-{digest.hexdigest()[:10]}"
    split_key(key)
    return key


def bridge_weights(method: str, model: Fitted) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, config) that ``load_bridge`` rebuilds ``model`` from."""
    if method == "fuse" and isinstance(model, FuseModel):
        return {"procrustes": model.procrustes.weight}, {"blend": model.blend}
    if method == "adapter" and isinstance(model, AdapterModel):
        state = {k: v.detach().cpu().numpy() for k, v in model.module.state_dict().items()}
        hidden = int(state["backbone.mlp.0.weight"].shape[0])
        return state, {"hidden": hidden, "d_old": model.d_old}
    if method == "transform" and isinstance(model, TransformModel):
        tensors = {"linear": model.linear}
        config: dict[str, Any] = {"kind": model.kind}
        if model.mlp is not None:
            tensors.update({f"mlp.{k}": v.detach().cpu().numpy() for k, v in model.mlp.state_dict().items()})
            config["hidden"] = int(tensors["mlp.mlp.0.weight"].shape[0])
        return tensors, config
    raise ValueError(f"cannot save a {type(model).__name__} as a '{method}' bridge")


def write_bridge(models_dir: Path, method: str, old: EncoderSpec, new: EncoderSpec, model: Fitted,
                 report: dict[str, Any] | None = None) -> EncoderSpec:  # fmt: skip
    """Publish the fitted ``model`` as a bridge artefact (atomic, durable, manifested); its spec."""
    if old.modality != new.modality:
        raise ValueError(f"{new.key} takes {new.modality} input but {old.key} takes {old.modality}")
    tensors, config = bridge_weights(method, model)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    dims = {"fuse": old.dim, "adapter": int(tensors["backbone.linear.weight"].shape[0]) if method == "adapter"
            else 0, "transform": new.dim}  # fmt: skip
    key = bridge_key(method, old, new, tensors)
    name, version = split_key(key)
    spec = EncoderSpec(
        name=name, version=version, family=FAMILY, modality=new.modality, dim=dims[method],
        compatible_with=old.key if method != "transform" else None,
        compat_dims=old.dim if method != "transform" else None,
        config={"bridge": method, "old": old.key, "new": new.key, **config},
        description=f"{method} bridge from {old.key} to {new.key}, fitted on calibration pairs",
        source="ers migration (models.compat.pretrained)", license=new.license,
    )  # fmt: skip
    destination = models_dir / key
    if destination.is_dir():
        return verify_artifact(destination)  # the same weights were published before
    staging = Path(tempfile.mkdtemp(prefix=".bridge-", dir=models_dir))
    try:
        spec.save(staging)
        save_file(tensors, str(staging / TORCH_FILE))
        if report is not None:
            (staging / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=float) + "\n")
        return publish_artifact(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---- loading a bridge -----------------------------------------------------------------------------------


def load_bridge(directory: Path, get_encoder: EncoderGetter) -> BridgeEncoder:
    """The bridge in ``directory``, built over the installed encoders it names (``get_encoder``)."""
    spec = verify_artifact(directory)
    if not is_bridge(spec):
        raise ArtifactError(f"{spec.key} is not a bridge (family '{spec.family}')")
    config = spec.config
    method = config.get("bridge")
    tensors = load_file(str(directory / TORCH_FILE))
    new = get_encoder(str(config["new"]))
    if method == "fuse":
        fuse = FuseModel(ProcrustesMap(tensors["procrustes"]), float(config["blend"]))
        old = get_encoder(str(config["old"]))
        return BridgeEncoder(spec, {"old": old, "new": new}, lambda old, new: fuse.query(old, new))
    if method == "adapter":
        d_old, hidden = int(config["d_old"]), int(config["hidden"])
        linear = tensors["backbone.linear.weight"].T  # (d_new, dim)
        module = CompatModel(ResidualMap(np.zeros_like(linear), hidden), None)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
        adapter = AdapterModel(module.eval(), d_old)
        return BridgeEncoder(spec, {"new": new}, lambda new: adapter.apply(new))
    if method == "transform":
        return TransformBridge(spec, new, _transform_model(spec, tensors))
    raise ArtifactError(f"{spec.key}: unknown bridge method '{method}'; known: {BRIDGE_METHODS}")


def _transform_model(spec: EncoderSpec, tensors: dict[str, np.ndarray]) -> TransformModel:
    mlp = None
    if spec.config.get("kind") == "mlp":
        mlp = ResidualMap(tensors["linear"], int(spec.config["hidden"]))
        state = {k[len("mlp.") :]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith("mlp.")}
        mlp.load_state_dict(state, strict=True)
        mlp.eval()
    return TransformModel(str(spec.config.get("kind")), tensors["linear"], mlp)


def load_transform(directory: Path) -> TransformModel:
    """The old -> new map of a ``transform`` bridge alone (no encoder): what rewrites stored vectors."""
    spec = verify_artifact(directory)
    if spec.config.get("bridge") != "transform":
        raise ArtifactError(f"{spec.key} is not a transform bridge")
    return _transform_model(spec, load_file(str(directory / TORCH_FILE)))


def load_any(directory: Path, get_encoder: EncoderGetter, threads: int = 1) -> Encoder:
    """The artefact in ``directory``: a bridge over ``get_encoder``'s encoders, or a model on its backend."""
    spec = verify_artifact(directory)
    if is_bridge(spec):
        return load_bridge(directory, get_encoder)
    return load_encoder(directory, threads=threads)
