"""Mixture-of-Experts FFNs (issue 18): the model, its auxiliary losses, counting, the recipe schema."""

from __future__ import annotations

import math

import pytest
import torch

from bigtrain.config.model import ModelSpec
from bigtrain.model.configuration import architecture_problems
from bigtrain.model.counting import active_params, palm_flops_per_token, total_params, train_flops_per_token
from bigtrain.model.moe import MoEFeedForward
from bigtrain.model.param_shapes import expected_shapes
from tests.growth_helpers import random_model, tiny_config

MOE = {"num_experts": 4, "top_k": 2}


def moe_config(**over: object):
    return tiny_config(vocab_size=100, moe={**MOE, **over.pop("moe", {})}, **over)  # type: ignore[arg-type]


def test_moe_model_forwards_backwards_with_aux_losses_in_the_loss():
    cfg = moe_config()
    model = random_model(cfg).train()
    ids = torch.randint(0, 100, (2, 12))
    out = model(input_ids=ids, labels=ids)
    lb, z = model.moe_losses()
    assert lb.item() > 0 and z.item() > 0
    assert out.aux_loss is not None
    moe = cfg.moe
    assert torch.allclose(out.aux_loss, moe["router_aux_loss_coef"] * lb + moe["router_z_loss_coef"] * z)
    model.eval()
    plain = model(input_ids=ids, labels=ids)
    assert plain.aux_loss is None  # eval: the cross-entropy alone
    torch.testing.assert_close(out.loss, plain.loss + out.aux_loss)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    for _, block in model.moe_blocks():
        assert block.router.weight.grad is not None and block.router.weight.grad.abs().sum() > 0
        for expert in block.experts:  # every expert runs (maybe on no token) and gets a gradient
            assert expert.gate_proj.weight.grad is not None
    stats = model.routing_stats()
    assert sorted(stats) == [0, 1, 2]
    for s in stats.values():
        assert s.tokens_per_expert.sum().item() == 2 * 12 * 2  # tokens x top_k
        assert 0 < s.entropy.item() <= math.log(4) + 1e-6


def test_moe_block_matches_a_direct_computation():
    torch.manual_seed(0)
    block = MoEFeedForward(8, {"num_experts": 3, "top_k": 2, "normalize_top_k": True}, lambda: torch.nn.Linear(8, 8))
    x = torch.randn(5, 8)
    probs = torch.softmax(block.router(x), -1)
    want = torch.zeros(5, 8)
    for t in range(5):
        w, idx = probs[t].topk(2)
        w = w / w.sum()
        for wi, e in zip(w, idx):
            want[t] += wi * block.experts[int(e)](x[t])
    torch.testing.assert_close(block(x), want)
    assert block.aux_loss.item() > 0  # E sum f P: 1 when balanced


def test_every_n_layers_and_shapes():
    cfg = moe_config(num_hidden_layers=4, moe={"every_n_layers": 2})
    assert [cfg.layer_is_moe(i) for i in range(4)] == [False, True, False, True]
    shapes = expected_shapes(cfg)
    assert "model.layers.0.mlp.gate_proj.weight" in shapes
    assert shapes["model.layers.1.mlp.router.weight"] == (4, 64)
    assert shapes["model.layers.1.mlp.experts.3.down_proj.weight"] == (64, 96)
    model = random_model(cfg)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert not cfg.is_uniform  # never exported as a stock LLaMA


def test_flops_count_active_params_and_memory_all():
    cfg = moe_config()
    dense = tiny_config(vocab_size=100)
    assert active_params(cfg) < total_params(cfg)
    expert = 3 * 64 * 96
    assert total_params(cfg) - active_params(cfg) == 3 * (4 - 2) * expert
    assert active_params(dense) == total_params(dense)
    # top-2 of 4 experts: two FFNs' matmuls per token plus the router
    router = 3 * 4 * 64
    assert train_flops_per_token(cfg, 32) - train_flops_per_token(dense, 32) == 6 * (3 * expert + router)
    assert palm_flops_per_token(cfg, 32) - palm_flops_per_token(dense, 32) == 6 * (3 * expert + router)
    from bigtrain.pipeline.memory import model_tensors

    assert sum(t.numel for t in model_tensors(cfg)) == total_params(cfg)


def test_recipe_schema_and_bad_moe():
    spec = ModelSpec(hidden_size=64, num_layers=2, head_dim=16, num_heads=4, moe={"num_experts": 8, "top_k": 2})
    cfg = spec.build_config(100)
    assert cfg.moe == {
        "num_experts": 8,
        "top_k": 2,
        "every_n_layers": 1,
        "router_aux_loss_coef": 0.01,
        "router_z_loss_coef": 0.001,
        "normalize_top_k": True,
    }
    with pytest.raises(ValueError, match="top_k 3 exceeds num_experts 2"):
        ModelSpec(moe={"num_experts": 2, "top_k": 3})
    bad = tiny_config(moe={"num_experts": 2, "top_k": 3})
    assert architecture_problems(bad) == ["moe: top_k must be in [1, num_experts = 2], got 3"]
    # the HF config round-trips
    again = type(cfg).from_dict(cfg.to_dict())
    assert again.moe == cfg.moe and again.is_moe


def test_export_is_a_stock_mixtral_with_equal_logits_and_reads_back(tmp_path):
    from transformers import MixtralForCausalLM

    from bigtrain.ckpt.source import open_checkpoint
    from bigtrain.train.distributed import World
    from bigtrain.train.export import export_hf

    cfg = moe_config(num_hidden_layers=2)
    model = random_model(cfg)
    export_hf(model, cfg, tmp_path / "hf", None, World(0, 0, 1))
    mixtral = MixtralForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.randint(0, 100, (2, 10))
    torch.testing.assert_close(mixtral(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)
    src = open_checkpoint(tmp_path / "hf")  # back under bigtrain's names
    assert src.model_type == "mixtral" and src.config.moe["num_experts"] == 4 and src.config.moe["top_k"] == 2
    sd = model.state_dict()
    assert set(src) == set(sd)
    torch.testing.assert_close(
        src["model.layers.1.mlp.experts.3.up_proj.weight"], sd["model.layers.1.mlp.experts.3.up_proj.weight"]
    )
    # a layout Mixtral cannot hold (MoE every other layer): bigtrain's own class
    other = moe_config(num_hidden_layers=2, moe={"every_n_layers": 2})
    export_hf(random_model(other), other, tmp_path / "own", None, World(0, 0, 1))
    assert open_checkpoint(tmp_path / "own").model_type == "bigtrain"


def test_a_mixtral_saved_by_transformers_reads_as_bigtrain_with_equal_logits(tmp_path):
    from transformers import MixtralForCausalLM

    from bigtrain.ckpt.source import open_checkpoint
    from bigtrain.growth.verify import load_model
    from bigtrain.model.mixtral import to_mixtral_config

    cfg = moe_config(num_hidden_layers=2)
    torch.manual_seed(0)
    mixtral = MixtralForCausalLM(to_mixtral_config(cfg)).float().eval()
    mixtral.save_pretrained(tmp_path / "stock")  # transformers writes the per-expert names
    src = open_checkpoint(tmp_path / "stock")
    ids = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        want = mixtral(input_ids=ids).logits
        torch.testing.assert_close(load_model(src.config, src)(input_ids=ids).logits, want, atol=1e-5, rtol=0)
