"""Upgrade time: seconds from "new model ready" to "new model serving", ``ers migrate`` vs a full
re-embed + rebuild, side by side.

    .venv/bin/python bench/upgrade.py [--n 100000] [--models-dir DIR --old fmnist@1 --new fmnist@2]
                                      [--eval-items 1000] [--data-dir .ers-data]

Gallery: ``--n`` Fashion-MNIST images (train + test splits, then mirrored copies when ``--n`` is
above 70,000), embedded with the old model into a collection bound to it (setup, not timed), on a
real ERS app (in-process, SQLite store, the default ``auto`` index policy).

Timed, from the moment the new model's artefact is on disk:

* **migrate**: ``POST /v1/collections/{name}/migrations`` (what ``ers migrate --to`` sends) with the
  gate on a labelled evaluation set of ``--eval-items`` test images already stored with the
  collection — the server loads the new model, checks the spec chain, embeds the evaluation set with
  both models for the compatibility report, switches the query encoder — then one search with a new
  model query answers (old vectors through the compatible prefix): serving.
* **re-embed**: load the new model, embed all ``--n`` images with it (batches of 256, straight
  through the encoder: the cheapest possible path, no HTTP), write them into a new collection bound
  to the new model in batches of 1,000, and the first search answers. With ``auto`` the collection
  serves from a flat index at once while an IVF index trains in the background for n over the
  threshold, so this counts the embedding and writing, not the IVF training.

Without ``--models-dir`` the models are untrained stand-ins with the shipped architecture
(``fmnist-cnn``, channels 32-64-128, 128-d; the new one BT²-shaped, 128 + 32 dims, compatible with
the old by spec): the times depend on the architecture, not on the weights. The gate then refuses
(stand-ins are not better than the old model) so the bench migrates with ``force``; the gate's work
is timed all the same. Exit status 0 (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.core.encoder import Encoder, encode
from models.core.export import write_artifact
from models.core.registry import load_encoder
from models.core.spec import EncoderSpec
from models.data.fashion_mnist import load_fashion_mnist
from models.families.fmnist_cnn import FmnistCNN, FmnistCNNConfig, FmnistCNNFamily
from service.app import create_app
from service.settings import Settings

BATCH = 256
WRITE = 1000


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="gallery size")
    parser.add_argument("--eval-items", type=int, default=1000, help="labelled evaluation set of the gate")
    parser.add_argument("--models-dir", type=Path, help="trained artefacts (default: untrained stand-ins)")
    parser.add_argument("--old", help="old model key in --models-dir")
    parser.add_argument("--new", help="new model key in --models-dir (compatible_with the old)")
    parser.add_argument("--data-dir", type=Path, default=Path(".ers-data"), help="where Fashion-MNIST is cached")
    parser.add_argument("--threads", type=int, default=1, help="torch/FAISS threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

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
        images, test_images, test_labels, _ = gallery_images(args.data_dir, args.n)
        pick = np.linspace(0, len(test_images) - 1, args.eval_items).astype(int)
        eval_inputs, eval_labels = [png(test_images[i]) for i in pick], [int(test_labels[i]) for i in pick]

        settings = Settings(data_dir=work / "data", threads=args.threads, embed_cache_size=0)
        with TestClient(create_app(settings)) as client:
            manager = client.app.state.manager  # type: ignore[attr-defined]
            print(f"setup: embedding {args.n} images with {old_key} ...", flush=True)
            started = time.perf_counter()
            old_vectors = embed_all(load_encoder(models_dir / old_key), images)
            client.post("/v1/collections", json={"name": "gallery", "encoder": old_key}).raise_for_status()
            gallery = manager.get("gallery")
            for i in range(0, args.n, WRITE):
                gallery.upsert([f"i{j}" for j in range(i, min(i + WRITE, args.n))], old_vectors[i : i + WRITE])
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
            for i in range(0, args.n, WRITE):
                rebuilt.upsert([f"i{j}" for j in range(i, min(i + WRITE, args.n))], new_vectors[i : i + WRITE])
            hits = client.post("/v1/collections/rebuilt/search", json=query).json()["results"]
            reembed_s = time.perf_counter() - started
            assert hits and hits[0]["encoder_version"] == new_key

    print(f"\nUpgrade of a {args.n}-item Fashion-MNIST gallery, {old_key} -> {new_key} "
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


if __name__ == "__main__":
    main()
