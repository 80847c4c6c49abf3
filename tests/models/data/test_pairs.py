"""Image–caption pairs: the emoji protocols (unseen style; unseen concepts) on the real emoji packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.data.pairs import load_pair_data
from models.training.recipe import TrainingError


def test_held_out_concepts_never_reach_training_and_the_split_is_fixed(zoo_dirs: tuple[Path, Path]) -> None:
    cache = zoo_dirs[1]
    style = load_pair_data("emoji", cache, 300, None, 0.1, seed=0)
    assert [it.key for it in style.train] == [it.key for it in style.eval]  # same concepts, other style
    first = load_pair_data("emoji", cache, 300, None, 0.1, seed=0, holdout_concepts=0.2, split_seed=0)
    again = load_pair_data("emoji", cache, 300, None, 0.1, seed=7, holdout_concepts=0.2, split_seed=0)
    other = load_pair_data("emoji", cache, 300, None, 0.1, seed=0, holdout_concepts=0.2, split_seed=1)
    held = {it.key for it in first.eval}
    assert len(held) == 60 and len(first.train) == 240 and not held & {it.key for it in first.train}
    assert held == {it.key for it in again.eval}  # the training seed does not move the split
    assert held != {it.key for it in other.eval}
    twitter = {it.key: it.image for it in style.eval}
    assert all(it.image == twitter[it.key] for it in first.eval)  # evaluated on the Twitter drawings
    assert "60 held-out concepts (split seed 0)" in first.description
    # validation and test halves of the evaluation items: disjoint, together every item
    val, test = (load_pair_data("emoji", cache, 300, None, 0.1, seed=0, eval_split=s).eval for s in ("val", "test"))
    assert [it.key for it in val] == [it.key for it in style.eval[1::2]] and len(test) == 150
    assert {it.key for it in val} | {it.key for it in test} == {it.key for it in style.eval}
    assert not {it.key for it in val} & {it.key for it in test}
    with pytest.raises(TrainingError, match="eval_split"):
        load_pair_data("emoji", cache, 300, None, 0.1, seed=0, eval_split="train")


@pytest.mark.parametrize("fraction", [1.0, -0.1])
def test_bad_holdout_fractions_are_refused(zoo_dirs: tuple[Path, Path], fraction: float) -> None:
    with pytest.raises(TrainingError, match="holdout_concepts"):
        load_pair_data("emoji", zoo_dirs[1], 300, None, 0.1, seed=0, holdout_concepts=fraction)


def test_held_out_concepts_need_the_emoji_source(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="a CSV holds images out with eval_fraction"):
        load_pair_data(str(tmp_path / "pairs.csv"), tmp_path, None, None, 0.1, seed=0, holdout_concepts=0.2)
