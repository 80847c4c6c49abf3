"""Upgrade time: seconds from the migration request to "new model serving", against re-embedding.

    nice -n 19 .venv/bin/python bench/upgrade.py [--n 1000000] [--threads 2] [--json docs/upgrade_bench.json]
    .venv/bin/python bench/upgrade.py --mode fmnist [--n 100000] [--models-dir DIR --old K --new K]

**--mode pretrained** (default; issue 15, must-show 3). A real ERS app in-process (SQLite store) with ONE
collection of ``--n`` stored 384-d vectors bound to ``minilm-l3@1``; the new model is ``minilm-l6@1``,
trained independently (both pulled from the zoo into ``--data-dir``, reused when there, hard-linked into
the app's models dir). Setup, not timed:

* gallery: ``--pool`` real texts (IU X-ray findings and impression sections, emoji Unicode names) embedded
  with minilm-l3; each of the ``--n`` rows is one of them at random plus gaussian noise (``--noise`` per
  dimension) re-normalised: real-embedding geometry at any n without encoding n texts. Written through the
  domain object (``Collection.upsert``, 1,000 rows a call). Index ``--index Flat`` (exact): ``auto`` would
  train IVF in background threads from 20,000 items on, overlapping the timed rows; with ``--index auto``
  the bench waits for those builds before timing. No snapshot is written while the gallery is built
  (``snapshot_every`` > n), which only shortens setup.
* calibration: a JSONL manifest job source of ``--calibration`` unlabelled X-ray texts (other reports);
  labelled task: the collection's eval-set, 400 X-ray (impression, findings) pairs of the val split,
  labelled by report (as tests/service/test_pretrained_upgrade.py).

Timed rows, each from sending the request to serving: the task (202) polled every 50 ms until it
succeeded, then one REST text search that returns hits (201 answers: straight to the search):

* **prefix**: ``minilm-l3@1-int8`` (declared ``compatible_with`` minilm-l3@1, 384 dims), method prefix.
* **fuse / adapter / transform**: ``{"to": "minilm-l6@1", "method": M, "calibration": <manifest>,
  "backfill": "none", "force": true}`` (force: a gate refusal must not stop the bench; its figures are kept).
* after each, **rollback** (``POST .../migrations/rollback``), timed the same way.
* **re-embed (extrapolated)**: minilm-l6@1's rate on ``--rate-texts`` texts of the pool (batches of 64,
  sorted by length, ``--threads`` threads, no HTTP) × n. Writing n vectors into a new collection and
  building its index are excluded, which favours re-embedding.

Peak memory: the process RSS sampled every 20 ms; per row its peak over the row minus the RSS just
before. Prints a markdown table; ``--json PATH`` writes every figure with the command, date, threads, n
and the load average.

**--mode fmnist** (the first version): ``--n`` (default 100,000) Fashion-MNIST images in a collection on
``fmnist-bench@1``; ``ers migrate`` to a BT²-shaped ``fmnist-bench@2`` (compatible by spec, prefix) against
embedding every image with it and writing them into a new collection. Without ``--models-dir`` both are
untrained stand-ins with the shipped architecture (times depend on the architecture, not the weights; the
gate refuses, so it migrates with ``force``). Exit status 0 (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upgradelib import (
    RssSampler,
    encode_rate,
    gallery_chunks,
    print_table,
    rss_mb,
    text_pool,
    timed_row,
    write_manifest,
    xray_eval_and_calibration,
)

from models.core.encoder import Encoder, encode
from models.core.export import write_artifact
from models.core.registry import load_encoder
from models.core.spec import EncoderSpec
from models.data.fashion_mnist import load_fashion_mnist
from models.families.fmnist_cnn import FmnistCNN, FmnistCNNConfig, FmnistCNNFamily
from models.zoo import pull
from service.app import create_app
from service.settings import Settings

BATCH = 256
WRITE = 1000
OLD, NEW, PREFIX = "minilm-l3@1", "minilm-l6@1", "minilm-l3@1-int8"
NAME = "gallery"


def stand_ins(models_dir: Path) -> tuple[str, str]:
    """Untrained fmnist-cnn v1 (128-d) and a BT²-shaped v2 (128 + 32) declared compatible with it."""
    channels = [32, 64, 128]
    for version, dim, compat in (("1", 128, None), ("2", 160, "fmnist-bench@1")):
        torch.manual_seed(int(version))
        spec = EncoderSpec(name="fmnist-bench", version=version, family="fmnist-cnn", modality="image", dim=dim,
                           compatible_with=compat, compat_dims=128 if compat else None,
                           config={"channels": channels, "dim": dim, "basis": False})  # fmt: skip
        if not (models_dir / spec.key).exists():
            module = FmnistCNN(FmnistCNNConfig(channels=tuple(channels), dim=dim)).eval()
            write_artifact(FmnistCNNFamily(spec), module, models_dir / spec.key)
    return "fmnist-bench@1", "fmnist-bench@2"


def gallery_images(data_dir: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` gallery images, and the test split (evaluation set) with labels."""
    data = load_fashion_mnist(data_dir / "cache")
    pool = np.concatenate([data.train_images, data.test_images])
    while len(pool) < n:
        pool = np.concatenate([pool, pool[:, :, ::-1]])
    return pool[:n], data.test_images, data.test_labels, np.concatenate([data.train_labels, data.test_labels])


