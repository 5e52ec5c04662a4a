"""LLaMA Pro's stage (issue 17): block-expand, then train only the new blocks, the inherited layers frozen
without LoRA (`step: {lora: false}`), next to STEP's frozen-with-LoRA."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bigtrain.config import StepConfig, load_recipe
from bigtrain.model.counting import train_flops_per_token
from bigtrain.model.modeling import BigTrainForCausalLM
from bigtrain.pipeline.family import step_flops_per_token
from bigtrain.pipeline.memory import model_tensors
from bigtrain.pipeline.stages import resolve_stages
from bigtrain.train.step_lora import apply_step, layer_index, step_flops_change
from tests.growth_helpers import tiny_config
from tests.trainer_runs import PYTHON

REPO = Path(__file__).resolve().parents[1]
LLAMA_PRO = StepConfig(lora=False, train_embeddings=False, train_lm_head=False)


def test_frozen_without_adapters_only_new_blocks_train():
    cfg = tiny_config(vocab_size=320, num_hidden_layers=4)
    model = apply_step(BigTrainForCausalLM(cfg), LLAMA_PRO, "unused", inherited={0, 2})
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert not any(".lora_" in n or "base_layer" in n for n in grads)  # the module tree is untouched
    assert {layer_index(n) for n, g in grads.items() if g} == {1, 3}
    model.train()
    ids = torch.randint(0, 320, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_flops_and_planner_count_no_adapters():
    cfg = tiny_config(vocab_size=320, num_hidden_layers=4)
    model = apply_step(BigTrainForCausalLM(cfg), LLAMA_PRO, "unused", inherited={0, 2})
    change = step_flops_change(model)
    assert change == step_flops_per_token(cfg, 64, {0, 2}, LLAMA_PRO) - train_flops_per_token(cfg, 64)
    frozen = [p.numel() for n, p in model.named_parameters() if not p.requires_grad and p.dim() == 2]
    embedding = cfg.vocab_size * cfg.hidden_size  # a lookup: freezing it saves no FLOPs
    assert change == -2 * (sum(frozen) - embedding)  # and no LoRA term
    tensors = model_tensors(cfg, {0, 2}, LLAMA_PRO)
    assert not any(".lora_" in t.name for t in tensors)
    assert {t.name for t in tensors if t.trainable} == {n for n, p in model.named_parameters() if p.requires_grad}


def test_block_expand_demo_recipe_is_llama_pro():
    stages = resolve_stages(load_recipe(REPO / "recipes" / "block-expand-demo.yaml"))
    assert [s.recipe.model.num_layers for s in stages] == [4, 6]
    step = stages[1].recipe.step
    assert step is not None and not step.lora and not step.train_embeddings and not step.train_lm_head


@pytest.mark.slow
def test_llama_pro_stage_keeps_the_inherited_layers(tmp_path: Path, demo_data: Path):
    """The demo end to end on one rank (ZeRO-3): after the expanded stage trains, every inherited layer (and
    the embeddings, final norm, LM head) is bitwise what the grown init holds; the new blocks moved. (Before
    the embedding hook in apply_step, a frozen embedding made this backward fail on size-0 weights.)"""
    out = tmp_path / "run"
    overrides = [f"output_dir={out}", f"data.cache_dir={out / 'data'}", "train.max_steps=3"]
    run = subprocess.run(
        [*PYTHON, "-m", "bigtrain.cli.run", "recipes/block-expand-demo.yaml", "--nproc", "1", *overrides],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    init = load_file(out / "expanded" / "init" / "model.safetensors")
    trained = load_file(out / "expanded" / "hf" / "model.safetensors")
    assert set(init) == set(trained)
    new = {1 + 1, 4 + 1}  # block-expand 4 -> 6: zeroed copies after source layers 1 and 3 (targets 2 and 5)
    for name in init:
        if layer_index(name) in new:
            continue
        assert torch.equal(init[name], trained[name]), name
    moved = [n for n in init if layer_index(n) in new and not torch.equal(init[n], trained[n])]
    assert any("o_proj" in n for n in moved) and any("down_proj" in n for n in moved)
