"""Tiny text encoders for the upgrade domain: v1, v2 = v1 + 8 extra dims (compatible by spec and by
construction: its first 16 dims are v1's vectors) and an unrelated model of v1's width."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from indexer.collection import Collection
from indexer.index_policy import IndexOptions
from indexer.jobs.embedded import EmbeddedRunner
from indexer.jobs.model import JobOptions
from indexer.manager import CollectionManager
from indexer.store.sqlite import SqliteStore
from indexer.upgrade.compat import SpecCompat
from indexer.upgrade.migrations import Migrations
from models.core.encoder import Encoder
from models.core.export import write_artifact
from models.core.registry import load_encoder
from models.core.spec import EncoderSpec
from models.families.text_hash import HashedNgramFamily

V1, V2, OTHER = "tiny-text@1", "tiny-text@2", "other-text@1"
WIDTH, EXTRA = 16, 8
CONFIG = {"buckets": 256, "hidden": 32, "max_chars": 200}
TEXTS = [f"{animal} number {i}" for animal in ("cat", "dog", "fish", "bird") for i in range(6)]
LABELS = [animal for animal in ("cat", "dog", "fish", "bird") for _ in range(6)]


def write_models(models_dir: Path, card: dict[str, Any] | None = None) -> None:
    torch.manual_seed(0)
    v1 = HashedNgramFamily(EncoderSpec(name="tiny-text", version="1", family="hashed-ngram", modality="text",
                                       dim=WIDTH, config={**CONFIG, "dim": WIDTH}))  # fmt: skip
    old = v1.build_module()
    write_artifact(v1, old, models_dir / V1)
    spec = EncoderSpec(name="tiny-text", version="2", family="hashed-ngram", modality="text", dim=WIDTH + EXTRA,
                       compatible_with=V1, compat_dims=WIDTH, config={**CONFIG, "dim": WIDTH + EXTRA})  # fmt: skip
    v2 = HashedNgramFamily(spec)
    new = v2.build_module()
    new.hidden.load_state_dict(old.hidden.state_dict())
    with torch.no_grad():
        new.out.weight.copy_(torch.cat([old.out.weight, torch.randn(EXTRA, old.out.in_features)]))
        new.out.bias.copy_(torch.cat([old.out.bias, torch.zeros(EXTRA)]))
    extra = {}
    if card is not None:
        (models_dir / "metrics.json").write_text(json.dumps({"compat": card}))
        extra["metrics.json"] = models_dir / "metrics.json"
    write_artifact(v2, new, models_dir / V2, extra_files=extra)
    other = HashedNgramFamily(EncoderSpec(name="other-text", version="1", family="hashed-ngram", modality="text",
                                          dim=WIDTH, config={**CONFIG, "dim": WIDTH}))  # fmt: skip
    write_artifact(other, other.build_module(), models_dir / OTHER)


def embed(encoder: Encoder, texts: list[str]) -> np.ndarray:
    batch = encoder.preprocess(texts)
    return np.asarray(encoder.postprocess(encoder.forward(batch), batch))


@dataclass
class Upgrades:
    """One server's upgrade domain over real collections, store, job runner and encoders; ``loaded``
    lists every model the migrations asked for, in order."""

    models_dir: Path
    store: SqliteStore
    manager: CollectionManager
    runner: EmbeddedRunner
    migrations: Migrations
    loaded: list[str] = field(default_factory=list)

    def gallery(self, name: str = "c", keep_sources: bool = False) -> Collection:
        collection = self.manager.create(name, WIDTH, "cosine", encoder=V1, keep_sources=keep_sources)
        collection.upsert([f"t{i}" for i in range(len(TEXTS))], embed(load_encoder(self.models_dir / V1), TEXTS))
        return collection


MakeUpgrades = Callable[..., Upgrades]


@pytest.fixture
def make_upgrades(tmp_path: Path) -> Iterator[MakeUpgrades]:
    """``make_upgrades(card=...)``: the models (v2 with that report in its card), then the domain."""
    opened: list[Upgrades] = []

    def _make(card: dict[str, Any] | None = None) -> Upgrades:
        models_dir = tmp_path / "models"
        models_dir.mkdir()
        write_models(models_dir, card)
        store = SqliteStore(tmp_path / "meta.sqlite3")
        compat = SpecCompat(models_dir)
        manager = CollectionManager(tmp_path / "data", store, IndexOptions(background=False), compat)
        loaded: list[str] = []

        def get_encoder(key: str) -> Encoder:
            loaded.append(key)
            return load_encoder(models_dir / key)

        runner = EmbeddedRunner(store, manager, JobOptions(uploads_dir=tmp_path / "uploads"), get_encoder)
        migrations = Migrations(store, compat, models_dir, get_encoder, runner)
        upgrades = Upgrades(models_dir, store, manager, runner, migrations, loaded)
        opened.append(upgrades)
        return upgrades

    yield _make
    for upgrades in opened:
        upgrades.manager.close()
        upgrades.store.close()
