"""`upcycle` (issue 18): dense -> MoE, function preservation, fine-grained and Drop-Upcycling, the CLI's bad input,
the staged recipe's `grow:`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bigtrain.cli.grow import main
from bigtrain.config import GrowSpec
from bigtrain.errors import BigtrainError
from bigtrain.growth import grow, read_growth_record
from bigtrain.growth.verify import load_model
from tests.growth_helpers import random_model, save_stock_llama, state_dict, tiny_config

V = 100


def dense(**over: object):
    return tiny_config(vocab_size=V, **over)


def logits(cfg, tensors, ids) -> torch.Tensor:
    with torch.no_grad():
        return load_model(cfg, tensors)(input_ids=ids).logits


@pytest.mark.parametrize(
    ("experts", "k", "g", "router"),
    [(4, 2, 1, "normal"), (4, 1, 1, "zeros"), (2, 1, 2, "zeros"), (4, 2, 3, "zeros")],
)
def test_upcycled_logits_equal_the_dense_ones(experts, k, g, router):
    cfg = dense()
    sd = state_dict(random_model(cfg))
    up = grow(cfg, sd, "upcycle", experts=experts, top_k=k, granularity=g, router_init=router)
    assert up.config.moe["num_experts"] == experts * g and up.config.moe["top_k"] == k * g
    assert up.config.layer_intermediate_sizes == [96 // g] * 3
    assert up.record.function_preserving
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(up.config, dict(up.tensors), ids), logits(cfg, sd, ids), atol=1e-5, rtol=0)


def test_fine_grained_with_a_normal_router_is_not_preserving():
    cfg = dense()
    sd = state_dict(random_model(cfg))
    up = grow(cfg, sd, "upcycle", experts=2, top_k=1, granularity=2)
    assert not up.record.function_preserving and up.record.args["router_init"] == "normal"
    ids = torch.randint(0, V, (2, 16))
    assert (logits(up.config, dict(up.tensors), ids) - logits(cfg, sd, ids)).abs().max() > 1e-3


def test_drop_upcycling_reinitialises_a_seeded_share_with_the_source_statistics():
    cfg = dense(intermediate_size=400, num_hidden_layers=1)
    sd = state_dict(random_model(cfg))
    up = dict(grow(cfg, sd, "upcycle", experts=4, top_k=2, drop_ratio=0.5, seed=3).tensors)
    again = dict(grow(cfg, sd, "upcycle", experts=4, top_k=2, drop_ratio=0.5, seed=3).tensors)
    gate = sd["model.layers.0.mlp.gate_proj.weight"]
    down = sd["model.layers.0.mlp.down_proj.weight"]
    dropped_sets = []
    for e in range(4):
        p = f"model.layers.0.mlp.experts.{e}."
        torch.testing.assert_close(up[p + "gate_proj.weight"], again[p + "gate_proj.weight"])  # seeded
        rows = (up[p + "gate_proj.weight"] != gate).any(dim=1)
        up_rows = (up[p + "up_proj.weight"] != sd["model.layers.0.mlp.up_proj.weight"]).any(dim=1)
        cols = (up[p + "down_proj.weight"] != down).any(dim=0)
        assert rows.sum() == 200 and torch.equal(rows, up_rows) and torch.equal(rows, cols)  # the same dims
        fresh = up[p + "gate_proj.weight"][rows]
        assert abs(fresh.std().item() - gate.std().item()) < 0.1 * gate.std().item()
        dropped_sets.append(tuple(rows.nonzero().flatten().tolist()))
    assert len(set(dropped_sets)) == 4  # each expert its own dimensions


def test_upcycle_refuses_bad_input():
    cfg = dense()
    sd = state_dict(random_model(cfg))
    with pytest.raises(BigtrainError, match="--top-k 3 must be in"):
        grow(cfg, sd, "upcycle", experts=2, top_k=3)
    with pytest.raises(BigtrainError, match="does not divide layer 0's FFN size 96"):
        grow(cfg, sd, "upcycle", experts=2, top_k=1, granularity=5)
    with pytest.raises(BigtrainError, match="used alone"):
        grow(cfg, sd, "stack+upcycle", experts=2, top_k=1, layers=6)
    with pytest.raises(BigtrainError, match="--experts applies to upcycle only"):
        grow(cfg, sd, "stack", layers=6, experts=2)
    moe = tiny_config(vocab_size=V, moe={"num_experts": 2, "top_k": 1})
    with pytest.raises(BigtrainError, match="already an MoE model"):
        grow(moe, state_dict(random_model(moe)), "upcycle", experts=4, top_k=2)
    with pytest.raises(BigtrainError, match="the source is an MoE model; depth and width operators grow dense"):
        grow(moe, state_dict(random_model(moe)), "stack", layers=6)


@pytest.fixture(scope="module")
def stock(tmp_path_factory) -> Path:
    return save_stock_llama(random_model(dense()), tmp_path_factory.mktemp("stock") / "llama")


def run(*argv: object) -> int:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    return int(e.value.code or 0)


def test_cli_upcycles_to_a_stock_mixtral_and_verifies(stock, tmp_path, capsys):
    from transformers import MixtralForCausalLM

    out = tmp_path / "moe"
    argv = ["--op", "upcycle", "--experts", 4, "--top-k", 2, "--verify", "--no-progress"]
    assert run(stock, out, *argv) == 0
    assert "verify: max |logit diff|" in capsys.readouterr().out
    record = read_growth_record(out)
    assert record.verify["passed"] and record.function_preserving and record.target_config["moe"]["num_experts"] == 4
    mixtral = MixtralForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, V, (1, 12))
    dense_model = load_model(dense(), load_file(stock / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(mixtral(input_ids=ids).logits, dense_model(input_ids=ids).logits, atol=1e-5, rtol=0)
    # an MoE model cannot be upcycled again: one line, exit 2, nothing written
    capsys.readouterr()
    assert run(out, tmp_path / "again", "--op", "upcycle", "--experts", 8, "--top-k", 2) == 2
    err = capsys.readouterr().err
    assert "already an MoE model (4 experts)" in err and err.count("\n") == 1
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--experts", "2", "--top-k", "3"], "--top-k 3 must be in [1, --experts 2]"),
        (["--experts", "2", "--top-k", "1", "--granularity", "5"], "does not divide"),
        (["--experts", "2"], "give --experts E and --top-k K"),
        (["--experts", "2", "--top-k", "1", "--layers", "6"], "--layers does not apply to upcycle"),
        (["--experts", "2", "--top-k", "1", "--drop-ratio", "1.5"], "--drop-ratio 1.5 must be in [0, 1]"),
    ],
)
def test_cli_bad_input_exit_2_nothing_written(stock, tmp_path, capsys, argv, message):
    assert run(stock, tmp_path / "out", "--op", "upcycle", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_growspec_upcycle_and_stage_sizes():
    spec = GrowSpec(op="upcycle", experts=8, top_k=2, granularity=2, drop_ratio=0.5)
    assert spec.sizes() == {"moe": {"num_experts": 16, "top_k": 4}}
    assert spec.grow_args() == {"experts": 8, "top_k": 2, "granularity": 2, "drop_ratio": 0.5}
    with pytest.raises(ValueError, match="top_k 3 exceeds experts 2"):
        GrowSpec(op="upcycle", experts=2, top_k=3)
    with pytest.raises(ValueError, match="used alone"):
        GrowSpec(op="stack+upcycle", experts=2, top_k=1, layers=4)


def test_a_staged_recipe_upcycles_its_second_stage(tmp_path):
    from bigtrain.config import RecipeError, load_recipe
    from bigtrain.pipeline.stages import resolve_stages

    head = f"""
