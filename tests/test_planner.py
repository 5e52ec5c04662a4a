"""The memory planner: the paper's layers-only numbers, exact parameter bookkeeping, the 1B plan, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from bigtrain.config import StepConfig, load_recipe
from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.modeling import BigTrainForCausalLM
from bigtrain.pipeline.memory import ZeroSettings, model_tensors, stage_memory
from bigtrain.pipeline.planner import plan_recipe
from bigtrain.pipeline.stage_search import compositions, paper_stage_cost, search_stage_sizes
from bigtrain.train.step_lora import apply_step
from tests.growth_helpers import tiny_config
from tests.trainer_runs import run_forked

REPO = Path(__file__).resolve().parents[1]


def test_paper_layers_only_numbers() -> None:
    """STEP section 3: E/P_layer = 0.01, L = 24 -> K=2 (13, 11) 45.8% lower, K=3 (9, 8, 7) 61% lower."""
    vanilla = 16 * 24
    comp2, cost2 = search_stage_sizes(24, 2, paper_stage_cost(0.01))
    assert comp2 == (13, 11)
    assert 1 - max(cost2) / vanilla == pytest.approx(0.458, abs=5e-4)
    comp3, cost3 = search_stage_sizes(24, 3, paper_stage_cost(0.01))
    assert comp3 == (9, 8, 7)
    assert 1 - max(cost3) / vanilla == pytest.approx(0.61, abs=5e-3)
    # the formula itself, stage 3 of (9, 8, 7): 16*7 + 2*17 + 16*17*0.01
    assert cost3[2] == pytest.approx(112 + 34 + 2.72)


def test_compositions_are_all_ordered_splits() -> None:
    comps = list(compositions(24, 3))
    assert len(comps) == math.comb(23, 2)
    assert len(set(comps)) == len(comps)
    assert all(sum(c) == 24 and min(c) >= 1 for c in comps)
    assert list(compositions(3, 3)) == [(1, 1, 1)]


def heterogeneous() -> BigTrainConfig:
    # GQA, an attention-only layer, untied head: the bookkeeping must follow every per-layer size
    return tiny_config(
        vocab_size=320, num_hidden_layers=4, intermediate_size=176, layer_intermediate_sizes=[176, 0, 240, 176]
    )


@pytest.mark.parametrize("train_embeddings", [True, False])
def test_planned_tensors_are_the_models_tensors(train_embeddings: bool) -> None:
    """Names, sizes and trainability the planner counts are those of the real model after apply_step."""
    cfg = heterogeneous()
    model = BigTrainForCausalLM(cfg)
    vanilla = {t.name: (t.numel, t.trainable) for t in model_tensors(cfg)}
    assert vanilla == {n: (p.numel(), True) for n, p in model.named_parameters()}

    step = StepConfig(lora_rank=4, train_embeddings=train_embeddings, targets=["q_proj", "v_proj", "down_proj"])
    apply_step(model, step, "unused", inherited={0, 1})
    real = {n.replace(".base_layer.", "."): (p.numel(), p.requires_grad) for n, p in model.named_parameters()}
    planned = {t.name: (t.numel, t.trainable) for t in model_tensors(cfg, {0, 1}, step)}
    assert planned == real
    assert any(".lora_A." in n for n in planned)
    assert not real["model.layers.0.self_attn.q_proj.weight"][1]
    assert real["model.layers.2.self_attn.q_proj.weight"][1]
    assert real["model.embed_tokens.weight"][1] is train_embeddings


def test_state_bytes_follow_zero3_partitioning() -> None:
    """Each tensor is split into ceil(numel / world) elements per rank; trainable ones carry 4+4+8 B more
    (fp32 gradient partitions: bf16 runs accumulate in fp32)."""
    cfg = heterogeneous()
    step = StepConfig(lora_rank=4)
    tensors = model_tensors(cfg, {0, 1}, step)
    mem = stage_memory(cfg, ZeroSettings(world_size=3), 2, 32, False, {0, 1}, step)
    assert mem.param_bytes == 2 * sum(-(-t.numel // 3) for t in tensors)
    assert mem.grad_bytes == 4 * sum(-(-t.numel // 3) for t in tensors if t.trainable)
    assert mem.optimizer_state_bytes == 12 * sum(-(-t.numel // 3) for t in tensors if t.trainable)
    parts = ("trainable_layer", "frozen_layer", "lora", "embeddings_and_head")
    assert sum(mem.details[f"{p}_state_bytes"] for p in parts) == mem.state_bytes
    assert mem.details["frozen_layer_state_bytes"] > 0 and mem.details["lora_state_bytes"] > 0
    one = stage_memory(cfg, ZeroSettings(world_size=1), 2, 32, False, {0, 1}, step)
    assert one.optimizer_state_bytes == 12 * one.params_trainable
    # activation checkpointing keeps less, the state does not change
    ckpt = stage_memory(cfg, ZeroSettings(world_size=3), 2, 32, True, {0, 1}, step)
    assert ckpt.activation_bytes < mem.activation_bytes and ckpt.state_bytes == mem.state_bytes


def test_ds_config_buckets_are_read_from_the_recipe() -> None:
    recipe = load_recipe(REPO / "recipes" / "step-1b.yaml")
    zero = ZeroSettings.from_recipe(recipe, 8)
    # bf16 weights, fp32 gradient partitions (the config's data_types.grad_accum_dtype)
    assert zero.world_size == 8 and zero.weight_bytes == 2 and zero.grad_bytes == 4
    assert ZeroSettings.from_recipe(recipe, 8, precision="fp32").grad_bytes == 4
    assert zero.reduce_bucket_size == 2048 * 2048  # zero3.json: "auto" = hidden^2
    assert ZeroSettings.from_recipe(recipe, 1, "fp32").weight_bytes == 4


def test_step_1b_largest_stage_is_half_of_vanilla() -> None:
    """The 3-stage 24-layer plan: largest stage peak >= 50% below vanilla training of the final model."""
    recipe = load_recipe(REPO / "recipes" / "step-1b.yaml")
    plan = plan_recipe(recipe, world_size=1, budget_bytes=40 * 1024**3)
    assert [s.layers for s in plan.stages] == [9, 17, 24]
    assert [s.new_layers for s in plan.stages] == [9, 8, 7]
    assert plan.vanilla.layers == 24 and plan.vanilla.params_total > 1.2e9
    assert max(s.peak_bytes for s in plan.stages) <= 0.5 * plan.vanilla.peak_bytes
    assert plan.search["max_peak_bytes"] <= max(s.peak_bytes for s in plan.stages)
    assert sum(s["new_layers"] for s in plan.search["stages"]) == 24
    assert plan.search["fits_budget"] is True


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> list[subprocess.CompletedProcess[str]]:
    """The CLI's four commands below, each `python -m bigtrain.cli.plan ...` in a process of its own (forked
    from one that imported the CLI's modules: tests/trainer_runs.run_forked)."""
    tmp = tmp_path_factory.mktemp("plan-cli")
    bad = tmp / "bad.yaml"
    bad.write_text("stages:\n  - name: a\n  - name: b\n    grow: {op: stack, layers: 1}\n")
    commands = [
        ["recipes/step-1b.yaml", "--budget-gb", "40", "--world-size", "8", "--json"],
        ["recipes/step-1b.yaml", "--budget-gb", "1"],
        [str(bad)],
        ["recipes/step-1b.yaml", "--stages", "30"],
    ]
    preload = ["bigtrain.cli.common", "bigtrain.config", "bigtrain.pipeline.planner"]  # what bigtrain.cli.plan imports
    return run_forked("bigtrain.cli.plan", commands, preload, tmp, module=True)


def test_cli_json_and_table(plans: list[subprocess.CompletedProcess[str]]) -> None:
    out, table = plans[0], plans[1]
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [s["layers"] for s in data["stages"]] == [9, 17, 24]
    assert all(s["peak_bytes"] < data["vanilla_peak_bytes"] for s in data["stages"])
    assert data["world_size"] == 8
    assert table.returncode == 0
    assert "vanilla" in table.stdout and "over budget" in table.stdout and "OVER the budget" in table.stdout


def test_cli_bad_input_is_one_line(plans: list[subprocess.CompletedProcess[str]]) -> None:
    out = plans[2]
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "stage 'b'" in out.stderr and "shrink" in out.stderr
    out = plans[3]
    assert out.returncode == 2 and "30 STEP stages" in out.stderr
