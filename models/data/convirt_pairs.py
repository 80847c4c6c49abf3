"""Data and evaluation of the ConVIRT recipe: image–text pairs, the held-out split, precision@k by label.

Evaluation follows the paper's retrieval protocol: a query retrieves from a gallery of held-out images
and scores precision@k, the share of the top k that carry the query's label. Image->image queries with
an image (emoji: the Google drawing against the Twitter drawings of the held-out concepts; CSV: each
held-out image against the others), text->image with the paired text. ``chance`` is what a random
ranking scores on average (the share of same-label items in the gallery), the floor for every row.
The report side (``--data iu-reports``) scores report->report precision@k by MeSH heading on the
Indiana University reports, beside a TF-IDF bag-of-words baseline.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.core.errors import ModelError
from models.training.recipe import TrainingError

KS = (5, 10, 50)
EMOJI_LABELS = ("category", "subcategory")
REPORTS = "iu-reports"


@dataclass
class PairData:
    train_images: list[list[Any]]  # per training pair, its image views (emoji: Google and Twitter drawings)
    train_texts: list[str]
    gallery: list[Any]
    gallery_labels: list[str]
    image_queries: list[Any]
    query_labels: list[str]
    queries_are_gallery: bool  # each query is also in the gallery: leave it out of its own results
    texts: list[str]  # text queries, paired with the gallery images
    text_labels: list[str]
    label_name: str
    description: str


def held_out(key: str, test_percent: int) -> bool:
    """A split by a hash of a stable id: the same items are held out whatever the seed or limit."""
    return zlib.crc32(key.encode()) % 100 < test_percent


def role(key: str, test_percent: int, val_percent: int) -> str:
    """The item's side of the split: "train", "held" (evaluated) or "unused". Without ``val_percent``
    the test items are held; with it, a second hash of the id carves the validation items out of the
    training ones and the test items are unused."""
    if held_out(key, test_percent):
        return "unused" if val_percent else "held"
    return "held" if val_percent and held_out(f"val:{key}", val_percent) else "train"  # the probes' split too


def zoo_artifact(name: str, data_dir: Path) -> Path:
    from models.zoo import pull

    try:
        spec = pull(name, data_dir / "models", data_dir / "cache")
    except ModelError as exc:
        raise TrainingError(f"convirt needs the zoo model {name}: {exc.message}") from exc
    return data_dir / "models" / spec.key


def _emoji_pairs(limit: int | None, test_percent: int, label: str, data_dir: Path, val_percent: int) -> PairData:
    from models.data.emoji import load_emoji

    if label not in EMOJI_LABELS:
        raise TrainingError(f"emoji label must be one of {EMOJI_LABELS}, got '{label}'")
    emoji = load_emoji(data_dir / "cache", limit=limit)
    sides = [role(e.code, test_percent, val_percent) for e in emoji]
    train = [e for e, side in zip(emoji, sides, strict=True) if side == "train"]
    test = [e for e, side in zip(emoji, sides, strict=True) if side == "held"]
    labels = [str(getattr(e, label)) for e in test]
    return PairData(
        train_images=[[e.google_png, e.twitter_png] for e in train], train_texts=[e.text for e in train],
        gallery=[e.twitter_png for e in test], gallery_labels=labels,
        image_queries=[e.google_png for e in test], query_labels=labels, queries_are_gallery=False,
        texts=[e.text for e in test], text_labels=labels, label_name=f"emoji {label}",
        description=f"emoji names and drawings, {len(train)} training / {len(test)} "
        f"{'validation' if val_percent else 'held-out'} concepts",
    )  # fmt: skip


def _csv_pairs(path: Path, limit: int | None, test_percent: int, val_percent: int) -> PairData:
    from models.data.medical import MedicalDataError, read_study_csv

    studies = read_study_csv(path, require_report=True, limit=limit)
    images = []
    for study in studies:
        try:
            images.append(study.path.read_bytes())
        except OSError as exc:
            raise MedicalDataError(f"{path}: cannot read image {study.path}: {exc}") from exc
    sides = [role(str(s.path), test_percent, val_percent) for s in studies]
    test = [i for i, side in enumerate(sides) if side == "held"]
    train = [i for i, side in enumerate(sides) if side == "train"]
    labels = [studies[i].primary_label() for i in test]
    return PairData(
        train_images=[[images[i]] for i in train], train_texts=[str(studies[i].report) for i in train],
        gallery=[images[i] for i in test], gallery_labels=labels,
        image_queries=[images[i] for i in test], query_labels=labels, queries_are_gallery=True,
        texts=[str(studies[i].report) for i in test], text_labels=labels, label_name="first positive finding",
        description=f"{path.name}, {len(train)} training / {len(test)} {'validation' if val_percent else 'held-out'} "
        "studies",
    )  # fmt: skip


def load_pairs(
    source: str,
    limit: int | None,
    test_percent: int,
    label: str,
    data_dir: Path,
    training: bool = True,
    val_percent: int = 0,
) -> PairData:
    """Training needs both sides of the split; evaluating a CSV may hold out all of it (100).
    ``val_percent`` > 0: that share of the training items is the held-out side instead, and the test
    items are neither trained nor evaluated (a validation split to choose settings on)."""
    if not (0 < test_percent < 100 if training else 0 < test_percent <= 100):
        raise TrainingError(f"test_percent must lie in 1..{99 if training else 100}, got {test_percent}")
    if not 0 <= val_percent < 100:
        raise TrainingError(f"val_percent must lie in 0..99, got {val_percent}")
    if source == "emoji":
        data = _emoji_pairs(limit, test_percent, label, data_dir, val_percent)
    elif Path(source).is_file():
        data = _csv_pairs(Path(source), limit, test_percent, val_percent)
    else:
        raise TrainingError(f"data must be 'emoji' or a CSV file of image path + report + labels, got '{source}'")
    if training and len(data.train_texts) < 2:
        raise TrainingError(f"{data.description}: too few training pairs")
    if len(data.gallery) < 2:
        raise TrainingError(f"{data.description}: too few held-out items to evaluate")
    return data


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # type: ignore[no-any-return]


def precision_at_k(
    queries: np.ndarray | None,
    gallery: np.ndarray | None,
    query_labels: Sequence[str],
    gallery_labels: Sequence[str],
    exclude_self: bool,
    ks: Sequence[int] = KS,
    per_query: bool = False,
) -> dict[str, Any]:
    """Mean share of each query's top k (cosine) that has its label; ``None`` vectors give the chance
    level (a random ranking's expectation, the same for every k). k is capped at the gallery size.
    ``per_query``: also ``p@{ks[0]}_per_query``, each query's precision at the first k (chance: its
    expectation), in query order, rounded to 6 decimals (``models.eval.seeds`` bootstraps it)."""
    q_labels, g_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    same = q_labels[:, None] == g_labels[None, :]  # (Q, G)
    if exclude_self:
        np.fill_diagonal(same, False)
    size = len(g_labels) - int(exclude_self)
    if queries is None or gallery is None:
        each = same.sum(axis=1) / size  # (Q,)
        out: dict[str, Any] = {f"p@{k}": float(np.mean(each)) for k in ks}
    else:
        sims = _normalise(queries) @ _normalise(gallery).T  # (Q, G)
        if exclude_self:
            np.fill_diagonal(sims, -np.inf)
        order = np.argsort(-sims, axis=1, kind="stable")  # (Q, G), best first
        hits = np.take_along_axis(same, order, axis=1)  # (Q, G)
        out = {f"p@{k}": float(hits[:, : min(k, size)].mean()) for k in ks}
        each = hits[:, : min(ks[0], size)].mean(axis=1)
    if per_query:
        out[f"p@{ks[0]}_per_query"] = [round(float(x), 6) for x in each]
    return out


def encode_all(encoder: Any, inputs: Sequence[Any], chunk: int = 64) -> np.ndarray:
    from models.core.encoder import encode

    return np.concatenate([encode(encoder, list(inputs[i : i + chunk])) for i in range(0, len(inputs), chunk)])


def bag_of_words(texts: Sequence[str]) -> np.ndarray:
    """TF-IDF of lower-cased words (``(n, vocabulary)``, L2-normalised): the report baseline."""
    docs = [re.findall(r"[a-z]+", t.lower()) for t in texts]
    vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
    tf = np.zeros((len(docs), len(vocab)), dtype=np.float32)
    for row, words in enumerate(docs):
        for word, count in Counter(words).items():
            tf[row, vocab[word]] = count
    idf = np.log((1 + len(docs)) / (1 + (tf > 0).sum(axis=0))) + 1.0
    return _normalise(tf * idf)


def nearest_text_features(
    train_texts: Sequence[str], train_features: np.ndarray, query_texts: Sequence[str]
) -> np.ndarray:
    """The text->image baseline with no training: each query text goes to its nearest training text by
    TF-IDF cosine and takes that training item's frozen image features (``train_features`` ``(n, d)``,
    or ``(n, views, d)``: the mean over its views). Ties (a repeated name; a query sharing no word with
    any training text ties them all) take the mean over every tied item. Returns ``(queries, d)``, to
    rank a gallery of frozen features by cosine.

    The vocabulary and IDF are fitted over the training and query texts together: the query texts
    (never their labels) only change the IDF weights; their words unseen in training score zero anyway."""
    features = np.asarray(train_features, dtype=np.float32)
    if features.ndim == 3:
        features = features.mean(axis=1)  # (n, d): one vector per training item, its views averaged
    words = bag_of_words([*train_texts, *query_texts])
    sims = words[len(train_texts) :] @ words[: len(train_texts)].T  # (Q, n)
    tied = sims >= sims.max(axis=1, keepdims=True) - 1e-6  # (Q, n)
    weights = tied.astype(np.float32)
    return (weights @ features) / weights.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def report_retrieval(
    embed: Callable[[list[str]], np.ndarray], data_dir: Path, max_per_label: int = 100, per_query: bool = False
) -> dict[str, Any]:
    """Report->report precision@k by MeSH heading on single-heading IU reports ("normal" and each finding
    capped at ``max_per_label`` reports, so the normal majority does not swamp the score). ``per_query``:
    also each report's precision at every k (``r2r_p@5_per_query`` etc., for each row), in the same report
    order on every call (``bench/convirt_reports.py`` bootstraps them, paired by report)."""
    from models.data.xray_reports import load_reports, single_label_reports

    kept: list[tuple[str, str]] = []
    per_label: Counter[str] = Counter()
    for report, label in single_label_reports(load_reports(data_dir / "cache")):
        if per_label[label] < max_per_label:
            per_label[label] += 1
            kept.append((report.text, label))
    texts, labels = [t for t, _ in kept], [lab for _, lab in kept]
    vectors, words = embed(texts), bag_of_words(texts)

    def scored(x: np.ndarray | None) -> dict[str, Any]:  # one k at a time: per-query scores at each k
        return {key: value for k in KS
                for key, value in precision_at_k(x, x, labels, labels, True, (k,), per_query).items()}  # fmt: skip

    scores = {"r2r": scored(vectors), "bow_r2r": scored(words), "chance_r2r": scored(None)}
    out = {f"{name}_{k}": v for name, values in scores.items() for k, v in values.items()}
    return {**out, "reports": len(texts), "mesh_labels": len(per_label)}


def evaluate_artifact(artifact: Path, data: str | None, data_dir: Path) -> dict[str, Any]:
    """Score a published tower pair through the served (ONNX) encoders, as the service runs them."""
    from models.core.artifact import verify_artifact
    from models.core.registry import load_encoder

    spec = verify_artifact(artifact)
    towers = spec.config.get("towers")
    if not isinstance(towers, dict) or not {"image", "text"} <= set(towers):
        raise TrainingError(f"{artifact}: spec names no image and text towers")
    paths = {role: artifact.parent / str(towers[role]) for role in ("image", "text")}
    encoders = {role: load_encoder(path, backend="onnx") for role, path in paths.items()}
    if data == REPORTS:
        return report_retrieval(lambda texts: encode_all(encoders["text"], texts), data_dir)
    config = spec.config
    source = data or str(config.get("data", "emoji"))
    same_protocol = source == config.get("data")
    held = int(config.get("test_percent", 20)) if same_protocol or source == "emoji" else 100
    pairs = load_pairs(source, config.get("limit") if same_protocol else None, held,
                       str(config.get("label", "category")), data_dir, training=False,
                       val_percent=int(config.get("val_percent", 0)) if same_protocol else 0)  # fmt: skip
    gallery = encode_all(encoders["image"], pairs.gallery)
    queries = gallery if pairs.queries_are_gallery else encode_all(encoders["image"], pairs.image_queries)
    texts = encode_all(encoders["text"], pairs.texts)
    i2i = precision_at_k(queries, gallery, pairs.query_labels, pairs.gallery_labels, pairs.queries_are_gallery)
    t2i = precision_at_k(texts, gallery, pairs.text_labels, pairs.gallery_labels, False)
    chance = precision_at_k(None, None, pairs.text_labels, pairs.gallery_labels, False)
    return {**{f"i2i_{k}": v for k, v in i2i.items()}, **{f"t2i_{k}": v for k, v in t2i.items()},
            **{f"chance_t2i_{k}": v for k, v in chance.items()}, "held_out": len(pairs.gallery)}  # fmt: skip
