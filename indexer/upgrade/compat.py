"""Which encoder versions' vectors a query may meet, and on how many dims, from the encoders' specs.

A collection stores the vectors of every encoder version it has served, one segment per version
(``indexer.segments``); a query of the active version compares with another segment only through
the leading dims that the specs' ``compatible_with`` chain names (``models.compat.report.compat_chain``).
``SpecCompat`` is that ``CompatResolver``; the service builds exactly one, in ``service/app.py``, and
shares it between the collections and the migrations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.compat.report import compat_chain
from models.core.errors import ArtifactError
from models.core.spec import EncoderSpec

# A version with no spec is looked for again after this long (it may have been pulled meanwhile).
NEGATIVE_RETRY_S = 10.0


class SpecCompat:
    """``CompatResolver`` over the specs in the models directory (read once each: an artefact's
    version is immutable). Versions the server has no spec for are labels on vectors clients made
    themselves: those are taken at their word and compared only at equal width."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self._specs: dict[str, EncoderSpec] = {}
        self._missing: dict[str, float] = {}  # key -> when it was last looked for
        self._lock = threading.Lock()
        self._maps: dict[str, Callable[[np.ndarray], np.ndarray]] = {}  # transform bridge key -> its map

    def spec(self, key: str) -> EncoderSpec | None:
        found = self._specs.get(key)
        if found is not None:
            return found
        with self._lock:
            missed = self._missing.get(key)
            if missed is not None and time.monotonic() - missed < NEGATIVE_RETRY_S:
                return None
            try:
                found = EncoderSpec.load(self.models_dir / key)
            except (ArtifactError, OSError, ValueError):
                self._missing[key] = time.monotonic()
                return None
            self._specs[key] = found
            self._missing.pop(key, None)
            return found

    def require(self, key: str) -> EncoderSpec:
        spec = self.spec(key)
        if spec is None:
            raise ArtifactError(f"no spec for encoder '{key}' in {self.models_dir}")
        return spec

    def chain(self, new: str, old: str) -> int | None:
        """``compat_chain`` over the installed specs; None when incompatible or a link is missing."""
        try:
            return compat_chain(self.require, new, old)
        except (ArtifactError, ValueError):
            return None

    def prefix(self, query: str | None, query_dim: int, segment: str | None, segment_dim: int) -> int | None:
        if query == segment:
            return segment_dim
        if query is None or segment is None or self.spec(query) is None or self.spec(segment) is None:
            return segment_dim if query_dim == segment_dim else None
        return self.chain(query, segment)

    def dim_of(self, version: str | None) -> int | None:
        spec = self.spec(version) if version is not None else None
        return spec.dim if spec is not None else None

    def rewriter(self, query: str | None, segment: str | None) -> Callable[[np.ndarray], np.ndarray] | None:
        """The fitted map of a ``transform`` bridge ``query`` whose old encoder is ``segment``."""
        spec = self.spec(query) if query is not None else None
        if spec is None or segment is None or spec.config.get("bridge") != "transform":
            return None
        if spec.config.get("old") != segment:
            return None
        with self._lock:
            if spec.key not in self._maps:
                # imported here: it brings torch, which would add ~2 s to every server start
                from models.compat.bridges import load_transform

                self._maps[spec.key] = load_transform(self.models_dir / spec.key).apply
            return self._maps[spec.key]
