"""atheris fuzzer: image decoding: models/core/images.py check_image and decode_image.

    python tests/fuzz/fuzz_images.py WORK_DIR tests/fuzz/corpus/images -max_total_time=600 [--keep-going]

Flags and what is recorded: tests/fuzz/entry.py; the harness and its invariant: harness_images.py.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:1] = [str(REPO)]  # run as a script: import tests.fuzz.* from the repository root

from tests.fuzz.entry import main  # noqa: E402

if __name__ == "__main__":
    main("images")
