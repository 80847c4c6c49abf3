"""``ers serve --workers N`` (N > 1): one writer process and N - 1 readers on one port.

The supervisor (``ers serve`` itself) binds the public socket once and a private loopback one, and
starts its children with them (``python -m service.workers``): every child accepts connections on the
public socket (the kernel hands each new connection to one of them), the writer also on the private
one, where the readers forward what they cannot serve (``service.forwarding``).

- The **writer** is today's single-process app: it owns the data directory (its lock, the logs, the
  store) and answers every write with ``X-ERS-Position``.
- A **reader** serves searches from read-only views (``indexer.reader_manager``) and holds nothing of
  its own: killed, it is started again and loses nothing.

The writer starts first (readers open its store and logs); a child that dies is started again, the
writer included (it recovers from its log as after any crash). SIGTERM or SIGINT stops them all, each
with its graceful shutdown. Children die with the supervisor (``PR_SET_PDEATHSIG``), even a killed one.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

from service.settings import Settings

log = logging.getLogger("ers")
PR_SET_PDEATHSIG = 1
READY_POLL_S = 0.05
STOP_GRACE_S = 35.0  # the children's own graceful shutdown is 30 s (uvicorn's timeout_graceful_shutdown)
RESTART_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0)  # after quick successive deaths


@dataclass
class Child:
    role: str  # "writer" or "reader"
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_deaths: int = 0
    fds: tuple[int, ...] = field(default_factory=tuple)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every child accepts on (inherited by them)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.public = bind(settings.host, settings.port)
        self.private = bind("127.0.0.1", 0)
        self.writer_url = f"http://127.0.0.1:{self.private.getsockname()[1]}"
        public, private = str(self.public.fileno()), str(self.private.fileno())
        self.writer = Child("writer", ["writer", public, private], fds=(self.public.fileno(), self.private.fileno()))
        self.readers = [
            Child("reader", ["reader", public, self.writer_url], fds=(self.public.fileno(),))
            for _ in range(settings.workers - 1)
        ]
        self.stopping = False
        self.signal: int | None = None  # the one that stopped us: raised again at the end, as uvicorn does

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "ERS_HOST": self.settings.host,
            "ERS_PORT": str(self.settings.port),
            "ERS_DATA_DIR": str(self.settings.data_dir),
            "ERS_WORKERS": str(self.settings.workers),
        })  # fmt: skip
        return env

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(
            [sys.executable, "-m", "service.workers", *child.args, str(os.getpid())],
            pass_fds=child.fds,
            env=self._env(),
            stdin=subprocess.DEVNULL,
        )
        child.started = time.monotonic()
        log.info("started the %s (pid %d)", child.role, child.proc.pid)

    def _wait_writer_ready(self) -> bool:
        """Until the writer answers on its private port (it opens every collection first)."""
        with httpx.Client(timeout=2.0) as client:
            while not self.stopping:
                assert self.writer.proc is not None
                if self.writer.proc.poll() is not None:
                    return False
                with contextlib.suppress(httpx.TransportError):
                    if client.get(self.writer_url + "/healthz").status_code == 200:
                        return True
                time.sleep(READY_POLL_S)
        return False

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self._start(self.writer)
        if not self._wait_writer_ready():
            code = self._stop_all()
            log.error("the writer did not start (exit status %s)", code)
            return code or 1
        for reader in self.readers:
            self._start(reader)
        while not self.stopping:
            for child in [self.writer, *self.readers]:
                assert child.proc is not None
                status = child.proc.poll()
                if status is not None and not self.stopping:
                    self._restart(child, status)
            time.sleep(0.1)
        return self._stop_all() or 0

    def _restart(self, child: Child, code: int) -> None:
        quick = time.monotonic() - child.started < 10.0
        child.quick_deaths = child.quick_deaths + 1 if quick else 0
        delay = RESTART_BACKOFF_S[min(child.quick_deaths, len(RESTART_BACKOFF_S) - 1)]
        log.warning("the %s (pid %s) exited with %s; starting it again in %.1fs",
                    child.role, child.proc.pid if child.proc else "?", code, delay)  # fmt: skip
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self.stopping:
            time.sleep(0.05)
        if not self.stopping:
            self._start(child)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
        self.signal = signum

    def _stop_all(self) -> int:
        """SIGTERM to every child (readers first: their forwards finish), SIGKILL after the grace time.
        Returns the writer's exit status."""
        children = [c for c in [*self.readers, self.writer] if c.proc is not None and c.proc.poll() is None]
        for child in children:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        self.public.close()
        self.private.close()
        code = None if self.writer.proc is None else self.writer.proc.returncode
        return 0 if self.signal is not None or code is None or code < 0 else code


def serve_workers(settings: Settings) -> int:
    """Run until stopped; a stopping signal ends the process by that signal once all are down, as a
    single ``ers serve`` (uvicorn) does."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the readiness probes
    try:
        supervisor = Supervisor(settings)
    except OSError as exc:  # worded as uvicorn words it, which scripts (and tests) look for
        log.error("error while attempting to bind on address (%r, %d): %s",
                  settings.host, settings.port, (exc.strerror or str(exc)).lower())  # fmt: skip
        return 1
    code = supervisor.run()
    if supervisor.signal is not None:
        signal.signal(supervisor.signal, signal.SIG_DFL)
        signal.raise_signal(supervisor.signal)
    return code


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when the supervisor dies (Linux), even by SIGKILL: no orphan keeps the
    data directory's lock or the port."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


def run_child(role: str, public_fd: int, second: str) -> None:
    """A child process: the writer (``second``: its private socket's fd) or a reader (the writer's URL)."""
    import uvicorn

    from service.app import create_app
    from service.fair_accept import FairAcceptServer

    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per forwarded request otherwise
    public = socket.socket(fileno=public_fd)  # shared with the siblings: accepted fairly
    sockets = []  # served as uvicorn serves any socket
    if role == "writer":
        sockets.append(socket.socket(fileno=int(second)))
        app = create_app(settings, worker=f"writer {os.getpid()}")
    else:
        app = create_app(settings, reader_of=second)
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
        access_log=settings.access_log,
    )
    FairAcceptServer(config, public).run(sockets=sockets)


if __name__ == "__main__":
    die_with_parent(int(sys.argv[4]))
    run_child(sys.argv[1], int(sys.argv[2]), sys.argv[3])
