"""encode_batch + the Redis result format: raw inputs travel back only for collections that keep them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.jobs.encode import Target, encode_batch
from indexer.jobs.model import Item
from indexer.jobs.streams import pack_result, pack_task, unpack_result, unpack_task
from models.core.registry import load_encoder
from tests.conftest import install_zoo_model


def _wire(fields: dict[str, object]) -> dict[bytes, bytes]:
    """What redis-py hands back for a stream entry: bytes keys and values."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def test_sources_only_for_collections_that_keep_them(tmp_path: Path, zoo_dirs: tuple[Path, Path]) -> None:
    key = install_zoo_model("minilm-l3", tmp_path, zoo_dirs)
    encoder = load_encoder(tmp_path / "models" / key)
    items = [Item("a", "text", "red heart"), Item("b", "text", "cat face"), Item("v", "vector", [0.0] * 384)]
    for keep in (False, True):
        target = Target("c", encoder.spec.dim, key, keep_sources=keep)
        _, _, wire_target, entries, _ = unpack_task(_wire(pack_task("job", 0, target, items, 1000)))
        assert wire_target == target
        enc = encode_batch(0, entries, wire_target, lambda _k: encoder)
        assert enc.ids == ["a", "b", "v"] and enc.vectors.shape == (3, encoder.spec.dim)  # in item order
        _, _, back, _ = unpack_result(_wire(pack_result("job", "1-0", enc, [])))
        np.testing.assert_array_equal(back.vectors, enc.vectors)
        assert back.sources is not None
        kept = [s if s is None else s.to_json() for s in back.sources]
        if keep:
            assert kept[0] is not None and kept[1] is not None and kept[2] is None  # vectors have no source
        else:
            assert kept == [None, None, None]
