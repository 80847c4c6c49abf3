"""atheris fuzzer: JSON bodies: upsert (payloads, vectors, ids), search and batch search (filters, k),
collection create, job submit, embed.

    python tests/fuzz/fuzz_json.py WORK_DIR tests/fuzz/corpus/json -max_total_time=600 [--keep-going]

Flags and what is recorded: tests/fuzz/entry.py; the harness and its invariant: harness_json.py.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:1] = [str(REPO)]  # run as a script: import tests.fuzz.* from the repository root

from tests.fuzz.entry import main  # noqa: E402

if __name__ == "__main__":
    main("json")
