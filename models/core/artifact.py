"""Artifact directories: ``spec.json`` + weights (``model.onnx`` and/or ``model.safetensors``) +
``manifest.json`` with the sha256 of every file, checked before anything is loaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from models.core.durable import publish_dir
from models.core.errors import ArtifactError
from models.core.spec import SPEC_FILE, EncoderSpec

MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
TORCH_FILE = "model.safetensors"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path) -> dict[str, str]:
    """Hash every file of the artifact (except the manifest itself) into ``manifest.json``."""
    files = {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"sha256": files}, indent=2, sort_keys=True) + "\n")
    return files


def verify_artifact(directory: Path) -> EncoderSpec:
    """Check the manifest and return the spec; raise ArtifactError naming the bad file."""
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory")
    try:
        manifest = json.loads((directory / MANIFEST).read_text())["sha256"]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{directory / MANIFEST} is missing or unreadable") from exc
    if SPEC_FILE not in manifest:
        raise ArtifactError(f"{directory}: manifest does not cover {SPEC_FILE}")
    for name, expected in manifest.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: {name} listed in the manifest is missing")
        if sha256_file(path) != expected:
            raise ArtifactError(f"{directory}: {name} fails its sha256 check (corrupt or modified)")
    spec = EncoderSpec.load(directory)
    if not (directory / ONNX_FILE).exists() and not (directory / TORCH_FILE).exists():
        raise ArtifactError(f"{directory}: neither {ONNX_FILE} nor {TORCH_FILE} is present")
    return spec


def publish_artifact(staging: Path, destination: Path) -> EncoderSpec:
    """Manifest ``staging``, verify it, then publish it durably and atomically as ``destination``
    (replacing an old copy): a loader sees the old artifact or the new one, never a mix."""
    write_manifest(staging)
    spec = verify_artifact(staging)
    destination.parent.mkdir(parents=True, exist_ok=True)
    publish_dir(staging, destination)
    return spec
