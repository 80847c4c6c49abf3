"""Runners: ONNX Runtime (CUDA provider when present) and PyTorch (CUDA when present).

On the CPU a runner uses one intra-op thread unless a call asks for more: on a 2-core box,
multi-threaded kernels collapse under concurrent requests, so the service gets its parallelism from
several forwards at once, and gives a lone forward every core only when the queue is shallow
(``service.runtime.batching``). ONNX Runtime fixes the thread count per session, so a runner keeps
one session per count it was asked for, made on first use; each holds its own copy of the weights
(~90 MB for MiniLM-L6).

The device (``set_device``; the service's ``ERS_DEVICE``: ``auto`` | ``cpu`` | ``cuda``) applies to
runners made after it is set; ``auto`` takes CUDA when ONNX
Runtime's CUDA provider (or torch.cuda, for PyTorch runners) is present. On CUDA, ONNX models run
in fp16 (converted once at load, inputs and outputs kept fp32) with IO binding, so the outputs are
copied back once per forward. The CUDA path is not exercised on the CPU-only development and CI
machines (docs/benchmarks.md says so).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from models.core.encoder import Batch
from models.core.errors import ModelError

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")
_device = "auto"


def set_device(device: str) -> None:
    """Where runners made from now on run: ``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    global _device
    if device not in DEVICES:
        raise ModelError(f"device must be one of {', '.join(DEVICES)}, got '{device}'")
    _device = device


def wanted_device() -> str:
    return _device


def onnx_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    device = wanted_device()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelError("ERS_DEVICE=cuda but ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    wanted = ("CPUExecutionProvider",) if device == "cpu" else ("CUDAExecutionProvider", "CPUExecutionProvider")
    return [p for p in wanted if p in available]


def cpu_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def fp16_model(path: Path) -> bytes:
    """The model at ``path`` with fp16 weights and fp32 inputs/outputs (for the CUDA provider)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    return bytes(model.SerializeToString())


class OnnxRunner:
    def __init__(self, path: Path, threads: int = 1, fp16_on_cuda: bool = True) -> None:
        self.path = path
        self.threads = max(1, threads)
        self.providers = onnx_providers()
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self._model: str | bytes = str(path)
        if self.device == "cuda" and fp16_on_cuda:
            self._model = fp16_model(path)
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.session = self._session(self.threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _session(self, threads: int) -> Any:
        session = self._sessions.get(threads)
        if session is not None:
            return session
        import onnxruntime as ort

        with self._lock:
            if threads not in self._sessions:
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                # Spinning workers would keep every core busy between forwards, starving the event
                # loop and the other forwards; a wide session's workers sleep instead.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self._sessions[threads] = ort.InferenceSession(
                    self._model, sess_options=options, providers=self.providers
                )
            return self._sessions[threads]

    def __call__(self, feeds: Batch, threads: int | None = None) -> np.ndarray:
        inputs = {name: feeds[name] for name in self.input_names}
        if self.device == "cuda":
            return self._run_bound(inputs)
        session = self._session(max(1, threads or self.threads))
        return np.asarray(session.run(None, inputs)[0])

    def _run_bound(self, inputs: Batch) -> np.ndarray:
        """One host->device copy per input, the output left on the device until the one copy back."""
        binding = self.session.io_binding()
        for name, value in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_output(self.session.get_outputs()[0].name, "cuda")
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)


def torch_device() -> str:
    import torch

    device = wanted_device()
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("ERS_DEVICE=cuda but torch has no CUDA device")
    return "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"


class TorchRunner:
    def __init__(self, module: Any, input_names: tuple[str, ...], device: str | None = None) -> None:

        self.device = device or torch_device()
        self.module = module.to(self.device).eval()
        self.input_names = input_names

    def __call__(self, feeds: Batch, threads: int | None = None) -> np.ndarray:
        """``threads`` is not applied per call: torch's intra-op pool is process-wide, so a count
        set for one forward would change every concurrent one (see ``set_torch_threads``)."""
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
