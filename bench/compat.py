"""The BT² table in miniature on Fashion-MNIST, and a 3-step upgrade chain with AC/AM, in one command.

    .venv/bin/python bench/compat.py [--train-per-class 1000] [--epochs 4] [--out DIR] [--threads 2]

Protocol (BT² CIFAR-100 50→100, scaled down): the old model is trained on classes 0-4, every new
model on all 10; embedding 128-d (+32 extra dims for BT² and OCA); the whole test split (10,000
images) is query and gallery with leave-self-out, cosine. Rows: Independent (no compat loss), BCT,
BT² (distilling the Independent model), OCA. Chain: 4 classes → 7 → 10, each step OCA-compatible
with the previous model (128 → 160 → 192 dims). Every model is trained here by the ``fmnist`` recipe
(``--train-per-class`` images per class: a subsample of the 6,000, to fit a 2-core CPU) with the
loss weights of ``models/training/configs/fmnist-new.yaml`` (chain steps: ``fmnist-chain.yaml``,
which adds frozen conv stages and feature/anchor alignment, and trains the steps v2 and v3 on every
training image of their classes: ``--chain-per-class`` overrides); compatible models start from the old one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from compat_fmnist import train  # one way to train (once) a bench model; the script's directory is on sys.path

from models.compat.matrix import average_compatibility, average_multimodel_accuracy, chain_matrix
from models.compat.report import compat_chain, embed, report_from_vectors
from models.core.registry import load_encoder
from models.core.spec import EncoderSpec
from models.data.fashion_mnist import load_fashion_mnist
from models.training.run import load_config


def bt2_table(out: Path, data_dir: Path, base: dict[str, Any], x: np.ndarray, y: np.ndarray) -> None:
    """Old on classes 0-4 (seed 0); Independent, BCT, BT², OCA on all 10 (seed 1)."""
    # old models seed 0, new ones seed 1: an independently trained model shares no initialisation with
    # the old one (with one seed the two raw spaces start alike and new/old is far above chance)
    old = train(out, data_dir, {**base, "name": "fm-old", "classes": [0, 1, 2, 3, 4], "seed": 0})
    base = {**base, "seed": 1}
    ind = train(out, data_dir, {**base, "name": "fm-independent"})
    rows = {"Independent": ind}
    for method in ("bct", "bt2", "oca"):
        extra = {"teacher": str(ind)} if method == "bt2" else {}
        label = method.upper().replace("BT2", "BT²")
        rows[label] = train(out, data_dir, {**base, "name": f"fm-{method}", **extra}, old, method)
    old_vecs = embed(load_encoder(old), x)
    chance = float(np.mean((np.bincount(y)[y] - 1) / (len(y) - 1)))  # a random other item shares the label
    print(f"\nBT² table in miniature: Fashion-MNIST, old on 5 classes, new on 10; test split (n={len(y)}) "
          f"query = gallery, leave-self-out, cosine; chance top-1 = {chance:.3f}")  # fmt: skip
    print(f"{'method':<12}{'old/old top1':>13}{'mAP':>7}{'new/old top1':>14}{'mAP':>7}{'new/new top1':>14}{'mAP':>7}"
          f"{'criterion':>11}{'neg.flips':>11}")  # fmt: skip
    for label, artifact in rows.items():
        new = load_encoder(artifact)
        r = report_from_vectors(old_vecs, embed(new, x), y, new.spec.compat_dims, old.name, artifact.name)
        print(f"{label:<12}{r.old_old['top1']:>13.4f}{r.old_old['mAP']:>7.3f}{r.new_old['top1']:>14.4f}"
              f"{r.new_old['mAP']:>7.3f}{r.new_new['top1']:>14.4f}{r.new_new['mAP']:>7.3f}"
              f"{'yes' if r.criterion_met else 'no':>11}{r.negative_flips:>11.4f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="models directory (default: a temp dir)")
    parser.add_argument("--data-dir", type=Path, default=Path(".ers-data"), help="Fashion-MNIST cache root")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-chain", action="store_true")
    parser.add_argument(
        "--chain-per-class",
        type=int,
        default=None,
        help="train images per class of chain steps v2, v3 (default: fmnist-chain.yaml)",
    )
    parser.add_argument("--skip-table", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="ers-bench-compat-"))
    # the shipped fmnist-new config (loss weights, warm start), scaled by the command line
    base = {**load_config("fmnist-new"), "epochs": args.epochs, "train_per_class": args.train_per_class,
            "eval_items": 2000}  # fmt: skip
    data = load_fashion_mnist(args.data_dir / "cache")
    x, y = data.test_images, data.test_labels
    t0 = time.time()
    print(f"models in {out}; {args.train_per_class} train images per class, {args.epochs} epochs")

    if not args.skip_table:
        bt2_table(out, args.data_dir, base, x, y)
    base["seed"] = 1
    if not args.skip_chain:
        print("\nChain: classes 0-3 -> 0-6 -> 0-9, each OCA-compatible with the previous model (fmnist-chain)")
        # the chain steps' own data size (fmnist-chain.yaml: every training image of their classes)
        step = {**base, **load_config("fmnist-chain"), "epochs": args.epochs, "eval_items": 2000, "name": "fm-chain"}
        if args.chain_per_class is not None:
            step["train_per_class"] = args.chain_per_class
        c1 = train(out, args.data_dir, {**base, "name": "fm-chain", "classes": [0, 1, 2, 3], "seed": 0})
        c2 = train(out, args.data_dir, {**step, "classes": list(range(7))}, c1, "oca")
        c3 = train(out, args.data_dir, {**step, "classes": list(range(10))}, c2, "oca")
        specs = {p.name: EncoderSpec.load(p) for p in (c1, c2, c3)}
        keys = [p.name for p in (c1, c2, c3)]
        vecs = [embed(load_encoder(p), x) for p in (c1, c2, c3)]
        # the whole test split holds classes 7-9 that neither v1 nor v2 trained on; the second matrix keeps
        # the test items of the classes v2 trained on (0-6), so no query is of a class its model never saw
        for title, keep in (("all 10 test classes", np.ones(len(y), bool)), ("test classes 0-6", y < 7)):
            matrix = chain_matrix([v[keep] for v in vecs], y[keep],
                                  lambda i, j: compat_chain(specs.__getitem__, keys[i], keys[j]))  # fmt: skip
            print(f"\n{title} (n={int(keep.sum())})\n{'query / gallery':<18}" + "".join(f"{k:>14}" for k in keys))
            for i, k in enumerate(keys):
                print(f"{k:<18}" + "".join(f"{matrix[i, j]:>14.4f}" if j <= i else f"{'':>14}" for j in range(3)))
            print(f"AC = {average_compatibility(matrix):.3f}   AM = {average_multimodel_accuracy(matrix):.4f}  (top-1)")
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
