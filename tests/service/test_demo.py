"""The README's main command (`make demo` → `python -m service.demo`) works from start to finish."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run(
        [sys.executable, "-m", "service.demo", "--data-dir", str(tmp_path / "d"), "--port", str(port),
         "--items", "3000", "--exit"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    out = " ".join(r.stdout.split())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "3000 items" in out
    assert "32/32 find themselves first" in out
    assert "after restart: 3000 items, 3000 indexed" in out
    assert "'category': 'bags'" in out
