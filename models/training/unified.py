"""``ers train unified``: a two-tower Unified Embedding retrieval model on categorical records.

Data: InstEval ratings (students × lecturers) or a user's CSV of interactions (``data: path.csv``
with a ``columns`` spec). Protocol: per query, ``holdout`` of its items rated ``>= min_rating`` are
held out; the rest train the towers with in-batch softmax. Evaluation ranks every item for each
query with held-out items (its training items excluded) and reports recall@K of the held-out
items, against two baselines: popularity (training positives per item) and the untrained model.
With ``val_holdout``, a validation split is carved from each query's training items the same way and
the epoch with the best validation recall is the one published (the test items are never looked at).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.core.encoder import encode
from models.core.spec import EncoderSpec
from models.data.insteval import Interactions, RecordColumns, Split, holdout_split, load_insteval, load_records_csv
from models.families.unified import (
    FAMILY,
    TOWERS,
    UnifiedConfig,
    build_two_tower,
    collision_free_layout,
    layout,
    parameter_count,
    record_indices,
)
from models.losses.contrastive import in_batch_softmax
from models.training import tower_compat as tc
from models.training.checkpoint import Checkpointer
from models.training.recipe import TrainingError, TrainRequest, TrainResult, register_recipe, train_teacher
from models.training.run import (
    batches,
    config_dict,
    parse_config,
    pick_device,
    progress_bar,
    seed_everything,
    write_card,
)

RECIPE = "unified"


@dataclass
class UnifiedTrainConfig:
    name: str = "unified"
    version: str = "1"
    seed: int = 0
    split_seed: int = 0  # draws the test and validation splits: every training seed is scored on the same items
    data: str = "insteval"  # "insteval", or a CSV of interactions (needs ``columns``)
    columns: dict[str, Any] | None = None  # query, item (column lists), query_id, item_id, rating
    limit: int | None = None  # keep the first N interactions (tiny runs)
    min_rating: float = 4.0  # held-out targets are items rated at least this
    train_min_rating: float | None = None  # training positives; None: every training interaction
    holdout: float = 0.2  # fraction of each query's high-rated items held out
    multiplexed: bool = True  # one shared table (False: the same rows split into one table per feature)
    table_rows: int | None = 2048  # None only with collision_free: the vocabularies set the rows
    collision_free: bool = False  # a row per known value (the upper bound); needs multiplexed false, table_rows null
    features: dict[str, list[str]] | None = None  # {query: [...], item: [...]}: the columns each tower uses
    emb_dim: int = 16
    chunks: dict[str, int] = field(default_factory=dict)  # feature -> chunks (variable-length variant)
    hidden: int = 128
    dim: int = 64
    epochs: int = 10
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.0
    temperature: float = 0.05
    logq_correction: bool = False
    ks: list[int] = field(default_factory=lambda: [10, 50])
    val_holdout: float = 0.0  # > 0: held out of each query's training items to pick the epoch (recall@ks[0])
    compat: dict[str, Any] = field(default_factory=dict)  # with --compatible-with: tower_compat.CompatSettings

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or not 0 < self.holdout < 1 or not 0 <= self.val_holdout < 1:
            raise TrainingError(
                "unified config: need epochs >= 1, batch_size >= 2, 0 < holdout < 1, 0 <= val_holdout < 1"
            )
        if self.collision_free and (self.multiplexed or self.table_rows is not None):
            raise TrainingError("unified config: collision_free needs multiplexed: false and table_rows: null "
                                "(the vocabularies set the rows)")  # fmt: skip
        if not self.collision_free and (self.table_rows is None or self.table_rows < 1):
            raise TrainingError("unified config: table_rows must be >= 1 (null only with collision_free: true)")
        if self.hidden < 0:
            raise TrainingError("unified config: hidden must be >= 0 (0: a linear tower)")
        if self.data != "insteval" and self.columns is None:
            raise TrainingError(f"unified config: data '{self.data}' is a CSV, so `columns` must say which is which")


def load_data(data: str, columns: dict[str, Any] | None, limit: int | None, cache_dir: Path) -> Interactions:
    if data == "insteval":
        return load_insteval(cache_dir, limit)
    path = Path(data)
    if not path.is_file():
        raise TrainingError(f"data '{data}' is neither 'insteval' nor a CSV file")
    return load_records_csv(path, RecordColumns.from_config(columns or {}), limit)


def tower_features(cfg: UnifiedTrainConfig, data: Interactions) -> dict[str, tuple[str, ...]]:
    """Each tower's columns: every record column, or the config's ``features`` (a subset of them)."""
    columns = {"query": data.columns.query, "item": data.columns.item}
    if cfg.features is None:
        return columns
    if set(cfg.features) != set(TOWERS):
        raise TrainingError(f"unified config: features needs exactly the towers {list(TOWERS)}")
    for tower, chosen in cfg.features.items():
        if not chosen or not set(chosen) <= set(columns[tower]):
            raise TrainingError(f"unified config: features.{tower} must be a non-empty subset of {columns[tower]}")
    return {t: tuple(cfg.features[t]) for t in TOWERS}


def model_config(cfg: UnifiedTrainConfig, data: Interactions) -> UnifiedConfig:
    features = tower_features(cfg, data)
    values = {f: [r[f] for r in data.queries] for f in features["query"]}
    values.update({f: [r[f] for r in data.items] for f in features["item"]})
    try:
        if cfg.collision_free:
            slots, rows = collision_free_layout(features, values, cfg.chunks)
        else:
            rows = int(cfg.table_rows or 0)
            slots = layout(features, {f: len(set(v)) for f, v in values.items()}, rows, cfg.multiplexed, cfg.chunks)
    except ValueError as exc:
        raise TrainingError(f"unified config: {exc}") from exc
    return UnifiedConfig(rows, cfg.emb_dim, cfg.hidden, cfg.dim, slots["query"], slots["item"])


def splits(data: Interactions, cfg: UnifiedTrainConfig) -> tuple[Split, Split | None, np.ndarray]:
    """The test split, the validation split carved from its training rows (or None), and the training positives."""
    test = holdout_split(data, cfg.min_rating, cfg.holdout, cfg.split_seed)
    if not test.held_out:
        raise TrainingError("no query has two or more high-rated items: nothing to hold out and evaluate")
    val = None
    if cfg.val_holdout:  # its own random stream, so the test split is the same with or without it
        val = holdout_split(data, cfg.min_rating, cfg.val_holdout, [cfg.split_seed, 1], rows=test.train)
    rows = val.train if val is not None else test.train
    threshold = cfg.train_min_rating
    return test, val, rows if threshold is None else rows[data.ratings[rows] >= threshold]


def seen_matrix(data: Interactions, rows: np.ndarray) -> np.ndarray:
    seen = np.zeros((len(data.queries), len(data.items)), dtype=bool)
    seen[data.query_index[rows], data.item_index[rows]] = True
    return seen


def recall_at_k(
    scores: np.ndarray, queries: np.ndarray, split: Split, seen: np.ndarray, ks: list[int], per_query: bool = False
) -> dict[str, Any]:
    """Mean over ``queries`` of |top-K ∩ held out| / |held out|; ``scores`` is (len(queries), items).
    ``per_query``: also each query's recall at the first K (``recall@K_per_query``, in ``queries``'
    order), which ``models.eval.stats.bootstrap`` resamples together with the seeds."""
    scores = np.where(seen[queries], -np.inf, scores)
    top = np.argsort(-scores, axis=1, kind="stable")[:, : max(ks)]
    out: dict[str, Any] = {}
    for k in ks:
        hits = [np.isin(split.held_out[int(q)], top[row, :k]).mean() for row, q in enumerate(queries)]
        out[f"recall@{k}"] = float(np.mean(hits))
        if per_query and k == ks[0]:
            out[f"recall@{k}_per_query"] = [round(float(h), 6) for h in hits]
    return out


def popularity_scores(data: Interactions, positives: np.ndarray, n_queries: int) -> np.ndarray:
    counts = np.bincount(data.item_index[positives], minlength=len(data.items)).astype(np.float64)
    return np.broadcast_to(counts, (n_queries, len(data.items)))


def tower_vectors(model: Any, tower: str, indices: np.ndarray, device: str) -> np.ndarray:
    """The training module's vectors for hashed records (what the served tower must reproduce)."""
    import torch

    with torch.no_grad():
        module = model.query if tower == "query" else model.item
        return np.asarray(module(torch.from_numpy(indices).to(device)).float().cpu().numpy())


