"""Image–caption pairs for the cross-modal recipes: the emoji data set, or a user's CSV.

A ``PairItem`` is one image with its captions (the first is the canonical one, used for evaluation).
- Emoji (``models.data.emoji``): 1,911 concepts; captions are the Unicode name, the short names,
  and those with the subcategory and category words ("heavy black heart", "heart", "heart smileys
  emotion"...). Training uses the Google-style drawings, evaluation the Twitter-style ones.
- CSV: a header with ``image_path`` and ``caption`` (other columns ignored); image paths relative
  to the CSV file; rows of the same image are grouped, so COCO-style "5 captions per image" works.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.core.errors import ModelError
from models.training.recipe import TrainingError

EMOJI_SOURCES = {"emoji": "twitter", "emoji-twitter": "twitter", "emoji-google": "google"}
EVAL_SPLITS = {"val": 1, "test": 0}  # the halves of the emoji evaluation items: odd- and even-numbered


@dataclass(frozen=True)
class PairItem:
    key: str  # a stable id: the emoji code, or the image path as written in the CSV
    image: bytes = b""  # encoded image (PNG, JPEG...)
    captions: tuple[str, ...] = ()


@dataclass(frozen=True)
class PairData:
    train: list[PairItem]
    eval: list[PairItem]
    description: str


def _words(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").replace("&", " ").split()).lower()


def emoji_captions(name: str, short_names: Sequence[str], category: str, subcategory: str) -> tuple[str, ...]:
    """The name first, then short names, then each with the (sub)category words: the words people
    search with ("heart") sit beside the old Unicode name ("heavy black heart")."""
    name, shorts = _words(name), [_words(s) for s in short_names]
    sub, cat = _words(subcategory), _words(category)
    captions = [name, *shorts, f"{name} {sub}", *(f"{s} {cat}" for s in shorts[:1])]
    return tuple(dict.fromkeys(c for c in captions if c.strip()))


@functools.lru_cache(maxsize=2)
def _emoji(cache_dir: Path, limit: int | None) -> dict[str, list[PairItem]]:
    from models.data.emoji import load_emoji

    try:
        emojis = load_emoji(cache_dir, limit)
    except ModelError as exc:
        raise TrainingError(f"cannot load the emoji data: {exc.message}") from exc
    out: dict[str, list[PairItem]] = {}
    for style in ("google", "twitter"):
        out[style] = [
            PairItem(e.code, e.png(style), emoji_captions(e.name, e.short_names, e.category, e.subcategory))
            for e in emojis
        ]
    return out


def emoji_pairs(cache_dir: Path, limit: int | None, style: str) -> list[PairItem]:
    return _emoji(cache_dir, limit)[style]


def load_pairs_csv(path: Path) -> list[PairItem]:
    """Items from a CSV of ``image_path,caption`` rows; a clear TrainingError names a bad row."""
    if not path.is_file():
        raise TrainingError(f"pairs file {path} does not exist")
    grouped: dict[str, list[str]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"image_path", "caption"} - set(reader.fieldnames or [])
            if missing:
                raise TrainingError(f"{path}: the header needs image_path and caption; missing {sorted(missing)}")
            for line, row in enumerate(reader, start=2):
                image, caption = (row.get("image_path") or "").strip(), (row.get("caption") or "").strip()
                if not image or not caption:
                    raise TrainingError(f"{path}:{line}: image_path and caption must both be non-empty")
                grouped.setdefault(image, []).append(caption)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrainingError(f"{path}: cannot read it as UTF-8 CSV: {exc}") from exc
    if not grouped:
        raise TrainingError(f"{path}: no rows")
    items = []
    for image, captions in grouped.items():
        file = path.parent / image
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise TrainingError(f"{path}: image {image} (resolved to {file}) cannot be read: {exc}") from exc
        items.append(PairItem(image, data, tuple(dict.fromkeys(captions))))
    return items


def load_eval_items(source: str, cache_dir: Path, limit: int | None) -> list[PairItem]:
    """Every item of ``source`` (``emoji``/``emoji-twitter``, ``emoji-google``, or a CSV path) to evaluate on."""
    if source in EMOJI_SOURCES:
        return emoji_pairs(cache_dir, limit, EMOJI_SOURCES[source])
    return load_pairs_csv(Path(source))


def load_pair_data(
    source: str,
    cache_dir: Path,
    limit: int | None,
    eval_source: str | None,
    eval_fraction: float,
    seed: int,
    holdout_concepts: float = 0.0,
    split_seed: int = 0,
    eval_split: str = "all",
) -> PairData:
    """Train and evaluation items. Emoji: Google style to train, Twitter style (same concepts) to
    evaluate; with ``holdout_concepts``, that fraction of the concepts (drawn with ``split_seed``, the
    same for every training seed) is left out of training and only those are evaluated: unseen
    concepts, not just an unseen drawing style. CSV: ``eval_source`` if given, else a seeded
    ``eval_fraction`` of the images held out. Emoji ``eval_split``: ``val`` keeps the odd-numbered
    evaluation items, ``test`` the even-numbered ones (disjoint halves), ``all`` every one."""
    if eval_split not in ("all", *EVAL_SPLITS) or (eval_split != "all" and source != "emoji"):
        raise TrainingError(f"eval_split must be all, val or test (val and test only for the emoji source), "
                            f"got '{eval_split}'")  # fmt: skip
    if holdout_concepts and (source != "emoji" or not 0.0 < holdout_concepts < 1.0):
        raise TrainingError("holdout_concepts is for the emoji source and must be between 0 and 1 "
                            "(a CSV holds images out with eval_fraction)")  # fmt: skip
    if source == "emoji":
        train = emoji_pairs(cache_dir, limit, "google")
        evaluation = load_eval_items(eval_source or "emoji-twitter", cache_dir, limit)
        described = f"emoji (Google style, {len(train)} concepts) → {eval_source or 'emoji-twitter'}"
        if holdout_concepts:
            order = np.random.default_rng(split_seed).permutation(len(train))
            held_keys = {train[int(i)].key for i in order[: max(1, round(holdout_concepts * len(train)))]}
            train = [it for it in train if it.key not in held_keys]
            evaluation = [it for it in evaluation if it.key in held_keys]
            described = (f"emoji (Google style, {len(train)} concepts) → {eval_source or 'emoji-twitter'} "
                         f"of {len(evaluation)} held-out concepts (split seed {split_seed})")  # fmt: skip
        if eval_split != "all":
            evaluation = evaluation[EVAL_SPLITS[eval_split] :: 2]
            described += f", {eval_split} half ({len(evaluation)} items)"
        return PairData(train, evaluation, described)
    items = load_pairs_csv(Path(source))
    if limit is not None:
        items = items[:limit]
    if eval_source is not None:
        return PairData(items, load_eval_items(eval_source, cache_dir, None), f"{source} → {eval_source}")
    if not 0.0 < eval_fraction < 1.0:
        raise TrainingError("eval_fraction must be between 0 and 1 when no eval_source is given")
    order = np.random.default_rng(seed).permutation(len(items))
    n_eval = max(1, round(len(items) * eval_fraction))
    if n_eval >= len(items):
        raise TrainingError(f"{source}: {len(items)} images are too few to hold out an evaluation set")
    held = {int(i) for i in order[:n_eval]}
    train = [it for i, it in enumerate(items) if i not in held]
    evaluation = [it for i, it in enumerate(items) if i in held]
    return PairData(train, evaluation, f"{source} ({len(train)} train / {len(evaluation)} held-out images)")
