"""The SQ8 memory section of ``bench/peers.py``: ``bench/index_choice.py`` in a fresh process.

The issue's goal "SQ8 with re-ranking at 1M x 384 uses no more than 30% of the flat index's memory at
recall@10 >= 0.95" is about resident memory, which only a process with nothing else in its heap reads
cleanly; so the measurement runs as its own script (``index_choice.py --indexes IVF-SQ8,Flat --json``:
synthetic clustered unit vectors, both indexes built by ``indexer.builder.build_index`` exactly as
``auto`` builds them) and this module relays its log and reads its JSON. HNSW is left out: it is not
part of this goal and takes long to build at 1M.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "index_choice.py"
ROOT = SCRIPT.parents[1]
INDEXES = "IVF-SQ8,Flat"


def run_sq8_memory(n: int, dim: int, target: float, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """index_choice.py's result (settings, ``rows``, ``sq8_over_flat``), or ``{"error": ..., "command": ...}``
    when the script fails: the per-set results already measured are then still written."""
    out = work / f"sq8-{n}x{dim}.json"
    command = [sys.executable, str(SCRIPT), "--n", str(n), "--dim", str(dim), "--target", str(target),
               "--indexes", INDEXES, "--json", str(out)]  # fmt: skip
    shown = " ".join([".venv/bin/python", str(SCRIPT.relative_to(ROOT)), *command[2:-2]])
    log(f"SQ8 memory: {shown} (fresh process)")
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            log("  " + line.rstrip())
            tail = [*tail[-19:], line.rstrip()]
    if proc.returncode != 0 or not out.exists():
        log(f"  index_choice.py failed (exit {proc.returncode}); the SQ8 goal is reported as not measured")
        last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
        return {"error": f"exit {proc.returncode}: {last.replace('|', '/')}", "command": shown}  # one table cell
    result: dict[str, Any] = json.loads(out.read_text())
    result["command"] = shown
    return result
