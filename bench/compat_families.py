"""Backward-compatible training per encoder family (issue 14): old/old, Independent, BCT, BT², OCA over
seeds, with every compat weight chosen on a validation split.

    OMP_NUM_THREADS=1 .venv/bin/python bench/compat_families.py --family unified --config unified \\
        --v2 '{"table_rows": 4096}' --seeds 5 --workers 2 --work /tmp/ers-compat-families

Models, all trained by ``ers train``'s recipes:

* v1 is ``--config`` with ``--v1`` over it at the seed; every new model is ``--config`` with ``--v2`` over
  it (the improvement; by default twice the epochs) at seed + 1000, so no new model starts from v1's
  initialisation.
* Independent: no compatibility. BCT, BT² (its distillation teacher: the Independent model of the same
  seed, passed as ``TrainRequest.teacher``, which is what the recipe would train first) and OCA against v1.

Validation first. ``compat_family_scores.VALIDATION`` holds, per family, the config keys with which the
recipe trains without a validation split and scores on it; test items are neither trained nor scored.
At seed 0, v1, Independent and each method at each weight of ``SWEEP`` are trained that way and scored
on validation. Per method, the rule picks the weight with the highest new/old among those whose new/new
stays within 3 points of Independent's (on the family's first metric); if none does, the highest new/new.
``--grid`` replaces the weights tried (every method); with one weight there is nothing to choose, so
no validation model is trained and the weight is fixed in advance (the JSON's empty ``sweep`` says so).
Only then are the test models trained (the whole training split, ``--seeds`` seeds) and scored on the
test split. ``compat_family_scores`` defines each family's metrics.

``--work DIR`` keeps every model and score, so a rerun resumes where it stopped (a ``.trained-NAME@VER``
marker is written once a model is complete). The table (markdown + JSON with every seed and the sweep)
goes to ``--out``; ``compat_families_report.py`` writes it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compat_families_report import WITHIN, write
from compat_family_scores import FAMILIES, VALIDATION

from models.core.durable import atomic_write_bytes
from models.training.recipe import TrainRequest, recipe
from models.training.run import load_config

METHODS = {"BCT": "bct", "BT²": "bt2", "OCA": "oca"}
SWEEP = {"bct": ("influence", [0.3, 1.0, 3.0, 10.0]), "bt2": ("align", [0.3, 1.0, 3.0, 10.0]),
         "oca": ("align", [0.3, 1.0, 3.0, 10.0])}  # fmt: skip
NEW_SEED = 1000  # added to a new model's seed


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``, one level of nested sections merged (``{"train": {"epochs": 8}}``)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            {**base.get(key, {}), **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return out


def gallery_tower(artifact: Path) -> Path:
    """The artifact a collection stores (Unified's recipe returns its query tower; the item tower sits beside)."""
    from models.core.spec import EncoderSpec

    towers = EncoderSpec.load(artifact).config.get("towers")
    return artifact.parent / towers["item"] if isinstance(towers, dict) and "item" in towers else artifact


def weight(family: str, knob: str, value: float) -> dict[str, Any]:
    """A compat weight as the family's config spells it (FaceNet: top-level keys; the towers: ``compat:``)."""
    return {knob: value} if family == "facenet" else {"compat": {knob: value}}


class Plan:
    """Where each model of a run lives and how it is trained; every step is resumable."""

    def __init__(self, family: str, base: dict[str, Any], v1: dict[str, Any], v2: dict[str, Any], root: Path,
                 data_dir: Path) -> None:  # fmt: skip
        self.family, self.base, self.v1, self.v2, self.root, self.data_dir = family, base, v1, v2, root, data_dir

    def config(self, seed: int, split: str, new: bool) -> dict[str, Any]:
        cfg = merge(self.base, VALIDATION[self.family]) if split == "val" else dict(self.base)
        return {**merge(cfg, self.v2), "seed": seed + NEW_SEED} if new else {**merge(cfg, self.v1), "seed": seed}

    def folder(self, seed: int, split: str) -> Path:
        return self.root / ("val" if split == "val" else f"seed{seed}")

    def train(self, seed: int, split: str, row: str, over: dict[str, Any] | None = None) -> Path:
        """``row``: "v1", "Independent", or a method's row name (with ``over``: its weight)."""
        out = self.folder(seed, split)
        name = self.base.get("name", self.family)
        method = METHODS.get(row.split(" ")[0])
        if row == "v1":
            config = {**self.config(seed, split, False), "version": "1"}
        else:
            suffix = "ind" if method is None else method + "".join(f"-{k}{v:g}" for k, v in (over or {}).items())
            knob = weight(self.family, *next(iter(over.items()))) if over else {}
            config = merge({**self.config(seed, split, True), "name": f"{name}-{suffix.replace('.', 'p')}",
                            "version": "2"}, knob)  # fmt: skip
        done = out / f".trained-{config['name']}@{config['version']}"
        if done.is_file():
            return Path(done.read_text())
        old = self.train(seed, split, "v1") if method else None
        teacher = self.train(seed, split, "Independent") if method == "bt2" else None  # the same config alone
        t0 = time.time()
        request = TrainRequest(config=config, out=out, data_dir=self.data_dir, compatible_with=old,
                               method=method, progress=False, teacher=teacher)  # type: ignore[arg-type]  # fmt: skip
        artifact = gallery_tower(recipe(self.family).train(request).artifact)
        atomic_write_bytes(done, str(artifact).encode())
        print(f"  {split} seed {seed}: {artifact.name} ({row}) in {time.time() - t0:.0f} s", flush=True)
        return artifact

    def score(self, seed: int, split: str, row: str, over: dict[str, Any] | None = None) -> dict[str, Any]:
        tag = row + "".join(f"-{k}{v:g}" for k, v in (over or {}).items())
        path = self.folder(seed, split) / f"scores-{tag}.json"
        if path.is_file():
            return dict(json.loads(path.read_text()))
        new, v1 = self.train(seed, split, row, over), self.train(seed, split, "v1")
        cfg = self.config(seed, split, False)
        found = FAMILIES[self.family](cfg, v1, new, self.data_dir / "cache", split)
        atomic_write_bytes(path, json.dumps(found).encode())
        return found


def choose(sweep: dict[str, Any], grid: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The rule of the module doc on the family's first metric."""
    metric = next(iter(sweep["Independent"]))
    floor = sweep["Independent"][metric]["new/new"] - WITHIN
    chosen = {}
    for method, (knob, values) in grid.items():
        row = next(r for r, m in METHODS.items() if m == method)
        cands = {v: sweep[f"{row} {knob}={v:g}"][metric] for v in values}
        ok = [v for v, s in cands.items() if s["new/new"] >= floor]
        best = max(ok, key=lambda v: cands[v]["new/old"]) if ok else max(values, key=lambda v: cands[v]["new/new"])
        chosen[row] = {knob: best}
    return chosen


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run(plan: Plan, seeds: int, workers: int, threads: int,
        grid: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:  # fmt: skip
    """(validation scores by row, chosen weights, test scores per seed)."""
    # a one-weight grid has nothing to choose: no validation models, the weights are fixed in advance
    fixed = all(len(values) == 1 for _, values in grid.values())
    splits = [(s, "test") for s in range(seeds)] if fixed else [(0, "val")] + [(s, "test") for s in range(seeds)]
    chosen = {row: {grid[m][0]: grid[m][1][0]} for row, m in METHODS.items()} if fixed else {}
    with ProcessPoolExecutor(max_workers=workers, initializer=_init, initargs=(threads,)) as pool:
        # v1 and Independent first, every seed: the methods train against v1 and BT² distils from Independent
        v1 = [pool.submit(plan.train, s, split, "v1") for s, split in splits]
        independent_models = [pool.submit(plan.train, s, split, "Independent") for s, split in splits]
        for f in v1:
            f.result()
        tests: dict[tuple[int, str], Future[dict[str, Any]]] = {}
        if fixed:  # BCT and OCA need only v1, so they start while the Independent models (BT²'s teachers) train
            tests = {(s, row): pool.submit(plan.score, s, "test", row, chosen[row])
                     for s in range(seeds) for row in ("BCT", "OCA")}  # fmt: skip
        for f in independent_models:
            f.result()
        sweep_rows = {} if fixed else {"Independent": None} | {
            f"{row} {knob}={v:g}": {knob: v} for row, method in METHODS.items()
            for knob, values in [grid[method]] for v in values}  # fmt: skip
        val = {row: pool.submit(plan.score, 0, "val", row.split(" ")[0] if over else row, over)
               for row, over in sweep_rows.items()}  # fmt: skip
        independent = [pool.submit(plan.score, s, "test", "Independent") for s in range(seeds)]
        sweep = {row: f.result() for row, f in val.items()}
        if not fixed:
            chosen = choose(sweep, grid)
        for s in range(seeds):
            for row in METHODS:
                if (s, row) not in tests:
                    tests[s, row] = pool.submit(plan.score, s, "test", row, chosen[row])
        runs = [{"Independent": independent[s].result()} | {row: tests[s, row].result() for row in METHODS}
                for s in range(seeds)]  # fmt: skip
    return sweep, chosen, runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True, choices=tuple(FAMILIES))
    p.add_argument("--config", required=True, help="a shipped config name or a YAML file: v1's")
    p.add_argument("--v1", default="{}", help="JSON over the config for v1 (default: the config itself)")
    p.add_argument("--v2", default=None, help="JSON over the config for every new model (default: 2x the epochs)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--workers", type=int, default=1, help="models trained at once (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument(
        "--grid",
        default=None,
        help="comma-separated weights swept for every method instead of SWEEP's (e.g. 1,10: fewer models); "
        "one weight (e.g. 1) fixes it in advance and trains no validation models",
    )
    p.add_argument("--data-dir", type=Path, default=Path(".ers-data"), help="where data sets are cached")
    p.add_argument("--out", type=Path, default=Path("docs/compat_families"))
    p.add_argument("--work", type=Path, required=True, help="models and scores; a rerun resumes from them")
    args = p.parse_args()
    if args.seeds < 2 or args.workers < 1 or args.threads < 1:
        p.error("--seeds must be >= 2 (an interval needs two), --workers and --threads >= 1")
    base = load_config(args.config)
    try:
        values = sorted({float(v) for v in args.grid.split(",")}) if args.grid else None
    except ValueError:
        p.error(f"--grid must be comma-separated numbers, got {args.grid!r}")
    if values is not None and (not values or min(values) <= 0):
        p.error("--grid weights must be positive")
    grid = {m: (knob, values or vs) for m, (knob, vs) in SWEEP.items()}
    if args.v2 is not None:
        v2 = json.loads(args.v2)
    else:
        v2 = {"train": {"epochs": 2 * base["train"]["epochs"]}} if "train" in base else {"epochs": 2 * base["epochs"]}
    command = "OMP_NUM_THREADS=1 .venv/bin/python bench/compat_families.py " + shlex.join(sys.argv[1:])
    stem = f"{args.family}-{Path(args.config).stem}"
    root = args.work / stem
    (root / "data").mkdir(parents=True, exist_ok=True)
    (args.data_dir / "cache").mkdir(parents=True, exist_ok=True)
    if not (root / "data" / "cache").exists():
        (root / "data" / "cache").symlink_to((args.data_dir / "cache").resolve())
    v1 = json.loads(args.v1)
    plan = Plan(args.family, base, v1, v2, root, root / "data")
    t0 = time.time()
    sweep, chosen, runs = run(plan, args.seeds, args.workers, args.threads, grid)
    result = {"command": command, "family": args.family, "config": base, "v1": v1, "v2": v2,
              "validation": VALIDATION[args.family], "sweep_grid": grid, "sweep": sweep, "chosen": chosen,
              "runs": runs, "seconds": round(time.time() - t0)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print("\n" + write(result, args.out / f"{stem}.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
