"""The planner's activation estimate against the bytes autograd really saves, dense and MoE (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.modeling import BigTrainForCausalLM
from bigtrain.pipeline.memory import activation_bytes


def saved_bytes(cfg: BigTrainConfig, micro_batch: int, seq_len: int) -> int:
    """Bytes of the distinct storages autograd keeps for backward in one training forward, weights excluded."""
    torch.manual_seed(0)
    model = BigTrainForCausalLM(cfg).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(n for ptr, n in saved.items() if ptr not in weights)


@pytest.mark.parametrize("moe", [None, {"num_experts": 8, "top_k": 2}, {"num_experts": 4, "top_k": 4}])
def test_the_activation_estimate_is_within_15_percent_of_what_autograd_saves(moe: dict | None) -> None:
    cfg = BigTrainConfig(
        vocab_size=512,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=352,
        moe=moe,
    )
    measured = saved_bytes(cfg, micro_batch=2, seq_len=128)
    estimate = activation_bytes(cfg, micro_batch=2, seq_len=128, checkpointing=False, width=4)
    assert 0.85 < estimate / measured < 1.15, (estimate, measured)