@register_recipe(RECIPE)
class UnifiedRecipe:
    name: str

    def train(self, request: TrainRequest) -> TrainResult:
        import torch

        cfg = parse_config(UnifiedTrainConfig, request.config)
        cfg.check()
        old, settings, teacher = None, None, None
        if request.compatible_with is not None:  # the new towers search the old item (gallery) tower's vectors
            if request.method is None:
                raise TrainingError("--compatible-with needs --method bct|bt2|oca")
            old, dim, settings = tc.compatible_width(cfg.compat, request.compatible_with, request.method,
                                                     f"{cfg.name}-item@{cfg.version}", modality="record")  # fmt: skip
            if old.config.get("tower", "item") != "item":
                raise TrainingError(f"{old.key} is a {old.config.get('tower')} tower; pass the old item tower")
            cfg = dataclasses.replace(cfg, dim=dim)
            teacher = train_teacher(request, "unified", self._item_tower) if request.method == "bt2" else None
        elif cfg.compat:
            raise TrainingError("the config's compat section needs --compatible-with and --method")
        device = pick_device(request.device)
        started = time.monotonic()
        data = load_data(cfg.data, cfg.columns, cfg.limit, (request.data_dir or Path(".ers-data")) / "cache")
        split, val, positives = splits(data, cfg)
        mcfg = model_config(cfg, data)
        q_idx, i_idx = record_indices(data.queries, mcfg.query), record_indices(data.items, mcfg.item)
        item_log_q = np.log(np.bincount(data.item_index[positives], minlength=len(data.items)) / len(positives) + 1e-12)

        seed_everything(cfg.seed)
        model = build_two_tower(mcfg).to(device)
        compat = None
        if old is not None and settings is not None and request.compatible_with and request.method:
            # every item its own class; a query is grouped with its positive item
            items = list(data.items)
            compat = tc.prepare(old, request.compatible_with, request.method, items, np.arange(len(items)), cfg.dim,
                                settings, teacher, device, ("item", "query"))  # fmt: skip
        evaluated = np.asarray(sorted(split.held_out), dtype=np.int64)

        def model_recall(
            target: Split = split, known: np.ndarray = split.train, per_query: bool = False
        ) -> dict[str, Any]:
            """Recall of ``target``'s held-out items, the ``known`` rows' items left out of the ranking."""
            queries = np.asarray(sorted(target.held_out), dtype=np.int64)
            model.eval()
            q, i = tower_vectors(model, "query", q_idx[queries], device), tower_vectors(model, "item", i_idx, device)
            model.train()
            return recall_at_k(q @ i.T, queries, target, seen_matrix(data, known), cfg.ks, per_query)

        untrained = model_recall()
        popularity = recall_at_k(popularity_scores(data, positives, len(evaluated)), evaluated, split,
                                 seen_matrix(data, split.train), cfg.ks, per_query=True)  # fmt: skip
        params = list(model.parameters()) + (compat.parameters() if compat is not None else [])
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        ckpt = Checkpointer(request.out / ".checkpoints" / cfg.name)
        start, losses, val_curve, best = 0, [], [], None
        state = ckpt.latest() if request.resume else None
        if state is not None:
            if state["config"] != config_dict(cfg):
                raise TrainingError(f"{ckpt.directory}: the checkpoint was made with a different config; cannot resume")
            model.load_state_dict(state["model"])
            for basis, saved in zip(bases(compat), state.get("bases", []), strict=True):
                basis.load_state_dict(saved)
            opt.load_state_dict(state["optimizer"])
            start, losses = int(state["epoch"]) + 1, list(state["losses"])
            val_curve, best = list(state.get("val_curve", [])), state.get("best")

        if len(positives) < 2:
            raise TrainingError(f"only {len(positives)} training pairs; in-batch softmax needs at least two")
        steps = max(1, len(positives) // cfg.batch_size)  # as many as ``batches`` gives (it drops the last partial one)
        q_all = torch.from_numpy(q_idx).to(device)
        i_all = torch.from_numpy(i_idx).to(device)
        log_q = torch.from_numpy(item_log_q.astype(np.float32)).to(device)
        model.train()
        with progress_bar(steps * (cfg.epochs - start), f"unified {cfg.name}", request.progress) as bar:
            for epoch in range(start, cfg.epochs):
                rng = np.random.default_rng([cfg.seed, epoch])  # per-epoch order: a resumed run repeats it
                total = 0.0
                for rows in batches(len(positives), cfg.batch_size, rng):
                    pair = positives[rows]
                    qi = torch.from_numpy(data.query_index[pair]).to(device)
                    ii = torch.from_numpy(data.item_index[pair]).to(device)
                    q, i = model(q_all[qi], i_all[ii])  # (B, dim) each
                    terms: dict[str, torch.Tensor] = {}
                    if compat is not None:
                        i, q = compat.mix(i, q)
                        items = data.item_index[pair]
                        terms = compat.terms(i, q, items, items)
                    loss = in_batch_softmax(q, i, cfg.temperature, ii, log_q[ii] if cfg.logq_correction else None)
                    if terms:
                        loss = loss + torch.stack(list(terms.values())).sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item()
                    bar.step(loss=loss.item(), epoch=float(epoch + 1))
                losses.append(total / steps)
                if val is not None:  # early stopping on the validation split: keep the best epoch's weights
                    val_curve.append(model_recall(val, val.train)[f"recall@{cfg.ks[0]}"])
                    if best is None or val_curve[-1] > best["score"]:
                        best = {"epoch": epoch, "score": val_curve[-1], "model": clone(model.state_dict()),
                                "bases": [clone(b.state_dict()) for b in bases(compat)]}  # fmt: skip
                state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "losses": losses,
                         "config": config_dict(cfg), "bases": [b.state_dict() for b in bases(compat)],
                         "val_curve": val_curve, "best": best}  # fmt: skip
                ckpt.save(epoch, state)

        if best is not None:
            model.load_state_dict(best["model"])
            for basis, saved in zip(bases(compat), best["bases"], strict=True):
                basis.load_state_dict(saved)
        if compat is not None:
            compat.fold(model.item, model.query)  # the published towers are plain Unified towers
        trained = model_recall(per_query=True)
        metrics: dict[str, Any] = {
            **trained,
            **{f"popularity_{k}": v for k, v in popularity.items()},
            **{f"untrained_{k}": v for k, v in untrained.items()},
            "loss_first_epoch": losses[0], "loss_last_epoch": losses[-1],
            "epochs": cfg.epochs, "first_epoch_run": start,
            **({f"val_recall@{cfg.ks[0]}": best["score"], "best_epoch": int(best["epoch"]) + 1, "val_curve": val_curve}
               if best is not None else {}),
            "layout": "multiplexed" if cfg.multiplexed else "one table per feature",
            "parameters": parameter_count(mcfg)["total"], "embedding_parameters": parameter_count(mcfg)["embedding"],
            "queries_evaluated": len(evaluated), "items": len(data.items), "training_pairs": len(positives),
            "device": device, "train_seconds": round(time.monotonic() - started, 1),
        }  # fmt: skip
        artifacts = publish_towers(model.cpu(), mcfg, cfg, data, request.out, old, request.method)
        notes = (
            f"Two towers over one {'shared (multiplexed)' if cfg.multiplexed else 'per-feature split'} embedding "
            f"table of {cfg.table_rows} rows × {cfg.emb_dim}. Evaluation: per query, {cfg.holdout:.0%} of its items "
            f"rated >= {cfg.min_rating:g} held out (split seed {cfg.split_seed}); every item ranked, training "
            "items excluded."
        )
        for directory, spec in artifacts:
            write_card(directory, spec, metrics, config_dict(cfg), notes)
        return TrainResult(artifacts[0][0], metrics)

    def _item_tower(self, request: TrainRequest) -> Path:
        """Train ``request`` (BT²'s teacher); the item tower, which sits beside the query tower it returns."""
        artifact = self.train(request).artifact
        return artifact.parent / f"{request.config['name']}-item@{request.config.get('version', '1')}"

    def evaluate(self, artifact: Path, data: str | None, data_dir: Path | None) -> dict[str, Any]:
        from models.core.artifact import verify_artifact
        from models.core.registry import load_encoder

        spec = verify_artifact(artifact)
        keys = spec.config["towers"]
        encoders = {t: load_encoder(artifact.parent / keys[t], backend="onnx") for t in TOWERS}
        conf = spec.config
        cfg = parse_config(UnifiedTrainConfig, conf["train"])
        source = data or cfg.data
        interactions = load_data(source, cfg.columns, cfg.limit if data is None else None,
                                 (data_dir or Path(".ers-data")) / "cache")  # fmt: skip
        split, _, positives = splits(interactions, cfg)
        evaluated = np.asarray(sorted(split.held_out), dtype=np.int64)
        q = encode(encoders["query"], [interactions.queries[int(r)] for r in evaluated])
        i = encode(encoders["item"], interactions.items)
        seen = seen_matrix(interactions, split.train)
        popularity = recall_at_k(
            popularity_scores(interactions, positives, len(evaluated)), evaluated, split, seen, cfg.ks
        )
        return {
            **recall_at_k(q @ i.T, evaluated, split, seen, cfg.ks),
            **{f"popularity_{k}": v for k, v in popularity.items()},
            "queries_evaluated": len(evaluated), "items": len(interactions.items), "data": source,
        }  # fmt: skip


