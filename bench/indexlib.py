"""``bench/index.py --compare-to REV``: the code of another revision, checked out beside this one.

"Before" processes run the revision's code from a temporary ``git worktree`` (cwd and PYTHONPATH
there, the same ``.venv`` interpreter); "after" processes run this tree's code the same way, so the
two differ only in the repository's Python code. The editable install's import hook is appended to
``sys.meta_path``, after the ``PYTHONPATH`` entries, so PYTHONPATH wins; ``check_code`` proves it per
revision instead of trusting that.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKAGES = ("service", "indexer", "models")
# Flags the bench passes on each command line; ERS_* settings it sets are checked separately.
CLI_FLAGS = {"serve": ("--port",), "worker": ()}


class CodeMismatch(RuntimeError):
    """The revision's code cannot be driven the way the bench drives the current tree."""


def code_env(code: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` plus PYTHONPATH pointing at ``code`` (a repository root) first."""
    return env | {"PYTHONPATH": os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])}


class Worktree:
    """A detached ``git worktree`` of ``rev`` in a temp dir; removed (and pruned) on exit."""

    def __init__(self, rev: str) -> None:
        self.rev = rev
        self.path = Path()
        self.commit = ""

    def __enter__(self) -> Worktree:
        resolved = _git("rev-parse", "--verify", "--quiet", f"{self.rev}^{{commit}}")
        if resolved.returncode != 0:
            raise CodeMismatch(f"--compare-to {self.rev}: not a commit in {REPO}")
        self.commit = resolved.stdout.strip()
        self.path = Path(tempfile.mkdtemp(prefix="ers-bench-rev-")) / "tree"
        added = _git("worktree", "add", "--detach", str(self.path), self.commit)
        if added.returncode != 0:
            self.__exit__()
            raise CodeMismatch(f"git worktree add {self.rev} failed: {added.stderr.strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        removed = _git("worktree", "remove", "--force", str(self.path))
        if removed.returncode != 0:  # leave nothing registered even if the directory is half gone
            _git("worktree", "prune")
        shutil.rmtree(self.path.parent, ignore_errors=True)


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)


_PROBE = """
import json, sys
import service, indexer, models
from service.settings import Settings
print(json.dumps({"packages": {m: sys.modules[m].__file__ for m in %r}, "settings": sorted(Settings.model_fields)}))
"""


def check_code(code: Path, ers_names: Iterable[str]) -> None:
    """Fail clearly unless processes started with ``code_env(code, ...)`` import ``code``'s packages,
    accept the CLI flags the bench passes and read every ``ERS_*`` variable it sets."""
    env = code_env(code, {k: v for k, v in os.environ.items() if not k.startswith("ERS_")})
    probe = subprocess.run([sys.executable, "-c", _PROBE % (PACKAGES,)], cwd=code, env=env,
                           capture_output=True, text=True, check=False)  # fmt: skip
    if probe.returncode != 0:
        raise CodeMismatch(f"{code}: cannot import its packages: {probe.stderr.strip()[-500:]}")
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    elsewhere = {m: f for m, f in found["packages"].items() if not Path(f).resolve().is_relative_to(code.resolve())}
    if elsewhere:
        raise CodeMismatch(f"{code}: PYTHONPATH did not win, imported {elsewhere}")
    unknown = sorted(k for k in ers_names if k.removeprefix("ERS_").lower() not in found["settings"])
    if unknown:
        raise CodeMismatch(f"{code}: its Settings has no field for {', '.join(unknown)}")
    for command, flags in CLI_FLAGS.items():
        helped = subprocess.run([str(BIN / "ers"), command, "--help"], cwd=code, env=env | {"COLUMNS": "200"},
                                capture_output=True, text=True, check=False)  # fmt: skip
        if helped.returncode != 0:
            raise CodeMismatch(f"{code}: `ers {command} --help` failed: {helped.stderr.strip()[-300:]}")
        missing = [f for f in flags if f not in helped.stdout]
        if missing:
            raise CodeMismatch(f"{code}: `ers {command}` does not accept {', '.join(missing)}")


def summarise(rates: list[float]) -> str:
    spread = f" ({min(rates):.1f}–{max(rates):.1f})" if len(rates) > 1 else ""
    return f"{statistics.mean(rates):.1f}{spread}"


def print_comparison(
    rows: list[dict[str, Any]], runners: list[str], rev: str, markdown: bool, console: Console
) -> None:
    """One row per source and runner: mean items/s before and after (min–max over rounds), after ÷ before."""
    head = ["source", "encoder", "runner", f"before ({rev}) items/s", "after items/s", "after ÷ before",
            "bare items/s (after)"]  # fmt: skip
    table = Table(*head, title=f"indexing jobs, this tree vs {rev} (runs interleaved; mean, min–max over rounds)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        for runner in runners:
            before, after = row["before"][runner], row["after"][runner]
            ratio = statistics.mean(after) / statistics.mean(before) if statistics.mean(before) else float("nan")
            cells = [row["source"], row["encoder"], runner, summarise(before), summarise(after), f"{ratio:.2f}",
                     f"{row['bare']:.1f}"]  # fmt: skip
            table.add_row(*cells)
            lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    if markdown:
        print("\n".join(lines))
