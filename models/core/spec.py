"""``EncoderSpec``: what an encoder is, saved as ``spec.json`` beside its weights."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from models.core.errors import ArtifactError

Modality = Literal["text", "image", "face", "record"]
MODALITIES = ("text", "image", "face", "record")
KEY_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)@([A-Za-z0-9_.\-]+)$")
SPEC_FILE = "spec.json"


def split_key(key: str) -> tuple[str, str]:
    """``"minilm-l6@1"`` -> ``("minilm-l6", "1")``."""
    match = KEY_RE.match(key)
    if not match:
        raise ValueError(f"encoder must look like name@version, got '{key}'")
    return match.group(1), match.group(2)


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    version: str
    family: str  # registry name of the code that runs it (e.g. "bert", "efficientnet-lite")
    modality: Modality
    dim: int
    metric: Literal["cosine", "ip", "l2"] = "cosine"
    # Backward-compatible upgrades: this model's vectors may be searched against those of
    # ``compatible_with``, comparing the first ``compat_dims`` dimensions.
    compatible_with: str | None = None
    compat_dims: int | None = None
    # Family-specific settings (max tokens, image size, normalisation, verification threshold...).
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""
    license: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncoderSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ArtifactError(f"spec has unknown fields {sorted(unknown)}")
        spec = cls(**data)
        if spec.modality not in MODALITIES:
            raise ArtifactError(f"spec modality must be one of {MODALITIES}, got '{spec.modality}'")
        if spec.dim < 1:
            raise ArtifactError("spec dim must be positive")
        split_key(spec.key)
        return spec

    def save(self, directory: Path) -> Path:
        path = directory / SPEC_FILE
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> EncoderSpec:
        path = directory / SPEC_FILE
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise ArtifactError(f"{path} is missing") from exc
        except (json.JSONDecodeError, TypeError) as exc:
            raise ArtifactError(f"{path} is not a valid encoder spec: {exc}") from exc
