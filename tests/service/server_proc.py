"""Run a real ``ers serve`` as a child process, for tests that need a real server: crashes
(``kill -9``), restarts, signals, anything an in-process ``TestClient`` cannot show.

    with ServerProcess(tmp_path / "data", {"ERS_SNAPSHOT_EVERY": "300"}) as server:
        httpx.get(server.url + "/readyz")
        server.kill9()          # crash it: no shutdown hooks run
        server.start()          # same data dir, fresh free port (server.url changes)

Every start picks a fresh free loopback port (a killed server's port may linger in TIME_WAIT),
appends the server's stdout and stderr to ``<data_dir's parent>/<data_dir name>-server.log``
and waits for ``GET /readyz`` to answer 200. ``env_extra`` may be reassigned between starts to
run the same data directory under other settings.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

ERS_BIN = Path(sys.executable).parent / "ers"


class ServerError(RuntimeError):
    """The server did not come up (or misbehaved); the message carries the log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(
        self,
        data_dir: Path,
        env_extra: Mapping[str, str | int | float] | None = None,
        *,
        inherit_ers_env: bool = False,
    ) -> None:
        """``inherit_ers_env=False`` drops ``ERS_*`` variables of the calling shell (an
        ``ERS_API_KEYS`` or ``ERS_REDIS_URL`` set by a developer would change what is tested);
        ``env_extra`` is applied on top either way."""
        self.data_dir = Path(data_dir)
        self.env_extra: dict[str, str] = {k: str(v) for k, v in (env_extra or {}).items()}
        self.inherit_ers_env = inherit_ers_env
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.starts = 0
        self._log_file: IO[bytes] | None = None
        self._log_start = 0  # where the current run's output begins in the log file

    # -- info ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerError("server was never started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_status(self) -> int | None:
        """The process's exit status; None while it runs (or if never started)."""
        return None if self.proc is None else self.proc.poll()

    def log_text(self, current_run_only: bool = False) -> str:
        try:
            with open(self.log_path, "rb") as f:
                if current_run_only:
                    f.seek(self._log_start)
                return f.read().decode(errors="replace")
        except OSError:
            return "(no log)"

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log_text()
        return text if len(text) <= chars else "..." + text[-chars:]

    # -- lifecycle -----------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if self.inherit_ers_env or not k.startswith("ERS_")}
        env.update(self.env_extra)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # One process unless a test asks for more: ``kill9`` and signals then reach the server itself.
        env.setdefault("ERS_WORKERS", "1")
        return env

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start on a fresh free port and wait until ``/readyz`` is 200. A port taken by another
        process between ``free_port()`` and the server's bind (tests run side by side) is retried
        on another one."""
        if self.running():
            raise ServerError(f"server already running (pid {self.pid})")
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except ServerError:
                taken = "address already in use" in self.log_text(current_run_only=True)
                if not taken or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> ServerProcess:
        self._close_log()
        self.port = free_port()
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed when the process ends
        banner = f"\n===== start #{self.starts} port {self.port} env {self.env_extra} =====\n"
        self._log_file.write(banner.encode())
        self._log_file.flush()
        self._log_start = self._log_file.tell()
        args = [
            str(ERS_BIN), "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._env(),
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not the server
        )
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise ServerError(f"ers serve exited with {code} while starting; log:\n{self.log_tail()}")
                try:
                    if client.get(self.url + "/readyz").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.kill9()
                    raise ServerError(f"ers serve not ready within {timeout}s; log:\n{self.log_tail()}")
                time.sleep(0.02)  # a fine step: the crasher reports the time to ready

    def kill9(self) -> int | None:
        """SIGKILL, like a crash or the OOM killer: no shutdown hooks, no final snapshot.
        Returns the exit status (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(timeout=30)
        self._close_log()
        return code

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful shutdown: final snapshots), SIGKILL after ``timeout`` seconds.
        Returns the exit status (None if it was never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ServerProcess:
        if not self.running():
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