def embed_all(encoder: Encoder, images: np.ndarray) -> np.ndarray:
    # the fmnist-cnn family takes a (n, 28, 28) uint8 array as a batch of images as it is
    return np.concatenate([encode(encoder, images[i : i + BATCH]) for i in range(0, len(images), BATCH)])  # type: ignore[arg-type]


def png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def run_fmnist(args: argparse.Namespace) -> None:
    n = args.n or 100_000

    with tempfile.TemporaryDirectory(prefix="ers-upgrade-") as tmp:
        work = Path(tmp)
        models_dir = work / "data" / "models"
        models_dir.mkdir(parents=True)
        if args.models_dir is not None:
            for key in (args.old, args.new):
                (models_dir / key).symlink_to((args.models_dir / key).resolve())
            old_key, new_key = args.old, args.new
        else:
            old_key, new_key = stand_ins(models_dir)
        images, test_images, test_labels, _ = gallery_images(args.data_dir, n)
        pick = np.linspace(0, len(test_images) - 1, args.eval_items).astype(int)
        eval_inputs, eval_labels = [png(test_images[i]) for i in pick], [int(test_labels[i]) for i in pick]

        settings = Settings(data_dir=work / "data", threads=args.threads, embed_cache_size=0)
        with TestClient(create_app(settings)) as client:
            manager = client.app.state.manager  # type: ignore[attr-defined]
            print(f"setup: embedding {n} images with {old_key} ...", flush=True)
            started = time.perf_counter()
            old_vectors = embed_all(load_encoder(models_dir / old_key), images)
            client.post("/v1/collections", json={"name": "gallery", "encoder": old_key}).raise_for_status()
            gallery = manager.get("gallery")
            for i in range(0, n, WRITE):
                gallery.upsert([f"i{j}" for j in range(i, min(i + WRITE, n))], old_vectors[i : i + WRITE])
            client.put("/v1/collections/gallery/eval-set", json={"inputs": eval_inputs, "labels": eval_labels})
            print(f"setup done in {time.perf_counter() - started:.1f}s", flush=True)
            query = {"image": eval_inputs[0], "k": 10}

            # -- migrate -------------------------------------------------------------------
            started = time.perf_counter()
            body = {"to": new_key, "backfill": "none", "force": args.models_dir is None}
            migrated = client.post("/v1/collections/gallery/migrations", json=body)
            switched = time.perf_counter() - started
            if migrated.status_code != 201:
                print(f"migration refused: {migrated.json()['error']['message']}")
                return
            hits = client.post("/v1/collections/gallery/search", json=query).json()["results"]
            migrate_s = time.perf_counter() - started
            report = migrated.json()["migration"]["reports"].get(old_key, {})
            assert hits and hits[0]["encoder_version"] == old_key

            # -- full re-embed + rebuild ---------------------------------------------------
            started = time.perf_counter()
            new_encoder = load_encoder(models_dir / new_key)
            new_vectors = embed_all(new_encoder, images)
            embedded = time.perf_counter() - started
            client.post("/v1/collections", json={"name": "rebuilt", "encoder": new_key}).raise_for_status()
            rebuilt = manager.get("rebuilt")
            for i in range(0, n, WRITE):
                rebuilt.upsert([f"i{j}" for j in range(i, min(i + WRITE, n))], new_vectors[i : i + WRITE])
            hits = client.post("/v1/collections/rebuilt/search", json=query).json()["results"]
            reembed_s = time.perf_counter() - started
            assert hits and hits[0]["encoder_version"] == new_key

    print(f"\nUpgrade of a {n}-item Fashion-MNIST gallery, {old_key} -> {new_key} "
          f"({args.threads} thread(s); gate on {args.eval_items} labelled items)\n")  # fmt: skip
    print("| path | seconds to serving | of which |")
    print("|---|---|---|")
    print(f"| ers migrate (backfill none) | {migrate_s:.2f} | migration call {switched:.2f} s (load model, "
          f"spec check, gate report, switch) |")  # fmt: skip
    print(f"| full re-embed + rebuild | {reembed_s:.2f} | embedding {embedded:.2f} s, writes + first search "
          f"{reembed_s - embedded:.2f} s |")  # fmt: skip
    print(f"\nspeed-up: {reembed_s / migrate_s:.1f}x")
    if report:
        print(f"gate report: old/old top-1 {report['old_old']['top1']:.4f}, new/old {report['new_old']['top1']:.4f}, "
              f"criterion {'met' if report['criterion_met'] else 'not met (forced)'}")  # fmt: skip


