"""Upgrading between independently trained encoders, offline: ``models.compat.pretrained`` on real data.

    .venv/bin/python bench/compat_pretrained.py --data-dir DIR [--pairs text,image] [--sizes 250,1000,4000]
        [--seeds 5] [--steps 400] [--limit N] [--out docs/compat_pretrained]
    .venv/bin/python bench/compat_pretrained.py --merge DIR1,DIR2 --out docs/compat_pretrained  # runs in parallel

Pairs and retrieval sets (R@10, cosine; calibration and test items disjoint, the test set fixed per dataset):

* text, ``minilm-l3@1`` -> ``minilm-l6@1``:
  ``emoji-names``: query = the emoji's Unicode name, answer = its first short name (1.9k emoji);
  ``xray``: query = an IU X-ray report's impression, answer = its findings (reports with both).
* image, ``effnet-lite0@1`` -> ``effnet-lite2@1``:
  ``emoji-styles``: query = the Twitter drawing, answer = the Google drawing of the same emoji;
  ``fashion``: Fashion-MNIST same-class retrieval, leave-self-out (calibration from the train split,
  test from the test split; R@10 saturates with 10 classes, so R@1 is reported too).

Rows: old/old, new/new (= after a full backfill), raw new/old, fuse, adapter, adapter (backfilled), transform,
and auto's choice (``choose`` on the calibration set alone; when it refuses, the collection keeps old/old).
Hyper-parameters chosen on validation only, inside the calibration set: fuse's blend, ridge's alpha and
ridge vs MLP for the transform. The adapter's settings are fixed defaults. Each (size, seed) draws its own
calibration sample; 95% intervals are Student-t over seeds. Writes ``results.json`` and ``r10_vs_calibration.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from models.compat.choice import choose, evaluate
from models.compat.pretrained import Calibration, fit_method
from models.compat.report import embed
from models.core.encoder import Encoder
from models.core.registry import load_encoder
from models.data.emoji import flatten_png, load_emoji
from models.data.fashion_mnist import load_fashion_mnist
from models.data.xray_reports import load_reports
from models.eval.stats import interval
from models.zoo import pull

PAIRS = {"text": ("minilm-l3@1", "minilm-l6@1"), "image": ("effnet-lite0@1", "effnet-lite2@1")}
DATASETS = {"text": ("emoji-names", "xray"), "image": ("emoji-styles", "fashion")}
ROWS = ("old/old", "new/new", "raw new/old", "fuse", "adapter", "adapter (backfilled)", "transform", "auto")
TEST_FRACTION, MAX_TEST = 0.3, 2000


def load_dataset(name: str, cache_dir: Path, pool_cap: int) -> dict[str, Any]:
    """``pool`` and ``test``: each a dict of ``items`` and ``queries`` (inputs; query i's answer is item i) or
    ``labels`` (same-label retrieval)."""
    if name == "emoji-names":
        emoji = load_emoji(cache_dir)
        pairs = [(e.text, e.short_names[0].replace("_", " ")) for e in emoji if e.short_names]
        pairs = [(q, a) for q, a in pairs if q != a]
        return _split_pairs([a for _, a in pairs], [q for q, _ in pairs], pool_cap)
    if name == "xray":
        reports = [r for r in load_reports(cache_dir) if r.findings and r.impression]
        return _split_pairs([r.findings for r in reports], [r.impression for r in reports], pool_cap)
    if name == "emoji-styles":
        emoji = load_emoji(cache_dir)
        google = [flatten_png(e.png("google")) for e in emoji]
        return _split_pairs(google, [flatten_png(e.png("twitter")) for e in emoji], pool_cap)
    if name == "fashion":
        data = load_fashion_mnist(cache_dir)
        rng = np.random.default_rng(0)
        pool = rng.permutation(len(data.train_labels))[:pool_cap]
        test = rng.permutation(len(data.test_labels))[:MAX_TEST]
        return {"pool": {"items": list(data.train_images[pool]), "labels": data.train_labels[pool]},
                "test": {"items": list(data.test_images[test]), "labels": data.test_labels[test]}}  # fmt: skip
    raise ValueError(f"unknown dataset {name}")


def _split_pairs(items: list[Any], queries: list[Any], pool_cap: int) -> dict[str, Any]:
    """A fixed seeded test part (30%, at most MAX_TEST pairs); the calibration pool is the rest."""
    order = np.random.default_rng(0).permutation(len(items))
    n_test = min(MAX_TEST, round(len(items) * TEST_FRACTION))
    test, pool = order[:n_test], order[n_test:][:pool_cap]
    pick = lambda idx: {"items": [items[i] for i in idx], "queries": [queries[i] for i in idx]}  # noqa: E731
    return {"pool": pick(pool), "test": pick(test)}


def features(cache_dir: Path, key: str, inputs: list[Any], encoder: Encoder) -> np.ndarray:
    """``encoder``'s vectors of ``inputs``, cached beside the data and reused only for identical inputs."""
    digest = hashlib.sha256()
    for x in inputs:
        digest.update(x.tobytes() if isinstance(x, np.ndarray) else x if isinstance(x, bytes) else x.encode())
        digest.update(b"\0")
    path = cache_dir / "compat-pretrained" / f"{key}-{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path)
    # images in small batches: 256 upscaled images through EfficientNet-Lite2 held ~17 GB of activations
    vectors = embed(encoder, inputs, batch=32 if inputs and isinstance(inputs[0], np.ndarray) else 256)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def calibration(part: dict[str, Any], cache_dir: Path, keys: tuple[str, str], encoders: tuple[Encoder, Encoder],
                name: str) -> Calibration:  # fmt: skip
    vec = {side: [features(cache_dir, f"{name}-{side}-{k}", part[side], e) for k, e in zip(keys, encoders, strict=True)]
           for side in ("items", "queries") if side in part}  # fmt: skip
    queries = vec.get("queries", [None, None])
    return Calibration(vec["items"][0], vec["items"][1], queries[0], queries[1], part.get("labels"))


def run(cal_pool: Calibration, test: Calibration, sizes: list[int], seeds: int, steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in sizes:
        if size > len(cal_pool.old):
            print(f"    calibration size {size}: skipped, the pool holds {len(cal_pool.old)}")
            continue
        runs: list[dict[str, Any]] = []
        for seed in range(seeds):
            t0 = time.time()
            cal = cal_pool.subset(np.sort(np.random.default_rng(1000 + seed).choice(len(cal_pool.old), size, False)))
            fitted: dict[str, Any] = {m: fit_method(m, cal, seed, steps) for m in ("fuse", "adapter", "transform")}
            r10, own = evaluate(fitted, test)
            r1, _ = evaluate(fitted, test, k=1)
            choice = choose(cal, seed=seed, refit=False, steps=steps)
            r10["auto"] = r10[choice.best] if choice.best else r10["old/old"]
            r1["auto"] = r1[choice.best] if choice.best else r1["old/old"]
            runs.append({"seed": seed, "r10": r10, "r1": r1, "own_pair": own, "auto": choice.best or "refused",
                         "auto_reason": choice.reason, "calibration_figures": choice.figures,
                         "fuse_blend": fitted["fuse"].blend, "transform_kind": fitted["transform"].kind})  # fmt: skip
            print(f"    size {size} seed {seed}: " + " ".join(f"{k} {v:.3f}" for k, v in r10.items())
                  + f" | auto={choice.best or 'refused'} ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
        out[str(size)] = {"runs": runs, "r10": summarise(runs, "r10"), "r1": summarise(runs, "r1")}
    return out


def summarise(runs: list[dict[str, Any]], metric: str) -> dict[str, dict[str, float]]:
    """Per row: mean and the 95% Student-t interval half-width over seeds."""
    rows: dict[str, dict[str, float]] = {}
    for row in ROWS:
        values = [r[metric][row] for r in runs if row in r[metric]]
        if values:
            mean, half = interval(values)
            rows[row] = {"mean": mean, "ci95": half, "n": len(values)}
    return rows


def to_y(value: float, span: tuple[float, float] = (0.0, 1.0), height: int = 340, pad: int = 50) -> float:
    """Pixel row of ``value`` in a panel whose y axis runs over ``span`` (each panel zooms on its own rows)."""
    return height - pad - (value - span[0]) / (span[1] - span[0]) * (height - 2 * pad)


def y_span(by_size: dict[str, Any]) -> tuple[float, float]:
    values = [s["mean"] + sign * s["ci95"] for b in by_size.values() for s in b["r10"].values() for sign in (-1, 1)]
    low, high = max(min(values) - 0.02, 0.0), min(max(values) + 0.02, 1.0)
    return (low, high) if high > low else (0.0, 1.0)


def plot(results: dict[str, Any], path: Path) -> None:
    """R@10 against calibration size (log scale), one panel per dataset, mean and 95% interval per row."""
    colours = {"old/old": (120, 120, 120), "new/new": (0, 0, 0), "raw new/old": (200, 200, 200), "fuse": (31, 119, 180),
               "adapter": (255, 127, 14), "adapter (backfilled)": (255, 200, 120), "transform": (44, 160, 44),
               "auto": (214, 39, 40)}  # fmt: skip
    panels = [(pair, ds, by_size) for pair, sets in results.items() for ds, by_size in sets.items() if by_size]
    width, height, pad = 460, 340, 50
    image = Image.new("RGB", (max(width * len(panels), 900), height + 90), "white")
    draw = ImageDraw.Draw(image)
    for p, (pair, ds, by_size) in enumerate(panels):
        x0, sizes = p * width, [int(s) for s in by_size]
        lo, hi = np.log(min(sizes) / 1.5), np.log(max(sizes) * 1.5)
        x_of = {s: x0 + pad + (np.log(s) - lo) / (hi - lo) * (width - 2 * pad) for s in sizes}
        draw.rectangle([x0 + pad, pad, x0 + width - pad, height - pad], outline=(0, 0, 0))
        draw.text((x0 + pad, 15), f"{pair}: {ds}  (R@10 vs calibration size; y axis zoomed)", fill=(0, 0, 0))
        span = y_span(by_size)
        for v in np.linspace(span[0], span[1], 5):
            draw.text((x0 + 8, to_y(v, span) - 6), f"{v:.2f}", fill=(0, 0, 0))
        for s in sizes:
            draw.text((x_of[s] - 12, height - pad + 6), str(s), fill=(0, 0, 0))
        for row, colour in colours.items():
            points = [(x_of[int(s)], by_size[s]["r10"][row]) for s in by_size if row in by_size[s]["r10"]]
            for (x, stat), nxt in zip(points, [*points[1:], None], strict=True):
                low, high = max(stat["mean"] - stat["ci95"], 0.0), min(stat["mean"] + stat["ci95"], 1.0)  # clipped
                draw.line([x, to_y(low, span), x, to_y(high, span)], fill=colour)
                if nxt is not None:
                    y0, y1 = to_y(stat["mean"], span), to_y(nxt[1]["mean"], span)
                    draw.line([x, y0, nxt[0], y1], fill=colour, width=2)
                y = to_y(stat["mean"], span)
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for i, (row, colour) in enumerate(colours.items()):
        x, y = 20 + (i % 4) * 220, height + 20 + (i // 4) * 25
        draw.line([x, y + 6, x + 30, y + 6], fill=colour, width=3)
        draw.text((x + 38, y), row, fill=(0, 0, 0))
    image.save(path)


def merge(dirs: list[Path], out: Path) -> None:
    """One results.json, table and plot from runs of disjoint pairs/datasets (each run's command is kept)."""
    results: dict[str, Any] = {}
    metas = []
    for d in dirs:
        doc = json.loads((d / "results.json").read_text())
        metas.append(doc["meta"])
        for pair, sets in doc["results"].items():
            results.setdefault(pair, {}).update(sets)
    write_results(out, {"merged_from": [str(d) for d in dirs], "runs": metas}, results)


def write_results(out: Path, meta: dict[str, Any], results: dict[str, Any]) -> None:
    """``results.json``, the plot, and ``table.md`` (the tables and goal checks docs/compat.md quotes)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    plot(results, out / "r10_vs_calibration.png")
    lines = ["<!-- generated by bench/compat_pretrained.py; do not edit -->",
             f"Runs: {json.dumps(meta.get('runs', [meta]), default=str)[:2000]}", ""]  # fmt: skip
    for pair, sets in results.items():
        for ds, by_size in sets.items():
            lines += [f"**{pair} / {ds}**: R@10, mean ± 95% CI over calibration seeds (R@1 in brackets)", "",
                      "| row | " + " | ".join(f"n={s}" for s in by_size) + " |",
                      "|---|" + "---|" * len(by_size)]  # fmt: skip
            for row in ROWS:
                cells = [f"{b['r10'][row]['mean']:.3f} ± {b['r10'][row]['ci95']:.3f} ({b['r1'][row]['mean']:.3f})"
                         if row in b["r10"] else "-" for b in by_size.values()]  # fmt: skip
                lines.append(f"| {row} | " + " | ".join(cells) + " |")
            chose = [Counter(r["auto"] for r in b["runs"]) for b in by_size.values()]
            lines.append("| auto chose | " + " | ".join(", ".join(f"{m} ×{c}" for m, c in sorted(n.items()))
                                                       for n in chose) + " |")  # fmt: skip
            lines += ["", *goal_lines(by_size), ""]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def update_doc(doc: Path, table: str) -> None:
    begin, end = "<!-- compat_pretrained:begin -->", "<!-- compat_pretrained:end -->"
    text = doc.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{doc} has no {begin} ... {end} block to replace")
    head, rest = text.split(begin, 1)
    doc.write_text(head + begin + "\n" + table + rest[rest.index(end) :])


def goal_lines(by_size: dict[str, Any]) -> list[str]:
    """Issue 15's goal per calibration size: auto above old/old with disjoint intervals, and the share of
    the old/old -> new/new gap it closes (negative when new/new is not better, the gap is then none)."""
    out = []
    for size, b in by_size.items():
        auto, old, new = (b["r10"][r] for r in ("auto", "old/old", "new/new"))
        disjoint = auto["mean"] - auto["ci95"] > old["mean"] + old["ci95"]
        gap = new["mean"] - old["mean"]
        closed = (
            f"{(auto['mean'] - old['mean']) / gap:.0%} of the gap to new/new"
            if gap > 0
            else "no gap (new/new ≤ old/old)"
        )
        out.append(f"- n={size}: auto − old/old = {auto['mean'] - old['mean']:+.3f} "
                   f"({'disjoint intervals' if disjoint else 'intervals overlap'}); {closed}")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(".ers-data"))
    parser.add_argument("--pairs", default="text,image")
    parser.add_argument("--datasets", default="", help="comma-separated subset of the pairs' datasets")
    parser.add_argument("--sizes", default="250,1000,4000")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400, help="training steps of the adapter and transform MLP")
    parser.add_argument("--limit", type=int, default=0, help="cap every calibration pool and test set (smoke runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/compat_pretrained"))
    parser.add_argument("--doc", type=Path, help="also replace the generated block of this markdown file "
                        "(between <!-- compat_pretrained:begin --> and <!-- compat_pretrained:end -->)")  # fmt: skip
    parser.add_argument("--merge", default="", help="comma-separated result dirs of earlier runs (e.g. one per "
                        "pair, run in parallel) to combine into --out; nothing is computed")  # fmt: skip
    args = parser.parse_args()
    if args.merge:
        merge([Path(d) for d in args.merge.split(",")], args.out)
        if args.doc is not None:
            update_doc(args.doc, (args.out / "table.md").read_text())
        return
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    wanted = {d for d in args.datasets.split(",") if d}
    models_dir, cache_dir = args.data_dir / "models", args.data_dir / "cache"
    results: dict[str, Any] = {}
    started = time.time()
    for pair in args.pairs.split(","):
        keys = PAIRS[pair]
        encoders = tuple(load_encoder(models_dir / pull(k, models_dir, cache_dir).key, threads=args.threads)
                         for k in keys)  # fmt: skip
        results[pair] = {}
        for ds in DATASETS[pair]:
            if wanted and ds not in wanted:
                continue
            data = load_dataset(ds, cache_dir, args.limit or max(sizes))
            if args.limit:
                data["test"] = {k: v[: args.limit] for k, v in data["test"].items()}
            pool = calibration(data["pool"], cache_dir, keys, encoders, ds)  # type: ignore[arg-type]
            test = calibration(data["test"], cache_dir, keys, encoders, ds)  # type: ignore[arg-type]
            print(f"{pair} {keys[0]} -> {keys[1]}, {ds}: pool {len(pool.old)}, test {len(test.old)} "
                  f"({time.time() - started:.0f} s)", flush=True)  # fmt: skip
            results[pair][ds] = run(pool, test, sizes, args.seeds, args.steps)
    meta = {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": round(time.time() - started)}
    write_results(args.out, meta, results)
    print(f"\nwrote {args.out}/results.json and r10_vs_calibration.png after {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
