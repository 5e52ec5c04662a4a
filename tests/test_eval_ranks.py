"""The held-out loss does not depend on the number of ranks: the same weights, scored by `train.evaluate` at
1 rank and at 2 (real DeepSpeed ZeRO-3, real text and tokenizer), give the same loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer_runs import REPO, run_ranks


def scores(ranks: int, demo_data: Path, cache: Path, out: Path) -> dict:
    run_ranks(REPO / "tests" / "eval_ranks.py", [str(demo_data), str(cache), str(out)], ranks)
    return json.loads(out.read_text())


def test_held_out_loss_is_the_same_on_one_and_two_ranks(demo_data: Path, tmp_path: Path) -> None:
    one = scores(1, demo_data, tmp_path / "cache", tmp_path / "one.json")
    two = scores(2, demo_data, tmp_path / "cache", tmp_path / "two.json")
    assert one["held_out"] == two["held_out"] > 6  # the last case reads all of it, more than the others
    assert one["eval_loss"].keys() == two["eval_loss"].keys()
    for case, loss in one["eval_loss"].items():
        assert two["eval_loss"][case] == pytest.approx(loss, rel=1e-5), (case, loss, two["eval_loss"][case])
    # a different set scores differently (the comparison above could not pass by accident)
    assert one["eval_loss"]["3x1"] != pytest.approx(one["eval_loss"]["2x10000"], rel=1e-4)
