"""atheris fuzzer: job manifests: .jsonl/.ndjson/.csv parsing in indexer/jobs/sources.py, then ingest and the write.

    python tests/fuzz/fuzz_manifests.py WORK_DIR tests/fuzz/corpus/manifests -max_total_time=600 [--keep-going]

Flags and what is recorded: tests/fuzz/entry.py; the harness and its invariant: harness_manifests.py.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:1] = [str(REPO)]  # run as a script: import tests.fuzz.* from the repository root

from tests.fuzz.entry import main  # noqa: E402

if __name__ == "__main__":
    main("manifests")
