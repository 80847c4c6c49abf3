#!/usr/bin/env bash
# Builds the separate virtual environment that bench/peers.py runs its peers from: the Chroma server
# (`chroma run`) and hnswlib. Benchmark tools only, never dependencies of ERS: nothing in ERS imports
# them. The bench drives Chroma over its REST API (v2) and runs hnswlib in a subprocess of this venv.
#
#     bash bench/setup_chroma.sh            # idempotent: a finished venv is left as it is
#     CHROMA_VENV=DIR bash bench/setup_chroma.sh
#
# Pins: chromadb 1.5.9 (Rust core; its HNSW is hnswlib), hnswlib 0.8.0 (the in-process ceiling),
# numpy for hnswlib's arrays. Chroma's telemetry is switched off by bench/peerslib/chroma.py.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHROMA_VENV:-$ROOT/.bench-venvs/chroma}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.ers-chroma-ready"
PINS=(
  "chromadb==1.5.9"
  "hnswlib==0.8.0"
  "numpy"
)
# The stamp records the pins: changing them above rebuilds on the next run.
WANT="${PINS[*]}"

# The REST load generator (bench/searchlib/wrk.py): C, so the client takes few of the 2 cores.
if ! command -v wrk >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "installing wrk (apt)"
  $SUDO apt-get install -y -qq wrk >/dev/null 2>&1 || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk >/dev/null; }
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/chroma" ]; then
  echo "chroma venv ready: $VENV"
  exit 0
fi

echo "building chroma venv in $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "${PINS[@]}"
# Fail here, not in the middle of a benchmark, when an import or the CLI is missing.
"$VENV/bin/python" - <<'PY'
import chromadb, hnswlib, numpy as np
index = hnswlib.Index(space="l2", dim=4)
index.init_index(max_elements=8)
index.add_items(np.eye(4, dtype=np.float32))
assert index.knn_query(np.eye(4, dtype=np.float32)[:1], k=1)[0][0][0] == 0
print(f"chromadb {chromadb.__version__}; hnswlib ok")
PY
[ -x "$VENV/bin/chroma" ] || { echo "no chroma CLI in $VENV/bin" >&2; exit 1; }
echo "$WANT" > "$STAMP"
echo "chroma venv ready: $VENV"
