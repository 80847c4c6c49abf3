"""ConVIRT's own evaluation protocol on the labelled images that ship here (issue 19): linear probes
and fine-tuning with 1% / 10% / 100% of the labels, against ImageNet-initialised and randomly
initialised encoders, over seeds.

    .venv/bin/python bench/convirt_probe.py --seeds 5 --data-dir DIR

Data: the emoji drawings (Google and Twitter styles) of the 1,911 concepts; labels: category (10
classes) and subcategory. The concept split is the ConVIRT recipe's (20% held out by a hash of the
emoji code): those concepts' drawings are the **test** split, never seen by ConVIRT or a probe. Of
the training concepts, a fixed 20% (a hash of ``"val:" + code``) are the **validation** split, which
chooses every probe hyper-parameter (L2 weight; learning rate and epochs for fine-tuning); the labelled
fraction is drawn from the drawings of the remaining concepts, per seed.

Encoders (image side; the backbone stays frozen on CPU, see the doc):

* **random init**: EfficientNet-Lite0 with seeded random weights, pooled 1280-d features;
* **ImageNet init**: the ``effnet-lite0@1`` features ConVIRT starts from;
* **ConVIRT**: the trained image tower (those features through the projection head ConVIRT trained
  with the config's recipe and this seed), the 128-d vectors the service stores.

Linear probe: logistic regression on the frozen output. Fine-tuning: the projection head (a fresh
one for random/ImageNet init, ConVIRT's trained one) + a linear classifier, trained on the labels.
Mean ± 95% Student-t interval over seeds, ConVIRT minus ImageNet init paired by seed. Runs are cached
in ``--out``/probe_runs.json (resumable). Writes ``probe.md``, ``probe.json`` and ``probe.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plotlib import line_plot
from reportlib import training_args, write_text

from models.core.durable import atomic_write_bytes
from models.data.convirt_pairs import held_out
from models.data.emoji import load_emoji
from models.eval.probe import Split, fine_tune, label_subset, linear_probe
from models.eval.stats import interval, paired
from models.training.convirt import ConvirtConfig, Run
from models.training.recipe import TrainRequest
from models.training.run import load_config, parse_config, progress_bar, seed_everything

FRACTIONS = (0.01, 0.1, 1.0)
ENCODERS = ("random init", "ImageNet init", "ConVIRT")
PROTOCOLS = ("linear probe", "fine-tune")
VAL_PERCENT = 20


def random_features(run: Run, images: list[bytes], seed: int, cache: Path) -> np.ndarray:
    """Pooled features of a seeded, randomly initialised EfficientNet-Lite0 (cached per seed)."""
    from safetensors.numpy import load_file, save

    path = cache / f"random-effnet-{run.cfg.image_size}-{seed}-{len(images)}.safetensors"
    if path.is_file():
        return load_file(str(path))["features"]
    seed_everything(seed)
    backbone = run.image_family.build_module().backbone.eval()
    out = []
    with torch.inference_mode(), progress_bar(len(images), f"random-init features (seed {seed})") as bar:
        for start in range(0, len(images), 32):
            pixels = run.image_family.preprocess(images[start : start + 32])["pixels"]
            out.append(backbone(torch.from_numpy(pixels)).numpy())
            bar.step(len(pixels))
    features = np.concatenate(out).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"features": features}))
    return features


def one_seed(base: dict[str, Any], seed: int, data_dir: Path, labels: list[str]) -> dict[str, Any]:
    cfg = parse_config(ConvirtConfig, {**base, "seed": seed})
    with tempfile.TemporaryDirectory(prefix="ers-convirt-probe-") as tmp:
        run = Run(cfg, TrainRequest(config={**base, "seed": seed}, out=Path(tmp), data_dir=data_dir))
    fresh_head = copy.deepcopy(run.image_tower.head)  # the seeded initialisation ConVIRT starts from
    with progress_bar(run.steps_per_epoch() * cfg.epochs, f"convirt seed {seed}") as bar:
        for epoch in range(cfg.epochs):
            run.epoch(epoch, bar)
    emoji = load_emoji(data_dir / "cache", limit=cfg.limit)
    train = [e for e in emoji if not held_out(e.code, cfg.test_percent)]
    test = [e for e in emoji if held_out(e.code, cfg.test_percent)]
    assert [e.text for e in train] == run.data.train_texts  # the recipe's own split, in its order
    # rows: every training concept's Google then Twitter drawing, then the test concepts' (same order)
    imagenet = np.concatenate(
        [
            run.train_images.reshape(-1, run.train_images.shape[-1]).numpy(),
            torch.stack([run.eval_queries, run.eval_gallery], 1).reshape(-1, 1280).numpy(),
        ]
    )
    concepts = [e for e in train for _ in range(2)] + [e for e in test for _ in range(2)]
    images = [e.google_png if i % 2 == 0 else e.twitter_png for i, e in enumerate(concepts)]
    with torch.no_grad():
        convirt = run.image_tower.head(torch.from_numpy(imagenet)).numpy()
    rand = random_features(run, images, seed, data_dir / "cache" / "convirt-probe")
    n_train = 2 * len(train)
    is_val = np.array([held_out(f"val:{e.code}", VAL_PERCENT) for e in concepts[:n_train]])
    pool, val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    # a random network's feature scale is arbitrary: standardise it (on the training pool) so the fresh
    # head fine-tunes from inputs of the scale the ImageNet features have
    rand = (rand - rand[pool].mean(axis=0)) / (rand[pool].std(axis=0) + 1e-6) * imagenet[pool].std()
    features = {"random init": rand, "ImageNet init": imagenet, "ConVIRT": convirt}
    heads = {"random init": fresh_head, "ImageNet init": fresh_head, "ConVIRT": run.image_tower.head}
    head_inputs = {"random init": rand, "ImageNet init": imagenet, "ConVIRT": imagenet}  # fine-tuning's inputs
    out: dict[str, Any] = {"train_images": len(pool), "val_images": len(val), "test_images": len(concepts) - n_train}
    for label in labels:
        names = sorted({str(getattr(e, label)) for e in concepts})
        y = np.array([names.index(str(getattr(e, label))) for e in concepts])
        out[f"{label}/classes"] = len(names)
        for fraction in FRACTIONS:
            labelled = pool[label_subset(len(pool), fraction, seed)]
            for name, x in features.items():
                test_rows = np.arange(n_train, len(concepts))
                splits = [Split(x[i], y[i]) for i in (labelled, val, test_rows)]
                probe = linear_probe(*splits, classes=len(names))
                head, z = heads[name], head_inputs[name]
                tuned = fine_tune(lambda h=head: copy.deepcopy(h), head.out.out_features,
                                  *[Split(z[i], y[i]) for i in (labelled, val, test_rows)], classes=len(names),
                                  seed=seed)  # fmt: skip
                for protocol, result in (("linear probe", probe), ("fine-tune", tuned)):
                    key = f"{label}/{protocol}/{name}/{fraction}"
                    out[key] = {"test": result.test_accuracy, "val": result.val_accuracy, "chosen": result.chosen}
    return out


def report(runs: dict[str, Any], seeds: list[int], labels: list[str], command: str, out: Path) -> str:
    texts, results = [], {}
    for label in labels:
        first = runs[str(seeds[0])]
        cols = [f"{round(f * 100)}% labels" for f in FRACTIONS]
        texts += [f"### Label: {label} ({first[f'{label}/classes']} classes); test accuracy, mean ± 95% CI over "
                  f"{len(seeds)} seeds", "", "| protocol | encoder | " + " | ".join(cols) + " |",
                  "|---|---|" + "---|" * len(cols)]  # fmt: skip
        series = {}
        for protocol in PROTOCOLS:
            for name in ENCODERS:
                cells, points = [], []
                for f in FRACTIONS:
                    mean, half = interval([runs[str(s)][f"{label}/{protocol}/{name}/{f}"]["test"] for s in seeds])
                    results[f"{label}/{protocol}/{name}/{f}"] = {"mean": mean, "ci95": half}
                    cells.append(f"{mean:.3f} ± {half:.3f}")
                    points.append((f * 100, mean, half))
                texts.append(f"| {protocol} | {name} | " + " | ".join(cells) + " |")
                series[f"{name}, {protocol}"] = points
            diffs = []
            for f in FRACTIONS:
                a, b = ([runs[str(s)][f"{label}/{protocol}/{n}/{f}"]["test"] for s in seeds]
                        for n in ("ConVIRT", "ImageNet init"))  # fmt: skip
                mean, half = paired(a, b)
                results[f"{label}/{protocol}/ConVIRT-ImageNet/{f}"] = {"mean": mean, "ci95": half}
                diffs.append(f"{mean:+.3f} ± {half:.3f}")
            texts.append(f"| {protocol} | ConVIRT − ImageNet init (paired) | " + " | ".join(diffs) + " |")
        texts.append("")
        line_plot(out / f"probe_{label}.png", series, f"ConVIRT protocol on emoji {label}: test accuracy (mean and "
                  f"95% interval over {len(seeds)} seeds)", "% of training labels", "accuracy")  # fmt: skip
    first = runs[str(seeds[0])]
    texts.append(
        f"{first['train_images']} labelled-pool drawings (100%), {first['val_images']} validation drawings, "
        f"{first['test_images']} test drawings. Command: `{command}`\n"
    )
    write_text(out / "probe.json", json.dumps({"command": command, "seeds": seeds, "results": results,
                                                "chosen": {s: {k: v["chosen"] for k, v in runs[str(s)].items()
                                                               if isinstance(v, dict)} for s in seeds}},
                                               indent=1))  # fmt: skip
    return "\n".join(texts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--config", default="convirt")
    p.add_argument("--labels", default="category,subcategory")
    p.add_argument("--data-dir", type=Path, default=Path(".ers-data"))
    p.add_argument("--out", type=Path, default=Path("docs/convirt"))
    p.add_argument("--report-only", action="store_true", help="train nothing: tables and plots from the cached runs")
    args = p.parse_args()
    labels = args.labels.split(",")
    if unknown := sorted(set(labels) - {"category", "subcategory"}):
        p.error(f"unknown labels {unknown}; known: category, subcategory")
    if args.seeds < 2:
        p.error("--seeds must be at least 2 (an interval needs two runs)")
    base = load_config(args.config)
    command = ".venv/bin/python bench/convirt_probe.py " + shlex.join(training_args())
    cache = args.out / "probe_runs.json"
    runs: dict[str, Any] = json.loads(cache.read_text())["runs"] if cache.is_file() else {}
    started = time.time()
    for seed in range(0 if args.report_only else args.seeds):
        if str(seed) in runs and all(f"{label}/classes" in runs[str(seed)] for label in labels):
            continue
        runs[str(seed)] = one_seed(base, seed, args.data_dir, labels)
        write_text(cache, json.dumps({"runs": runs}, indent=1))
        got = runs[str(seed)]
        print(f"[{time.time() - started:5.0f} s] seed {seed}: " + ", ".join(
            f"{n} {got[f'{labels[0]}/linear probe/{n}/0.01']['test']:.3f}" for n in ENCODERS) + " (1% probe)",
            flush=True)  # fmt: skip
    seeds = [s for s in range(args.seeds) if str(s) in runs]
    if len(seeds) < 2:
        p.error("fewer than two seeds run: nothing to report")
    text = report(runs, seeds, labels, command, args.out)
    print("\n" + text)
    write_text(args.out / "probe.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
