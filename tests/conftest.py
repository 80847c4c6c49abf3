"""Shared fixtures for the whole test tree. Keep this generic: area-specific fixtures belong in
the conftest of their own folder (e.g. tests/service/conftest.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real ``redis-server`` child process on loopback; tests may kill and restart it to
    exercise outages. AOF with ``appendfsync always`` means every acknowledged write survives
    a SIGKILL, which the restart tests rely on."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.dir = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart) on the same port and dir, then wait until PING answers PONG
        (not LOADING) so callers see a fully loaded data set."""
        if self.running():
            return
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--logfile", str(self.log),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode}: {self._log_tail()}")
            if self._pong():
                return
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"redis-server did not answer PING within {timeout}s: {self._log_tail()}")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, like a crashed or OOM-killed server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway redis-server for the whole session; never skipped when missing, because a
    silently skipped Redis suite would hide a broken shared-state backend."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server not found on PATH: run `make test`, which installs redis-server")
        pytest.fail("redis-server not found on PATH: install it (e.g. apt-get install redis-server)")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def zoo_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(models_dir, cache_dir)`` shared by the whole session, so each zoo model is fetched and
    converted at most once (pass both to ``models.zoo.pull``)."""
    root = tmp_path_factory.mktemp("zoo")
    models_dir, cache_dir = root / "models", root / "cache"
    models_dir.mkdir()
    cache_dir.mkdir()
    return models_dir, cache_dir


def install_zoo_model(name: str, data_dir: Path, zoo_dirs: tuple[Path, Path]) -> str:
    """Pull ``name`` once per session and hard-link it into ``data_dir/models``; returns its key."""
    from models.zoo import pull

    spec = pull(name, *zoo_dirs)
    destination = data_dir / "models" / spec.key
    if not destination.exists():
        shutil.copytree(zoo_dirs[0] / spec.key, destination, copy_function=os.link)
    return spec.key
