"""CI replays the saved fuzz corpus: every file of ``corpus/<target>/`` goes through the same harness
function the atheris fuzzer calls (no atheris needed), against one real app, and must keep the
invariant; then the app restarts over what the corpus wrote and everything reads back the same.
The mutators run over every seed too: a mutator that raises would end a fuzzing run.

A failing case is named ``<target>/<file>``; reproduce it alone with
``python tests/fuzz/fuzz_<target>.py tests/fuzz/corpus/<target>/<file>``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.api import FuzzApi
from tests.fuzz.mutators import bytes_fallback

CORPUS = Path(__file__).parent / "corpus"
TARGETS = ("images", "json", "multipart", "manifests")
CASES = [(t, p) for t in TARGETS for p in sorted((CORPUS / t).iterdir()) if p.is_file()]
MAX_SIZE = 1 << 16
CHAIN = 30


class Replay:
    """One app for the whole corpus, as in a fuzzing run; replaced after an input that left it unable
    to serve its collections, so that one defect fails its own case and not every later one."""

    def __init__(self) -> None:
        self.api = FuzzApi().start()
        self.harnesses = {t: importlib.import_module(f"tests.fuzz.harness_{t}").make(self.api) for t in TARGETS}
        self.renewed = 0

    def one(self, target: str, data: bytes) -> None:
        try:
            self.harnesses[target].one(data)
        finally:
            if not self.api.healthy():
                self.close()
                self.__init__()  # type: ignore[misc]
                self.renewed += 1

    def close(self) -> None:
        self.api.close()


@pytest.fixture(scope="module")
def replay() -> Iterator[Replay]:
    state = Replay()
    yield state
    state.close()


def test_every_target_has_a_corpus() -> None:
    for target in TARGETS:
        assert len([p for p in (CORPUS / target).iterdir() if p.is_file()]) >= 5, f"corpus/{target} has under 5 seeds"


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_corpus_input_keeps_the_invariant(replay: Replay, target: str, path: Path) -> None:
    replay.one(target, path.read_bytes())


def test_restart_reads_back_what_the_corpus_wrote(replay: Replay) -> None:
    if not replay.api.tracked:  # run alone (-k): write the corpus first; its own failures are reported above
        for target, path in CASES:
            with contextlib.suppress(Exception):
                replay.one(target, path.read_bytes())
    assert replay.api.tracked, "the corpus acknowledged no write: the readback invariant was never exercised"
    replay.api.restart()


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "images"])
def test_mutators_change_every_seed_within_the_size(target: str) -> None:
    """A mutator that raised would end a fuzzing run; one that returned its input unchanged every
    time would leave the structure-aware half of a run idle; one that is not a function of its seed
    would make a run impossible to repeat."""
    mutate = importlib.import_module(f"tests.fuzz.harness_{target}").mutate
    for path in sorted((CORPUS / target).iterdir()):
        seed_bytes = path.read_bytes()
        outputs = [mutate(seed_bytes, MAX_SIZE, seed, bytes_fallback) for seed in range(12)]
        assert all(isinstance(o, bytes) and len(o) <= MAX_SIZE for o in outputs), path.name
        assert any(o != seed_bytes for o in outputs), f"{path.name}: 12 mutations left it unchanged"
        assert outputs[3] == mutate(seed_bytes, MAX_SIZE, 3, bytes_fallback), f"{path.name}: not repeatable"
        chained = seed_bytes
        for seed in range(CHAIN):  # mutants of mutants: the inputs a long run mutates most
            chained = mutate(chained, MAX_SIZE, seed, bytes_fallback)
            assert len(chained) <= MAX_SIZE, path.name
