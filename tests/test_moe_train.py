"""A Mixture-of-Experts model trains under ZeRO-3 on 2 CPU ranks whose tokens route to different experts
(issue 18): no hang, the MoE metrics in metrics.jsonl, a stock Mixtral export; its step-2 checkpoint resumes on
1 rank (a world-size conversion) with the same losses (tests/test_elastic.py's pattern)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.trainer_runs import launch, losses, metrics, tiny_overrides

pytestmark = pytest.mark.slow


def args(demo_data: Path, out: Path, cache: Path) -> list[str]:
    moe = {
        "model.moe.num_experts": 8,
        "model.moe.top_k": 1,
        "model.tie_embeddings": False,
        "train.zero_stage": 3,
        "train.max_steps": 4,
        "train.save_every": 2,
        "train.schedule": "constant",
        "train.micro_batch_size": 1,
        "train.global_batch_size": 2,
        "train.eval_every": 0,
        "data.seq_len": 16,
    }
    return tiny_overrides(demo_data, out, cache, **moe)


@pytest.fixture(scope="module")
def runs(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cache = tmp_path_factory.mktemp("token-cache")
    two = tmp_path_factory.mktemp("moe-two-ranks")
    launch(args(demo_data, two, cache), ranks=2)
    one = tmp_path_factory.mktemp("moe-resumed-on-one")
    (one / "checkpoints").mkdir()
    shutil.copytree(two / "checkpoints" / "step_2", one / "checkpoints" / "step_2")
    (one / "checkpoints" / "latest").write_text("step_2")
    launch(args(demo_data, one, cache), ranks=1)
    return {"two": two, "one": one}


def test_zero3_moe_two_ranks_route_differently_and_log_routing(runs: dict[str, Path]) -> None:
    out = runs["two"]
    steps = [m for m in metrics(out) if "moe_aux_loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    for m in steps:
        assert m["moe_aux_loss"] > 0 and m["loss"] > 0
        assert sorted(m["moe_tokens_per_expert"]) == ["0", "1"]
        for layer, counts in m["moe_tokens_per_expert"].items():
            assert len(counts) == 8 and sum(counts) == 2 * 16  # 2 ranks x 16 tokens x top-1
            assert 0 < m["moe_routing_entropy"][layer] <= 2.08  # log 8
    # 16 tokens over 8 experts per rank: some expert gets nothing on some rank at some step, and nothing hangs
    assert any(n > 0 for m in steps for n in m["moe_idle_experts"].values())
    assert json.loads((out / "run.json").read_text())["zero_stage"] == 3
    config = json.loads((out / "hf" / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["num_local_experts"] == 8


def test_moe_checkpoint_resumes_on_one_rank_with_the_same_losses(runs: dict[str, Path]) -> None:
    a, b = losses(runs["two"]), losses(runs["one"])
    assert sorted(b) == [3, 4]
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-5), (step, a[step], b[step])
