"""A Mixture-of-Experts model trains under ZeRO-3 on 2 CPU ranks whose tokens route to different experts
(issue 18): no hang, the MoE metrics in metrics.jsonl, a stock Mixtral export."""

from __future__ import annotations

import json
from pathlib import Path

from tests.trainer_runs import launch, metrics, tiny_overrides


def test_zero3_moe_two_ranks_route_differently_and_log_routing(demo_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = tiny_overrides(
        demo_data,
        out,
        tmp_path / "cache",
        **{
            "model.moe.num_experts": 8,
            "model.moe.top_k": 1,
            "model.tie_embeddings": False,
            "train.zero_stage": 3,
            "train.max_steps": 4,
            "train.micro_batch_size": 1,
            "train.global_batch_size": 2,
            "train.eval_every": 0,
            "data.seq_len": 16,
        },
    )
    launch(overrides, ranks=2)
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
    info = json.loads((out / "run.json").read_text())
    assert info["zero_stage"] == 3
    config = json.loads((out / "hf" / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["num_local_experts"] == 8
