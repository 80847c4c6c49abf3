"""Runners: ONNX Runtime (CUDA provider when present) and PyTorch (CUDA when present).

Both default to one intra-op thread: on a 2-core box, multi-threaded kernels collapse under
concurrent requests; the service gets its parallelism from several requests instead.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from models.core.encoder import Batch

log = logging.getLogger(__name__)


def onnx_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRunner:
    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=onnx_providers())
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"

    def __call__(self, feeds: Batch) -> np.ndarray:
        inputs = {name: feeds[name] for name in self.input_names}
        return np.asarray(self.session.run(None, inputs)[0])


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchRunner:
    def __init__(self, module: Any, input_names: tuple[str, ...], device: str | None = None) -> None:

        self.device = device or torch_device()
        self.module = module.to(self.device).eval()
        self.input_names = input_names

    def __call__(self, feeds: Batch) -> np.ndarray:
        import torch

        ensure_torch_threads()
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self.input_names]
            out = self.module(*args)
        return out.float().cpu().numpy()


_torch_local = threading.local()
_torch_wanted = 1


def set_torch_threads(threads: int) -> None:
    """The intra-op thread count every thread running torch should use (see ``ensure_torch_threads``)."""
    global _torch_wanted
    _torch_wanted = max(1, int(threads))


def ensure_torch_threads() -> None:
    """Apply the count in the calling thread. Like OpenMP's, torch's setting is not reliably shared
    by threads that already exist, and forwards run on request worker threads."""
    if getattr(_torch_local, "threads", None) != _torch_wanted:
        import torch

        torch.set_num_threads(_torch_wanted)
        _torch_local.threads = _torch_wanted