def install(name: str, app_data: Path, cache_data: Path) -> str:
    """Pull ``name`` into ``cache_data/models`` once (reused after) and hard-link it into the app's."""
    spec = pull(name, cache_data / "models", cache_data / "cache")
    destination = app_data / "models" / spec.key
    if not destination.exists():
        shutil.copytree(cache_data / "models" / spec.key, destination, copy_function=link_or_copy)
    return spec.key


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def build_gallery(client: TestClient, args: argparse.Namespace, n: int, base: np.ndarray) -> float:
    """The collection of ``n`` rows (see the module doc); seconds spent writing."""
    client.post("/v1/collections", json={"name": NAME, "encoder": OLD, "index": args.index}).raise_for_status()
    gallery = client.app.state.manager.get(NAME)  # type: ignore[attr-defined]
    started = time.perf_counter()
    for i, rows in enumerate(gallery_chunks(base, n, WRITE, args.noise)):
        gallery.upsert([f"i{j}" for j in range(i * WRITE, i * WRITE + len(rows))], rows)
        if (i + 1) * WRITE % 100_000 == 0:
            print(f"  {(i + 1) * WRITE} rows written ({time.perf_counter() - started:.0f} s)", flush=True)
    while gallery.stats()["building"]:  # --index auto: IVF builds end before anything is timed
        time.sleep(0.5)
    return time.perf_counter() - started