output_dir: {tmp_path / "run"}
model: {{hidden_size: 64, num_layers: 2, head_dim: 16, num_heads: 4, intermediate_size: 176, vocab_size: 320}}
train: {{max_steps: 3, lr: 1.0e-3}}
stages:
  - name: dense
"""
    path = tmp_path / "r.yaml"
    path.write_text(head + "  - name: moe\n    grow: {op: upcycle, experts: 4, top_k: 2, granularity: 2}\n")
    dense_stage, moe_stage = resolve_stages(load_recipe(path), source=str(path))
    m = moe_stage.recipe.model
    assert m.moe is not None and (m.moe.num_experts, m.moe.top_k) == (8, 4) and m.intermediate_size == 88
    assert dense_stage.recipe.model.moe is None
    path.write_text(head + "  - name: moe\n    grow: {op: upcycle, experts: 4, top_k: 2, granularity: 3}\n")
    with pytest.raises(RecipeError, match="granularity 3 does not divide intermediate_size 176"):
        load_recipe(path)


def test_step_after_upcycle_freezes_the_inherited_attention_and_trains_experts_and_router(tmp_path):
    from bigtrain.config import RecipeError, StepConfig, load_recipe
    from bigtrain.pipeline.memory import model_tensors
    from bigtrain.train.step_lora import apply_step

    cfg = tiny_config(vocab_size=V, num_hidden_layers=2, moe={"num_experts": 4, "top_k": 2})
    step = StepConfig(freeze="attention", lora_rank=4)
    assert step.lora_targets == ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = apply_step(random_model(cfg), step, tmp_path, inherited={0, 1})
    trains = {n: p.requires_grad for n, p in model.named_parameters()}
    for i in (0, 1):
        p = f"model.layers.{i}."
        assert not trains[p + "self_attn.q_proj.base_layer.weight"] and not trains[p + "input_layernorm.weight"]
        assert trains[p + "self_attn.q_proj.lora_A.default.weight"]
        assert trains[p + "mlp.router.weight"] and trains[p + "mlp.experts.3.down_proj.weight"]
        assert trains[p + "post_attention_layernorm.weight"]
    assert not any(".mlp." in n and ".lora_" in n for n in trains)
    planned = {t.name: t.trainable for t in model_tensors(cfg, {0, 1}, step)}  # the planner agrees
    assert planned["model.layers.0.mlp.router.weight"] and not planned["model.layers.0.self_attn.q_proj.weight"]

    head = f"""
