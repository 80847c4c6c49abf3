"""Unified Embedding (Coleman et al., 2023): feature multiplexing for categorical records.

Every categorical feature of both towers is hashed into ONE shared embedding table, each feature
with its own salt so that two features' values collide only by chance ("multiplexing"). The
variable-length variant gives a feature several chunks: several independent hashes whose rows are
concatenated, so a collision in one chunk is told apart by the others. The baseline layout, one
table per feature, is the same table split into disjoint row ranges (``FeatureSlot.offset/rows``),
so both layouts have exactly the same parameter count. The collision-free layout (the upper bound
the paper compares against) gives every known value of a feature its own rows through a vocabulary
saved in the spec, plus one row for values never seen in training.

A tower turns a record (``{"s": "1", "studage": "2"}``) into int64 row indices on the CPU with a
stable hash (blake2b; never Python's ``hash``, which is salted per process), then looks the rows up,
concatenates them and runs an MLP to a unit vector. Two towers (query on user features, item on item
features) share the table and are trained with in-batch softmax (``models.losses.contrastive``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.core.encoder import Batch, Family
from models.core.errors import InvalidEncoderInput
from models.core.registry import register_family

FAMILY = "unified-embedding"
TOWERS = ("query", "item")


@dataclass(frozen=True)
class FeatureSlot:
    """One feature's place in the table: its salt, its chunks, and the row range it hashes into."""

    name: str
    salt: str
    chunks: int = 1
    offset: int = 0
    rows: int = 0  # rows of the table this feature hashes into (all of them when multiplexed)
    vocabulary: tuple[str, ...] = ()  # collision-free: value i gets rows offset + (i + 1) * chunks + c; 0 is unseen

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocabulary", tuple(self.vocabulary))  # JSON gives a list


@dataclass(frozen=True)
class UnifiedConfig:
    table_rows: int = 4096
    emb_dim: int = 16
    hidden: int = 128  # 0: a linear map from the rows to the vector (matrix factorisation on id features)
    dim: int = 64
    query: tuple[FeatureSlot, ...] = ()
    item: tuple[FeatureSlot, ...] = ()

    def slots(self, tower: str) -> tuple[FeatureSlot, ...]:
        if tower not in TOWERS:
            raise ValueError(f"tower must be one of {TOWERS}, got '{tower}'")
        return self.query if tower == "query" else self.item

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UnifiedConfig:
        known = {k: data[k] for k in ("table_rows", "emb_dim", "hidden", "dim") if k in data}
        sides = {t: tuple(FeatureSlot(**f) for f in data.get(t, ())) for t in TOWERS}
        return cls(**known, query=sides["query"], item=sides["item"])


def checked_chunks(features: Mapping[str, Sequence[str]], chunks: Mapping[str, int] | None) -> dict[str, int]:
    """``chunks`` as a dict; a feature no tower uses is an error, never silently ignored."""
    unknown = sorted(set(chunks or {}) - {f for side in features.values() for f in side})
    if unknown:
        raise ValueError(f"chunks names features {unknown} that no tower has")
    return dict(chunks or {})


