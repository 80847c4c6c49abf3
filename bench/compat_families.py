"""Backward-compatible training per encoder family (issue 14): old/old, Independent, BCT, BT², OCA over seeds.

    .venv/bin/python bench/compat_families.py --family facenet --config facenet-tiny --seeds 5
    .venv/bin/python bench/compat_families.py --family two-branch --config two-branch-tiny --seeds 5 \\
        --v2 '{"train": {"epochs": 8}}'

Per seed: v1 is ``--config`` at that seed; every new model is ``--config`` with ``--v2`` over it (the
improvement: by default twice the epochs), trained by ``ers train``'s recipes: Independent (no
compatibility), then BCT, BT² (its teacher: an Independent model the recipe trains first) and OCA
against v1, each with the recipe's default compat weights (nothing is tuned here, on any split).

Scores (the BCT protocol, ``models.compat.report``, cosine, top-1 by label) on the seed's held-out items:

* facenet: the held-out identities' images, query = gallery, leave-self-out;
* two-branch: both drawings of each evaluation concept (i2i, by concept), and the captions against
  them (t2i, ``ers compat --queries``'s tower report);
* convirt: the held-out concepts' drawings by category (i2i), and their names against them (t2i);
* unified: recall@10 of the held-out ratings, each held-out student (query tower) against every
  lecturer (item tower), the lecturers it rated in training left out.

new/old is the new query model's first ``d_old`` dims against v1's gallery; Independent's new/old
compares two unrelated spaces (near chance). Mean ± 95% Student-t interval over seeds; the table and
its command go to ``--out`` (markdown + JSON).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.compat.report import embed, report_from_vectors, tower_report_from_vectors
from models.core.durable import atomic_write_bytes
from models.core.registry import load_encoder
from models.eval.stats import interval
from models.training.recipe import TrainRequest, recipe
from models.training.run import load_config

ROWS = ("Independent", "BCT", "BT²", "OCA")
METHODS = {"BCT": "bct", "BT²": "bt2", "OCA": "oca"}


def eval_sets(family: str, cfg: dict[str, Any], cache: Path) -> dict[str, tuple[list[Any], list[Any], Any]]:
    """name -> (gallery inputs, labels, queries or None); queries: (inputs, labels, kind)."""
    if family == "facenet":
        from models.data.identities import load_emoji_identities, split_by_identity

        test = split_by_identity(load_emoji_identities(cache, cfg["image_size"], cfg.get("limit")), cfg["holdout"],
                                 cfg.get("split_seed", 0))[1]  # fmt: skip
        return {"i2i": (list(test.crops), [test.names[y] for y in test.labels], None)}
    if family == "two-branch":
        from models.data.pairs import load_pair_data

        d = cfg.get("data", {})
        data = load_pair_data(d.get("source", "emoji"), cache, d.get("limit"), d.get("eval_source"),
                              d.get("eval_fraction", 0.1), cfg["seed"])  # fmt: skip
        drawn = {it.key: it for it in data.train}
        pairs = [(it, drawn[it.key]) for it in data.eval if it.key in drawn]
        images = [item.image for pair in pairs for item in pair]
        labels = [pair[0].key for pair in pairs for _ in pair]
        captions = ([p[0].captions[0] for p in pairs], [p[0].key for p in pairs], "text")
        return {"i2i": (images, labels, None), "t2i": (images, labels, captions)}
    if family == "convirt":
        from models.data.convirt_pairs import load_pairs

        reports = load_pairs(cfg["data"], cfg.get("limit"), cfg["test_percent"], cfg["label"], cache.parent)
        texts = (reports.texts, reports.text_labels, "text")
        gallery = (reports.gallery, reports.gallery_labels)
        return {"i2i": (*gallery, None), "t2i": (*gallery, texts)}
    raise SystemExit(f"--family {family}: not measured by this script (facenet, two-branch, convirt, unified)")


def unified_scores(old: Path, new: Path, cfg: dict[str, Any], cache: Path) -> dict[str, dict[str, float]]:
    """Unified: recall@10 of each held-out student's held-out lecturers, searched by the query (student)
    tower among every item (lecturer) vector, items the student rated in training left out."""
    from models.core.encoder import encode
    from models.data.insteval import holdout_split
    from models.training.unified import load_data, recall_at_k, seen_matrix

    data = load_data(cfg["data"], cfg.get("columns"), cfg.get("limit"), cache)
    split = holdout_split(data, cfg["min_rating"], cfg["holdout"], cfg.get("split_seed", 0))
    evaluated = np.asarray(sorted(split.held_out), dtype=np.int64)
    seen = seen_matrix(data, split.train)
    records = [data.queries[int(r)] for r in evaluated]

    def towers(item_artifact: Path) -> tuple[np.ndarray, np.ndarray]:
        queries = encode(load_encoder(query_tower(item_artifact, "record")), records)
        return queries, encode(load_encoder(item_artifact), data.items)

    (old_q, old_i), (new_q, new_i) = towers(old), towers(new)
    d = old_i.shape[1]
    prefix = new_q[:, :d] / np.linalg.norm(new_q[:, :d], axis=1, keepdims=True)  # a cosine index normalises

    def r10(q: np.ndarray, i: np.ndarray) -> float:
        return recall_at_k(q @ i.T, evaluated, split, seen, [10])["recall@10"]

    return {"R@10": {"old/old": r10(old_q, old_i), "new/old": r10(prefix, old_i), "new/new": r10(new_q, new_i)}}


def query_tower(artifact: Path, kind: str) -> Path:
    from service.cli.compat import query_tower as tower

    return tower(artifact, kind)


def score(old: Path, new: Path, sets: dict[str, tuple[list[Any], list[Any], Any]]) -> dict[str, dict[str, float]]:
    """Per evaluation set: old/old, new/old and new/new top-1."""
    dims = load_encoder(new).spec.compat_dims
    out = {}
    for name, (gallery, labels, queries) in sets.items():
        old_g, new_g = embed(load_encoder(old), gallery), embed(load_encoder(new), gallery)
        if queries is None:
            report = report_from_vectors(old_g, new_g, labels, dims)
        else:
            inputs, q_labels, kind = queries
            old_q = embed(load_encoder(query_tower(old, kind)), inputs)
            new_q = embed(load_encoder(query_tower(new, kind)), inputs)
            report = tower_report_from_vectors(old_q, new_q, q_labels, old_g, new_g, labels, dims)
        out[name] = {"old/old": report.old_old["top1"], "new/old": report.new_old["top1"],
                     "new/new": report.new_new["top1"]}  # fmt: skip
    return out


def gallery_tower(artifact: Path) -> Path:
    """The artifact a collection stores (Unified's recipe returns its query tower; the item tower sits beside)."""
    from models.core.spec import EncoderSpec

    towers = EncoderSpec.load(artifact).config.get("towers")
    return artifact.parent / towers["item"] if isinstance(towers, dict) and "item" in towers else artifact


def run_seed(family: str, base: dict[str, Any], v2: dict[str, Any], seed: int, root: Path) -> dict[str, Any]:
    """One seed's scores; with a kept ``--work`` directory, a rerun reuses every model and score it finished."""
    data_dir = root / "data"
    out = root / f"seed{seed}"
    scores_file = out / "scores.json"
    if scores_file.is_file():
        return dict(json.loads(scores_file.read_text()))

    def train(config: dict[str, Any], old: Path | None = None, method: str | None = None) -> Path:
        done = out / f".trained-{config.get('name', family)}@{config['version']}"  # written once training ended
        if done.is_file():
            return Path(done.read_text())
        t0 = time.time()
        request = TrainRequest(config=config, out=out, data_dir=data_dir, compatible_with=old,
                               method=method, progress=False)  # type: ignore[arg-type]  # fmt: skip
        artifact = gallery_tower(recipe(family).train(request).artifact)
        atomic_write_bytes(done, str(artifact).encode())
        print(f"  seed {seed}: {artifact.name} ({method or 'independent'}) in {time.time() - t0:.0f} s", flush=True)
        return artifact

    cfg = {**base, "seed": seed}
    name = cfg.get("name", family)
    v1 = train({**cfg, "version": "1"})
    new = merge(cfg, v2)
    rows = {"Independent": train({**new, "name": f"{name}-ind", "version": "2"})}
    for row, method in METHODS.items():
        rows[row] = train({**new, "name": f"{name}-{method}", "version": "2"}, v1, method)
    if family == "unified":
        found = {row: unified_scores(v1, artifact, cfg, data_dir / "cache") for row, artifact in rows.items()}
    else:
        sets = eval_sets(family, cfg, data_dir / "cache")
        found = {row: score(v1, artifact, sets) for row, artifact in rows.items()}
    atomic_write_bytes(scores_file, json.dumps(found).encode())
    return found


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``, one level of nested sections merged (``{"train": {"epochs": 8}}``)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            {**base.get(key, {}), **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return out


def table(runs: list[dict[str, Any]], command: str, family: str) -> str:
    sets = list(runs[0]["Independent"])
    head = "| row | " + " | ".join(f"{s} {t}" for s in sets for t in ("new/old", "new/new")) + " |"
    lines = [head, "|---|" + "---|" * (2 * len(sets))]
    old = " | ".join(f"{_cell([r['Independent'][s]['old/old'] for r in runs])} | –" for s in sets)
    lines.append(f"| old/old (v1) | {old} |")
    for row in ROWS:
        cells = " | ".join(f"{_cell([r[row][s][t] for r in runs])}" for s in sets for t in ("new/old", "new/new"))
        lines.append(f"| {row} | {cells} |")
    metric = "recall@10" if family == "unified" else "top-1"
    return (f"### {family}: {metric}, mean ± 95% CI over {len(runs)} seeds\n\nCommand: `{command}`\n\n"
            + "\n".join(lines) + "\n")  # fmt: skip


def _cell(values: list[float]) -> str:
    mean, half = interval(values)
    return f"{mean:.3f} ± {half:.3f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True, choices=("facenet", "two-branch", "convirt", "unified"))
    p.add_argument("--config", required=True, help="a shipped config name or a YAML file: v1's")
    p.add_argument("--v2", default=None, help="JSON over the config for every new model (default: 2x the epochs)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--data-dir", type=Path, default=Path(".ers-data"), help="where data sets are cached")
    p.add_argument("--out", type=Path, default=Path("docs/compat_families"))
    p.add_argument("--work", type=Path, default=None,
                   help="keep models and scores here; a rerun resumes (default: a temp dir, deleted)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    base = load_config(args.config)
    if args.v2 is not None:
        v2 = json.loads(args.v2)
    elif "train" in base:
        v2 = {"train": {"epochs": 2 * base["train"]["epochs"]}}
    else:
        v2 = {"epochs": 2 * base["epochs"]}
    command = ".venv/bin/python bench/compat_families.py " + shlex.join(sys.argv[1:])
    runs = []
    with tempfile.TemporaryDirectory(prefix="ers-compat-families-") as tmp:
        root = Path(tmp) if args.work is None else args.work / f"{args.family}-{Path(args.config).stem}"
        (root / "data").mkdir(parents=True, exist_ok=True)
        (args.data_dir / "cache").mkdir(parents=True, exist_ok=True)
        if not (root / "data" / "cache").exists():
            (root / "data" / "cache").symlink_to((args.data_dir / "cache").resolve())
        for seed in range(args.seeds):
            runs.append(run_seed(args.family, base, v2, seed, root))
    text = table(runs, command, args.family)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.family}-{Path(args.config).stem}"
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps({"command": command, "v2": v2, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