output_dir: {tmp_path / "run"}
model: {{hidden_size: 64, num_layers: 2, head_dim: 16, num_heads: 4, intermediate_size: 176, vocab_size: 320}}
train: {{max_steps: 3, lr: 1.0e-3}}
stages:
  - name: dense
  - name: moe
    grow: {{op: upcycle, experts: 4, top_k: 2}}
"""
    path = tmp_path / "r.yaml"
    path.write_text(head + "    step: {freeze: attention, lora: false}\n")
    assert load_recipe(path).stages[1].step.freeze == "attention"
    path.write_text(head + "    step: {lora_rank: 4}\n")
    with pytest.raises(RecipeError, match=r"give step\.freeze: attention"):
        load_recipe(path)


def test_carried_moments_copy_with_the_weights_router_and_dropped_entries_start_at_zero():
    from bigtrain.growth.grow import grow_optimizer_state

    cfg = dense(num_hidden_layers=1)
    state = {k: v.abs() + 1 for k, v in state_dict(random_model(cfg)).items()}  # no zero entries
    args = {"experts": 2, "top_k": 1, "granularity": 2, "drop_ratio": 0.25, "seed": 1}
    grown = dict(grow_optimizer_state(cfg, state, "upcycle", **args).tensors)
    weights = dict(grow(cfg, state, "upcycle", **args).tensors)
    assert not grown["model.layers.0.mlp.router.weight"].any()
    for e in range(4):
        p = f"model.layers.0.mlp.experts.{e}."
        moment, weight = grown[p + "gate_proj.weight"], weights[p + "gate_proj.weight"]
        zero_rows = ~moment.any(dim=1)
        assert zero_rows.sum() == 12  # 0.25 of the 48-wide shard, the rows the weights re-drew
        assert torch.equal(moment[~zero_rows], weight[~zero_rows])
        assert torch.equal(grown[p + "down_proj.weight"][:, ~zero_rows], weights[p + "down_proj.weight"][:, ~zero_rows])
