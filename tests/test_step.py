"""STEP: LoRA on the inherited layers (peft), merge for export, and the 3-stage demo on 2-rank ZeRO-3."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bigtrain.config import StepConfig, load_recipe
from bigtrain.errors import BigtrainError
from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.counting import train_flops_per_token
from bigtrain.model.modeling import BigTrainForCausalLM
from bigtrain.pipeline.family import step_flops_per_token
from bigtrain.pipeline.planner import plan_recipe
from bigtrain.train.step_lora import apply_step, layer_index, merge_block, step_flops_change
from tests.growth_helpers import tiny_config
from tests.trainer_runs import PYTHON, TRAIN, rank_launcher, run_forked

REPO = Path(__file__).resolve().parents[1]


def tiny(ffn: list[int] | None = None) -> BigTrainConfig:
    return tiny_config(vocab_size=320, num_hidden_layers=4, intermediate_size=176, layer_intermediate_sizes=ffn)


def test_merge_block_gives_the_adapted_function() -> None:
    """A model with trained (non-zero) LoRA and the plain model made of merge_block's tensors agree."""
    torch.manual_seed(0)
    cfg = tiny([176, 0, 176, 240])
    model = BigTrainForCausalLM(cfg)
    step = StepConfig(lora_rank=4, lora_alpha=8)
    apply_step(model, step, "unused", inherited={0, 1, 2})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)  # as after training; at init B = 0 and the merge would be a no-op
    ids = torch.randint(0, 320, (2, 24))
    adapted = model(input_ids=ids).logits

    blocks: dict[str, dict[str, torch.Tensor]] = {}
    for name, p in model.named_parameters():
        i = layer_index(name)
        blocks.setdefault(f"layer{i}" if i is not None else name, {})[name] = p.detach().clone()
    merged: dict[str, torch.Tensor] = {}
    for block in blocks.values():
        merged.update(merge_block(block, step.scale))
    plain = BigTrainForCausalLM(cfg)
    assert set(merged) == {n for n, _ in plain.named_parameters()}
    plain.load_state_dict(merged, strict=True)
    assert torch.allclose(plain(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-4)
    # the merge really changed the inherited weights (scale = alpha / rank = 2)
    base = model.model.layers[0].self_attn.q_proj
    delta = 2.0 * base.lora_B["default"].weight @ base.lora_A["default"].weight
    assert torch.allclose(merged["model.layers.0.self_attn.q_proj.weight"], base.base_layer.weight + delta)


def test_apply_step_freezes_inherited_and_adapts_them() -> None:
    model = BigTrainForCausalLM(tiny())
    apply_step(model, StepConfig(lora_rank=2, train_lm_head=False), "unused", inherited={0, 1})
    grads = dict((n, p.requires_grad) for n, p in model.named_parameters())
    assert not grads["model.layers.0.mlp.up_proj.base_layer.weight"]
    assert not grads["model.layers.1.input_layernorm.weight"]
    assert grads["model.layers.1.mlp.up_proj.lora_A.default.weight"]
    assert grads["model.layers.2.mlp.up_proj.weight"] and grads["model.layers.3.input_layernorm.weight"]
    assert grads["model.embed_tokens.weight"] and not grads["lm_head.weight"] and not grads["model.norm.weight"]
    assert not any(".lora_" in n for n in grads if layer_index(n) in (2, 3))


def test_step_flops_count_the_weight_gradients_frozen_layers_skip() -> None:
    """What the trainer writes to run.json (from the adapted module) equals the planner's count (from the
    config), and a frozen LM head saves its weight gradient too."""
    cfg, changes = tiny([176, 0, 176, 240]), []
    for head in (True, False):
        step = StepConfig(lora_rank=4, train_lm_head=head)
        model = apply_step(BigTrainForCausalLM(cfg), step, "unused", inherited={0, 1})
        change = step_flops_change(model)
        assert change == step_flops_per_token(cfg, 64, {0, 1}, step) - train_flops_per_token(cfg, 64)
        frozen = sum(p.numel() for n, p in model.named_parameters() if not p.requires_grad and p.dim() == 2)
        lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
        assert change == -2 * frozen + 6 * lora and frozen > 0 and lora > 0
        changes.append(change)
    assert changes[1] - changes[0] == -2 * cfg.vocab_size * cfg.hidden_size


def test_gradients_reach_adapters_with_frozen_embeddings_and_checkpointing() -> None:
    """Nothing below the first layer trains and activations are recomputed: LoRA still gets gradients."""
    model = BigTrainForCausalLM(tiny())
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    apply_step(model, StepConfig(lora_rank=2, train_embeddings=False), "unused", inherited={0, 1})
    model.train()
    ids = torch.randint(0, 320, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    a = model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    b = model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert b.grad.abs().sum() > 0 and a.grad.abs().sum() == 0  # B = 0 at init: A's first gradient is zero


def test_apply_step_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BigtrainError, match=r"no growth\.json"):
        apply_step(BigTrainForCausalLM(tiny()), StepConfig(), tmp_path)
    attention_only = BigTrainForCausalLM(tiny([0, 0, 176, 176]))
    with pytest.raises(BigtrainError, match="match no linear layer"):
        apply_step(attention_only, StepConfig(targets=["gate_proj"]), "x", inherited={0, 1})
    with pytest.raises(BigtrainError, match="names layer 7"):
        apply_step(BigTrainForCausalLM(tiny()), StepConfig(), "x", inherited={0, 7})


# --- end to end: recipes/step-demo.yaml, every stage on 2 ranks (ZeRO-3, CPU) -------------------------


def bigtrain_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYTHON, "-m", "bigtrain.cli.run", *args], capture_output=True, text=True, cwd=REPO, check=False
    )


