"""The held-out loss does not depend on the number of ranks: the same weights, scored by `train.evaluate` at
1 rank and at 2 (real DeepSpeed ZeRO-3, real text and tokenizer), give the same loss."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bigtrain.train.distributed import World
from bigtrain.train.evaluate import evaluate
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


class FakeEngine:
    """An engine whose loss is the batch's mean token id: enough for evaluate's bookkeeping."""

    device = torch.device("cpu")

    def eval(self) -> None: ...

    def train(self) -> None: ...

    def __call__(self, input_ids: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=input_ids.float().mean())


class FakeRange:
    count = 10

    def batch(self, idx: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(idx, dtype=torch.long)[:, None].repeat(1, 4)


def test_evaluate_reads_the_device_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No host read per held-out batch (each would wait for the device): the batch losses are summed on the
    device and read back once, after the all-reduce."""
    monkeypatch.setattr("bigtrain.train.evaluate.dist.all_reduce", lambda t: None)
    reads = []
    for name in ("item", "tolist", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, o=original, n=name: reads.append(n) or o(t))
    result = evaluate(FakeEngine(), FakeRange(), World(0, 0, 1), micro=3, max_batches=3)  # type: ignore[arg-type]
    assert result["eval_loss"] == pytest.approx(sum(range(9)) / 9)  # batches of 3, 3, 3: means weighed
    assert reads == ["tolist"]