def run_pretrained(args: argparse.Namespace) -> dict[str, Any]:
    n, threads = args.n or 1_000_000, args.threads
    cache_dir = args.data_dir / "cache"
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "threads": threads, "n": n,
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "loadavg_before": os.getloadavg(),
            "cpus": os.cpu_count(), "index": args.index, "noise": args.noise, "pool": args.pool}  # fmt: skip
    rss = RssSampler()
    rss.start()
    with tempfile.TemporaryDirectory(prefix="ers-upgrade-") as tmp:
        work = Path(tmp)
        (work / "data" / "models").mkdir(parents=True)
        for name in (OLD, NEW):
            install(name, work / "data", args.data_dir)
        try:
            prefix_key: str | None = install(PREFIX, work / "data", args.data_dir)
        except Exception as exc:  # a row reported as missing, with the reason, rather than no table at all
            prefix_key, meta["prefix_unavailable"] = None, f"{type(exc).__name__}: {exc}"
        eval_body, cal_texts = xray_eval_and_calibration(cache_dir, args.calibration)
        source = write_manifest(work / "calibration" / "texts.jsonl", cal_texts)
        pool = text_pool(cache_dir, max(args.pool, args.rate_texts))
        settings = Settings(data_dir=work / "data", threads=threads, encoder_threads=threads, embed_cache_size=0,
                            snapshot_every=n + 1, allowed_roots=[work / "calibration"])  # fmt: skip
        with TestClient(create_app(settings)) as client:
            print(f"setup: {len(pool)} texts through {OLD}, then {n} rows ...", flush=True)
            rss.open_window()
            started = time.perf_counter()
            old = load_encoder(work / "data" / "models" / OLD, threads=threads)
            base = np.concatenate([encode(old, pool[i : i + 64]) for i in range(0, len(pool), 64)])
            embed_s = time.perf_counter() - started
            write_s = build_gallery(client, args, n, base)
            client.put(f"/v1/collections/{NAME}/eval-set", json=eval_body).raise_for_status()
            setup = {"pool_texts": len(pool), "embed_pool_s": embed_s, "write_s": write_s,
                     "rows_per_s": n / write_s, "rss_after_mb": rss_mb(), **rss.window()}  # fmt: skip
            print(f"setup done: embedding {embed_s:.1f} s, writing {write_s:.1f} s, RSS {rss_mb():.0f} MiB", flush=True)

            rss.open_window()
            new = load_encoder(work / "data" / "models" / NEW, threads=threads)
            rate = encode_rate(new, pool[: args.rate_texts])
            reembed = {**rate, "n": n, "seconds_extrapolated": n / rate["per_s"], **rss.window()}
            print(f"re-embed: {rate['per_s']:.1f} texts/s -> {reembed['seconds_extrapolated']:.0f} s", flush=True)

            query = {"text": eval_body["inputs"][0], "k": 10}
            plan: list[tuple[str, dict[str, Any]]] = []
            if prefix_key is not None:
                plan.append(("prefix", {"to": prefix_key, "backfill": "none", "force": True}))
            for method in ("fuse", "adapter", "transform"):
                plan.append((method, {"to": NEW, "method": method, "calibration": source, "backfill": "none",
                                      "calibration_size": len(cal_texts), "force": True}))  # fmt: skip
            rows = []
            for method, body in plan:
                row = {"row": method, "method": method,
                       **timed_row(client, NAME, f"/v1/collections/{NAME}/migrations", body, query, rss)}  # fmt: skip
                rows.append(row)
                print(f"{method}: {row.get('serving_s', float('nan')):.2f} s to serving ({row['state']})", flush=True)
                if row["state"] == "succeeded":
                    back = timed_row(client, NAME, f"/v1/collections/{NAME}/migrations/rollback", None, query, rss)
                    rows.append({"row": f"rollback of {method}", "method": "rollback", **back})
                    assert back.get("top_version") == OLD, back
            # the same rate after the rows: how much the machine's load moved while they ran
            reembed["per_s_after_rows"] = encode_rate(new, pool[: args.rate_texts])["per_s"]
            rss.open_window()  # the app's shutdown: the last index snapshot of the collection is written
            started = time.perf_counter()
        shutdown = {"seconds": time.perf_counter() - started, **rss.window()}
    rss.stop.set()
    meta["loadavg_after"] = os.getloadavg()
    return {
        "meta": meta,
        "setup": setup,
        "reembed": reembed,
        "rows": rows,
        "shutdown": shutdown,
        "peak_rss_mb": rss.peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("pretrained", "fmnist"), default="pretrained")
    parser.add_argument("--n", type=int, help="gallery size (default 1,000,000 pretrained, 100,000 fmnist)")
    parser.add_argument("--threads", type=int, default=2, help="torch/encoder/FAISS threads")
    parser.add_argument("--data-dir", type=Path, default=Path(".ers-data"), help="zoo models and data cache")
    parser.add_argument("--json", type=Path, help="pretrained: write every figure here")
    parser.add_argument("--pool", type=int, default=4000, help="pretrained: real texts the gallery rows come from")
    parser.add_argument("--noise", type=float, default=0.01, help="pretrained: gaussian noise per dimension")
    parser.add_argument("--index", default="Flat", help="pretrained: the collection's index (Flat or auto)")
    parser.add_argument("--calibration", type=int, default=2000, help="pretrained: calibration texts")
    parser.add_argument(
        "--rate-texts", type=int, default=2000, help="pretrained: texts the encoder rate is measured on"
    )
    parser.add_argument("--eval-items", type=int, default=1000, help="fmnist: labelled evaluation set of the gate")
    parser.add_argument("--models-dir", type=Path, help="fmnist: trained artefacts (default: untrained stand-ins)")
    parser.add_argument("--old", help="fmnist: old model key in --models-dir")
    parser.add_argument("--new", help="fmnist: new model key in --models-dir (compatible_with the old)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "fmnist":
        run_fmnist(args)
        return
    result = run_pretrained(args)
    print_table(result, OLD, NEW)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
