"""Running one harness under atheris (libFuzzer): what every ``fuzz_<target>.py`` script calls.

    python tests/fuzz/fuzz_json.py WORK_CORPUS tests/fuzz/corpus/json -max_total_time=600 [--keep-going]

libFuzzer's own flags pass through (the first corpus folder receives new inputs: give a scratch
folder first and the saved seeds second, so a run does not grow the committed corpus). Flags of ours:

``--keep-going``
    Record a broken invariant and carry on instead of stopping at the first (libFuzzer's default).
    Each distinct failure (signature: the exception type and the innermost ERS frame, or the kind of
    broken promise) is saved once as ``crash-<hash>`` (the input) and ``crash-<hash>.txt`` (its
    traceback), counted in ``summary.json``; when the app no longer serves its collections (a probe
    read and write), it starts over on a fresh data directory, so a collection poisoned by one input
    does not fail every later one.
``--crash-dir=DIR``
    Where those go (default ``tests/fuzz/runs/crashes/<target>``, ignored by git).
``--check-every=N``
    Every N inputs, restart the app over its data directory and check that everything reads back
    the same (default 1000; 0: never). Failing that check saves the inputs since the last one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tests.fuzz.invariant import InvariantBroken

REPO = Path(__file__).resolve().parents[2]
# Instrumented for coverage: the code under test and the libraries that parse client bytes. Torch,
# numpy and FAISS are not (native, and not what a client's bytes steer).
INSTRUMENT = {
    "images": ["models.core.images", "PIL"],
    "json": ["service", "indexer", "models.core", "fastapi", "starlette", "pydantic"],
    "multipart": ["service", "indexer", "models.core", "fastapi", "starlette", "python_multipart", "multipart"],
    "manifests": ["indexer", "models.core", "tests.fuzz.harness_manifests"],
}


def _own_flags(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    options: dict[str, Any] = {"keep_going": False, "crash_dir": None, "check_every": 1000}
    rest = []
    for arg in argv:
        if arg == "--keep-going":
            options["keep_going"] = True
        elif arg.startswith("--crash-dir="):
            options["crash_dir"] = Path(arg.split("=", 1)[1])
        elif arg.startswith("--check-every="):
            options["check_every"] = int(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return rest, options


def signature(exc: BaseException) -> str:
    """What makes two failures the same defect: where the root exception was raised in ERS code, or,
    for a broken promise with no exception behind it (a 5xx answer, a wrong readback), its wording
    less the ids and numbers."""
    root = exc
    while True:
        if isinstance(root, BaseExceptionGroup) and root.exceptions:
            root = root.exceptions[0]
        elif root.__cause__ is not None:
            root = root.__cause__
        else:
            break
    if root is exc and isinstance(exc, InvariantBroken):
        if exc.kind:
            return f"InvariantBroken: {exc.kind}"
        text = re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\[[^\]]*\]|\{.*\}|\b[0-9a-f]{12,}\b|\d+", "_", str(exc))
        return f"InvariantBroken: {text[:120]}"
    frames = traceback.extract_tb(root.__traceback__)
    ours = [f for f in frames if f.filename.startswith(str(REPO)) and "/.venv/" not in f.filename]
    if not frames:
        return type(root).__name__
    frame = (ours or frames)[-1]
    where = Path(frame.filename).relative_to(REPO) if ours else Path(frame.filename).name
    return f"{type(root).__name__} at {where}:{frame.lineno}"


class Runner:
    """Calls the harness for each input; checks a restart every N inputs; records failures."""

    def __init__(self, target: str, options: dict[str, Any]) -> None:
        self.target = target
        self.module = importlib.import_module(f"tests.fuzz.harness_{target}")
        self.keep_going: bool = options["keep_going"]
        self.check_every: int = options["check_every"]
        self.crash_dir: Path = options["crash_dir"] or REPO / "tests" / "fuzz" / "runs" / "crashes" / target
        self.summary: dict[str, dict[str, Any]] = {}
        self.history: list[bytes] = []
        self.execs = 0
        self.api: Any = None
        self.harness: Any = None
        self._start()

    def _start(self) -> None:
        if self.target != "images":
            from tests.fuzz.api import FuzzApi

            self.api = FuzzApi().start()
        self.harness = self.module.make(self.api)

    def _reset(self) -> None:
        """A fresh app and data directory after a failure (the old one may be the broken state)."""
        if self.api is not None:
            try:
                self.api.close()
            except Exception:  # the app broken by the input may not even close; its folder goes anyway
                traceback.print_exc()
        self._start()
        self.history.clear()

    def one(self, data: bytes) -> None:
        self.execs += 1
        self.history.append(data)
        try:
            self.harness.one(data)
            if self.check_every and self.execs % self.check_every == 0:
                try:
                    self.harness.check()
                except Exception:
                    self._save_history()
                    raise
                self.history.clear()
        except Exception as exc:
            if not self.keep_going:
                raise
            self._record(data, exc)
            if self.api is not None and not self.api.healthy():
                self._reset()

    def _save_history(self) -> None:
        """The inputs since the last good restart, in order: replaying them reproduces the failure."""
        folder = self.crash_dir / f"restart-{time.strftime('%Y%m%d-%H%M%S')}-{self.execs}"
        folder.mkdir(parents=True, exist_ok=True)
        for n, data in enumerate(self.history):
            (folder / f"{n:05d}").write_bytes(data)
        print(
            f"restart check failed: the {len(self.history)} inputs since the last one are in {folder}", file=sys.stderr
        )

    def _record(self, data: bytes, exc: BaseException) -> None:
        sig = signature(exc).encode("utf-8", "backslashreplace").decode()
        entry = self.summary.get(sig)
        if entry is None:
            name = "crash-" + hashlib.sha1(sig.encode()).hexdigest()[:12]
            self.crash_dir.mkdir(parents=True, exist_ok=True)
            (self.crash_dir / name).write_bytes(data)
            # Inputs carry lone surrogates and control characters: keep them readable, never fail on them.
            text = "".join(traceback.format_exception(exc)).encode("utf-8", "backslashreplace").decode()
            (self.crash_dir / f"{name}.txt").write_text(f"{sig}\n\n{text}", errors="backslashreplace")
            entry = self.summary[sig] = {"file": name, "count": 0, "first_exec": self.execs}
            print(f"\n=== NEW FAILURE #{len(self.summary)} [{sig}] -> {self.crash_dir / name}\n{text}", file=sys.stderr)
        entry["count"] += 1
        (self.crash_dir / "summary.json").write_text(json.dumps(self.summary, indent=1))


def main(target: str) -> None:
    argv, options = _own_flags(sys.argv)
    # Refusals are the expected answer to most inputs: the multipart parser's warning per malformed
    # form and the job runner's per-item logs would bury libFuzzer's status lines.
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("python_multipart").setLevel(logging.CRITICAL)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        import atheris
    except ImportError:
        raise SystemExit(
            "atheris is not installed: `pip install -e .[dev]` installs it on Linux x86-64 (its only wheels). "
            "Replaying the saved corpus needs no atheris: pytest tests/fuzz/test_replay.py"
        ) from None

    with atheris.instrument_imports(include=INSTRUMENT[target]):
        runner = Runner(target, options)
    kwargs: dict[str, Any] = {}
    mutate = runner.module.mutate
    if mutate is not None:

        def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
            # A mutator bug must not end a 10-minute run: say so, and mutate byte-wise instead.
            try:
                out: bytes = mutate(data, max_size, seed, atheris.Mutate)
                return out
            except Exception:
                traceback.print_exc()
                print(f"mutator of {target} failed (seed {seed}); byte mutation used", file=sys.stderr)
                return bytes(atheris.Mutate(data, max_size))

        kwargs["custom_mutator"] = custom_mutator
    atheris.Setup(argv, runner.one, **kwargs)
    atheris.Fuzz()