def clone(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a state dict that later optimiser steps leave alone."""
    return {k: v.detach().clone() for k, v in state.items()}


def bases(compat: tc.TowerCompat | None) -> list[Any]:
    return [] if compat is None else [b for b in (compat.gallery_basis, compat.query_basis) if b is not None]


def publish_towers(
    model: Any,
    mcfg: UnifiedConfig,
    cfg: UnifiedTrainConfig,
    data: Interactions,
    out: Path,
    old: EncoderSpec | None = None,
    method: str | None = None,
) -> list[tuple[Path, EncoderSpec]]:
    """``out/<name>-query@<version>`` and ``out/<name>-item@<version>``, each naming the other; with
    ``old`` (the old item tower), both declare themselves compatible with it."""
    from models.core.export import write_artifact
    from models.families.unified import UnifiedTowerFamily

    keys = {t: f"{cfg.name}-{t}@{cfg.version}" for t in TOWERS}
    records = {"query": data.queries[:2], "item": data.items[:2]}
    published = []
    kind = "multiplexed table" if cfg.multiplexed else "one table per feature"
    for tower in TOWERS:
        spec = EncoderSpec(
            name=f"{cfg.name}-{tower}", version=cfg.version, family=FAMILY, modality="record", dim=cfg.dim,
            metric="cosine",
            config={"recipe": RECIPE, "tower": tower, "towers": keys, "model": mcfg.to_json(),
                    "examples": records[tower], "train": config_dict(cfg),
                    **({"compatible_tower": "item", "method": method} if old else {})},
            compatible_with=old.key if old else None, compat_dims=old.dim if old else None,
            description=f"Unified Embedding {tower} tower ({kind}); records of {[s.name for s in mcfg.slots(tower)]}",
            source=f"ers train unified (data: {cfg.data})",
            license="model: same as its training data",
        )  # fmt: skip
        module = model.query if tower == "query" else model.item
        write_artifact(UnifiedTowerFamily(spec), module, out / keys[tower])
        published.append((out / keys[tower], spec))
    return published