def layout(
    features: Mapping[str, Sequence[str]],
    cardinality: Mapping[str, int],
    table_rows: int,
    multiplexed: bool,
    chunks: Mapping[str, int] | None = None,
) -> dict[str, tuple[FeatureSlot, ...]]:
    """Feature slots per tower. Multiplexed: every feature hashes into all ``table_rows`` rows.

    One table per feature: features whose vocabulary (times chunks) fits in an equal share of the
    rows left get a row per value and chunk (no collisions; smallest first), and the rows left are
    split among the others in proportion to their vocabulary size.
    """
    chunks = checked_chunks(features, chunks)
    names = [f for side in features.values() for f in side]
    need = {f: max(1, cardinality.get(f, 1)) * chunks.get(f, 1) for f in names}
    if not multiplexed and table_rows < len(names):
        raise ValueError(f"{table_rows} rows cannot hold one table per feature for {len(names)} features")
    rows = {f: table_rows for f in names}
    if not multiplexed:
        rows, left, open_ = {}, table_rows, sorted(names, key=lambda f: need[f])
        while open_ and need[open_[0]] <= left // len(open_):
            rows[open_[0]] = need[open_[0]]
            left -= rows[open_.pop(0)]
        total = sum(need[f] for f in open_)
        for f in open_[:-1]:
            rows[f] = max(1, left * need[f] // total)
        if open_:
            rows[open_[-1]] = left - sum(rows[f] for f in open_[:-1])
    out: dict[str, tuple[FeatureSlot, ...]] = {}
    offset = 0
    for tower, side in features.items():
        slots = []
        for f in side:
            slots.append(FeatureSlot(f, f"{tower}:{f}", chunks.get(f, 1), 0 if multiplexed else offset, rows[f]))
            offset += 0 if multiplexed else rows[f]
        out[tower] = tuple(slots)
    return out


def collision_free_layout(
    features: Mapping[str, Sequence[str]],
    vocabularies: Mapping[str, Sequence[str]],
    chunks: Mapping[str, int] | None = None,
) -> tuple[dict[str, tuple[FeatureSlot, ...]], int]:
    """Slots with a row per known value and chunk (and one per chunk for unseen values), and the rows in all."""
    chunks = checked_chunks(features, chunks)
    out: dict[str, tuple[FeatureSlot, ...]] = {}
    offset = 0
    for tower, side in features.items():
        slots = []
        for f in side:
            vocab = tuple(sorted(set(vocabularies[f])))
            rows = (len(vocab) + 1) * chunks.get(f, 1)
            slots.append(FeatureSlot(f, f"{tower}:{f}", chunks.get(f, 1), offset, rows, vocab))
            offset += rows
        out[tower] = tuple(slots)
    return out, offset


def canonical_value(value: Any, feature: str, what: str) -> str:
    """Categorical values are strings or integers; ``7`` and ``"7"`` are the same category."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEncoderInput(
            f"{what}: feature '{feature}' must be a string or an integer, got {type(value).__name__}"
        )
    text = str(value).strip()
    if not text:
        raise InvalidEncoderInput(f"{what}: feature '{feature}' is empty")
    return text


def stable_hash(salt: str, chunk: int, value: str) -> int:
    """64-bit blake2b of salt, chunk and value: the same in every process and on every machine."""
    digest = hashlib.blake2b(f"{salt}\x1f{chunk}\x1f{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def as_record(value: Any, what: str) -> Mapping[str, Any]:
    """A record is a JSON object: a mapping, or its text (the ``/v1/embed`` inputs are strings)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidEncoderInput(f"{what}: a record must be a JSON object of feature -> value: {exc}") from exc
    if not isinstance(value, Mapping):
        raise InvalidEncoderInput(f"{what}: a record must be a JSON object of feature -> value")
    return value


def record_indices(records: Sequence[Any], slots: Sequence[FeatureSlot]) -> np.ndarray:
    """(n, total chunks) int64 table rows: chunk c of feature f -> offset_f + hash(salt_f, c, value) % rows_f.

    Features the tower does not use are ignored (a record may carry more than the tower needs).
    """
    width = sum(s.chunks for s in slots)
    out = np.zeros((len(records), width), dtype=np.int64)
    cache: dict[tuple[str, str], list[int]] = {}
    positions = {s.name: {v: i + 1 for i, v in enumerate(s.vocabulary)} for s in slots if s.vocabulary}
    for row, raw in enumerate(records):
        record = as_record(raw, f"record {row}")
        col = 0
        for slot in slots:
            if slot.name not in record:
                raise InvalidEncoderInput(
                    f"record {row}: feature '{slot.name}' is missing; this encoder needs {[s.name for s in slots]}"
                )
            value = canonical_value(record[slot.name], slot.name, f"record {row}")
            rows = cache.get((slot.name, value))
            if rows is None and slot.name in positions:  # collision-free: the value's own rows (0: unseen)
                base = slot.offset + positions[slot.name].get(value, 0) * slot.chunks
                rows = [base + c for c in range(slot.chunks)]
            elif rows is None:
                rows = [slot.offset + stable_hash(slot.salt, c, value) % slot.rows for c in range(slot.chunks)]
                cache[(slot.name, value)] = rows
            out[row, col : col + slot.chunks] = rows
            col += slot.chunks
    return out


def build_tower(cfg: UnifiedConfig, tower: str) -> Any:
    import torch
    import torch.nn as nn

    width = sum(s.chunks for s in cfg.slots(tower))

    class Tower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(cfg.table_rows, cfg.emb_dim)
            nn.init.normal_(self.table.weight, std=0.1)
            self.mlp = (
                nn.Sequential(nn.Linear(width * cfg.emb_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim))
                if cfg.hidden
                else nn.Linear(width * cfg.emb_dim, cfg.dim)
            )

        def forward(self, indices: Any) -> Any:
            # indices: (B, chunks) int64 -> (B, chunks, emb_dim) -> (B, chunks * emb_dim) -> (B, dim), unit length
            x = self.table(indices).flatten(1)
            return torch.nn.functional.normalize(self.mlp(x), dim=-1)

    return Tower()


def build_two_tower(cfg: UnifiedConfig) -> Any:
    """Query and item towers sharing one embedding table (the unified table of the paper)."""
    import torch.nn as nn

    class TwoTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query = build_tower(cfg, "query")
            self.item = build_tower(cfg, "item")
            self.item.table = self.query.table  # one table, shared by every feature of both towers

        def forward(self, query: Any, item: Any) -> tuple[Any, Any]:
            # query: (B, q_chunks), item: (B, i_chunks) -> two (B, dim) unit vectors
            return self.query(query), self.item(item)

    return TwoTower()


def parameter_count(cfg: UnifiedConfig) -> dict[str, int]:
    """Embedding rows × width, and the two MLPs (equal across layouts with the same chunks)."""
    mlps = 0
    for tower in TOWERS:
        width = sum(s.chunks for s in cfg.slots(tower)) * cfg.emb_dim
        if cfg.hidden:
            mlps += width * cfg.hidden + cfg.hidden + cfg.hidden * cfg.dim + cfg.dim
        else:  # one linear map
            mlps += width * cfg.dim + cfg.dim
    return {"embedding": cfg.table_rows * cfg.emb_dim, "mlp": mlps, "total": cfg.table_rows * cfg.emb_dim + mlps}


@register_family(FAMILY)
class UnifiedTowerFamily(Family):
    """One tower of a two-tower Unified Embedding model; ``spec.config["tower"]`` says which."""

    input_names = ("indices",)

    @property
    def cfg(self) -> UnifiedConfig:
        return UnifiedConfig.from_json(self.spec.config["model"])

    @property
    def tower(self) -> str:
        return str(self.spec.config["tower"])

    def preprocess(self, inputs: Sequence[Any]) -> Batch:
        return {"indices": record_indices(inputs, self.cfg.slots(self.tower))}

    def build_module(self) -> Any:
        return build_tower(self.cfg, self.tower)

    def example_inputs(self) -> Sequence[Any]:
        examples = self.spec.config.get("examples")
        if examples:
            return list(examples)
        return [{s.name: "0" for s in self.cfg.slots(self.tower)}, {s.name: "1" for s in self.cfg.slots(self.tower)}]