@pytest.fixture(scope="module")
def step_demo(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> tuple[Path, list[str], str]:
    out = tmp_path_factory.mktemp("step-demo")
    overrides = [f"output_dir={out}", f"data.cache_dir={out / 'data'}", "train.max_steps=6"]
    run = bigtrain_run("recipes/step-demo.yaml", "--nproc", "2", *overrides)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, overrides, run.stdout


@pytest.mark.slow
def test_step_demo_runs_every_stage(step_demo: tuple[Path, list[str], str]) -> None:
    out, _, stdout = step_demo
    for name, layers in (("s1", 2), ("s2", 3), ("s3", 4)):
        config = json.loads((out / name / "hf" / "config.json").read_text())
        assert config["num_hidden_layers"] == layers
        names = load_file(out / name / "hf" / "model.safetensors").keys()
        assert not any("lora" in n or "base_layer" in n for n in names)
        run = json.loads((out / name / "run.json").read_text())
        assert run["status"] == "finished" and run["world_size"] == 2 and run["zero_stage"] == 3
    for name in ("s2", "s3"):
        growth = json.loads((out / name / "init" / "growth.json").read_text())
        assert growth["op"] == "step"
    # each stage goes on through the data where the one before it stopped
    runs = [json.loads((out / name / "run.json").read_text()) for name in ("s1", "s2", "s3")]
    ends = [r["start_sequence"] + r["step"] * r["global_batch_size"] for r in runs]
    assert runs[0]["start_sequence"] == 0 and [r["start_sequence"] for r in runs[1:]] == ends[:2]
    assert yaml.safe_load((out / "s3" / "stage.yaml").read_text())["data"]["start_sequence"] == ends[1] > 0
    # the family table closes the run: every stage with its held-out loss
    table = stdout[stdout.index("member") :]
    assert all(f"\n{s} " in table for s in ("s1", "s2", "s3")) and "FLOPs" in table


@pytest.mark.slow
def test_step_state_bytes_are_what_the_planner_says(step_demo: tuple[Path, list[str], str]) -> None:
    """Per-rank parameter, gradient and optimizer-state bytes measured by the trainer (run.json, 2-rank
    ZeRO-3) equal the planner's prediction exactly, for the plain stage and both STEP stages."""
    out, overrides, _ = step_demo
    recipe = load_recipe(REPO / "recipes" / "step-demo.yaml", overrides)
    plan = plan_recipe(recipe, world_size=2, precision="fp32")  # CPU runs are fp32
    for predicted in plan.stages:
        run = json.loads((out / predicted.name / "run.json").read_text())
        assert run["precision"] == "fp32"
        measured = run["memory"]
        assert measured["param_bytes"] == predicted.param_bytes, predicted.name
        assert measured["grad_bytes"] == predicted.grad_bytes, predicted.name
        assert measured["optimizer_state_bytes"] == predicted.optimizer_state_bytes, predicted.name
        assert run["params_trainable"] == predicted.params_trainable
        assert run["params_total"] == predicted.params_total
    for stage in plan.stages[1:]:
        assert stage.lora_params > 0 and stage.params_trainable < stage.params_total
    # a flat STEP recipe (what a stage runs) is planned from its init_from's growth.json: the same bytes
    flat = plan_recipe(load_recipe(out / "s2" / "stage.yaml"), world_size=2, precision="fp32").stages[0]
    assert flat.state_bytes == plan.stages[1].state_bytes and flat.lora_params == plan.stages[1].lora_params


@pytest.mark.slow
def test_step_state_bytes_in_bf16(step_demo: tuple[Path, list[str], str], tmp_path: Path) -> None:
    """The GPU case: bf16 weights (2 B), fp32 gradient partitions (4 B, grad_accum_dtype fp32), fp32 master +
    Adam (12 B) per trainable parameter, 2 B per frozen one. DeepSpeed runs bf16 on CPU too, so the STEP stage
    s2 is rerun in bf16 on 2 ranks (started by tests/spawn_ranks.py: the stages above went through bigtrain-run's
    deepspeed launcher already)."""
    out, _, _ = step_demo
    bf16 = [f"output_dir={tmp_path / 's2'}", "train.precision=bf16", "train.max_steps=1", "train.export=false"]
    run = subprocess.run(
        [*rank_launcher(2), str(TRAIN), "--recipe", str(out / "s2" / "stage.yaml"), *bf16],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    measured = json.loads((tmp_path / "s2" / "run.json").read_text())
    assert measured["precision"] == "bf16"
    (predicted,) = plan_recipe(load_recipe(out / "s2" / "stage.yaml", bf16), world_size=2).stages
    assert measured["memory"]["param_bytes"] == predicted.param_bytes
    assert measured["memory"]["grad_bytes"] == predicted.grad_bytes
    assert measured["memory"]["optimizer_state_bytes"] == predicted.optimizer_state_bytes
    assert predicted.grad_bytes * 3 == predicted.optimizer_state_bytes  # 4 B vs 12 B per trainable element


@pytest.mark.slow
def test_step_trains_inherited_layers_only_through_low_rank_updates(step_demo: tuple[Path, list[str], str]) -> None:
    """In s2 the inherited layers change by a matrix of rank <= lora_rank (merged LoRA); new layers fully."""
    out, _, _ = step_demo
    growth = json.loads((out / "s2" / "init" / "growth.json").read_text())
    inherited = [r["index"] for r in growth["layers"] if r["origin"] == "inherited"]
    new = [r["index"] for r in growth["layers"] if r["origin"] == "new"]
    assert len(inherited) == 2 and len(new) == 1
    before = load_file(out / "s2" / "init" / "model.safetensors")
    after = load_file(out / "s2" / "hf" / "model.safetensors")
    rank = 8  # recipes/step-demo.yaml
    for i in inherited:
        for proj in ("self_attn.q_proj", "mlp.down_proj"):
            name = f"model.layers.{i}.{proj}.weight"
            delta = after[name].double() - before[name].double()
            assert delta.abs().max() > 0, name
            assert torch.linalg.matrix_rank(delta, rtol=1e-6) <= rank, name
        norm = f"model.layers.{i}.input_layernorm.weight"
        assert torch.equal(after[norm], before[norm])  # frozen, no adapter
    name = f"model.layers.{new[0]}.mlp.down_proj.weight"
    assert torch.linalg.matrix_rank(after[name].double() - before[name].double(), rtol=1e-6) > rank


@pytest.mark.slow
def test_rerun_resumes_at_the_unfinished_stage(step_demo: tuple[Path, list[str], str]) -> None:
    out, overrides, _ = step_demo
    s1_run = (out / "s1" / "run.json").stat().st_mtime_ns
    # an interrupted last stage: its export is missing, its checkpoints are there
    import shutil

    shutil.rmtree(out / "s3" / "hf")
    again = bigtrain_run("recipes/step-demo.yaml", "--nproc", "2", *overrides)  # same world size
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage s1: finished" in again.stdout and "stage s2: finished" in again.stdout
    assert (out / "s1" / "run.json").stat().st_mtime_ns == s1_run
    run = json.loads((out / "s3" / "run.json").read_text())
    assert run["resumed_from"] and run["status"] == "finished"
    assert (out / "s3" / "hf" / "config.json").is_file()


@pytest.mark.slow
def test_prepare_stage(step_demo: tuple[Path, list[str], str], tmp_path: Path) -> None:
    out, overrides, _ = step_demo
    # the recipe changed its growth since init/ was grown: refuse rather than train the wrong model
    changed = tmp_path / "changed.yaml"
    text = (REPO / "recipes" / "step-demo.yaml").read_text()
    changed.write_text(text.replace("grow: {op: step, layers: 4, init: mean}", "grow: {op: step, layers: 5}"))
    fresh = tmp_path / "fresh"
    # four `bigtrain-run` commands, in this order, each a process of its own (forked from one that imported
    # the CLI's modules: tests/trainer_runs.run_forked)
    done, stale, early, unknown = run_forked(
        "bigtrain.cli.run",
        [
            ["recipes/step-demo.yaml", "--prepare-stage", "s3", *overrides],
            [str(changed), "--prepare-stage", "s3", *overrides],
            ["recipes/step-demo.yaml", "--prepare-stage", "s2", f"output_dir={fresh}"],
            ["recipes/step-demo.yaml", "--prepare-stage", "s9", f"output_dir={fresh}"],
        ],
        ["bigtrain.cli.common", "bigtrain.config", "bigtrain.pipeline.family", "bigtrain.pipeline.runner"],
        tmp_path,
        module=True,
    )
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path == out / "s3" / "stage.yaml"
    flat = load_recipe(path)
    assert flat.init_from == str(out / "s3" / "init") and flat.step is not None and flat.stages is None
    assert stale.returncode == 2
    assert "was grown with layers=4, the recipe now says 5" in stale.stderr
    # a stage whose previous stage has not run: one line, exit 2, nothing written
    assert early.returncode == 2
    assert early.stderr.strip().splitlines()[-1].startswith("error: stage 's2': stage 's1' has no export")
    assert not (fresh / "s2" / "init").exists()
    assert unknown.returncode == 2 and "no stage named 's9'" in unknown.stderr
