"""Model families: LR by size, FLOPs accounting, the full-size recipe in the planner, the demo end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bigtrain.config import StepConfig, load_recipe
from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.counting import non_embedding_params, train_flops_per_token
from bigtrain.pipeline.family import family_flops, family_table, format_family_table, step_flops_per_token
from bigtrain.pipeline.planner import plan_recipe
from bigtrain.pipeline.stages import resolve_stages
from tests.trainer_runs import PYTHON

REPO = Path(__file__).resolve().parents[1]


def test_paper_reconstruction_85_vs_64_units() -> None:
    """PAPERS.md section 2: members 1, 2, 4, 8 with tokens in proportion to size cost 1 + 4 + 16 + 64 = 85
    units independently; a progressive family budgeted at the largest model's cost spends 64: 24.7% saved."""
    per_token = [1.0, 2.0, 4.0, 8.0]
    tokens = [2.0, 2.0, 2.0, 2.0]  # lineage of the 8B member: 8 tokens -> 8 x 8 = 64 units from scratch
    stage = [f * d for f, d in zip(per_token, tokens, strict=True)]
    _, independent = family_flops(per_token, stage, tokens, [1, 2, 4, 8], "by-size")
    assert independent == [1.0, 4.0, 16.0, 64.0]
    assert 1 - 64 / sum(independent) == pytest.approx(0.247, abs=5e-4)


def test_lineage_accounting() -> None:
    per_token, tokens = [1.0, 3.0], [10.0, 5.0]
    stage = [10.0, 12.0]  # the second stage was cheaper per token than from scratch (e.g. STEP)
    progressive, independent = family_flops(per_token, stage, tokens, [1, 3])
    assert progressive == [10.0, 22.0]
    assert independent == [10.0, 45.0]  # from scratch on the 15 tokens its lineage saw
    assert family_flops(per_token, stage, tokens, [1, 3], "stage")[1] == [10.0, 15.0]


def test_step_stage_skips_weight_gradients_of_frozen_layers() -> None:
    cfg = BigTrainConfig(
        vocab_size=320,
        hidden_size=64,
        num_hidden_layers=4,
        head_dim=16,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=176,
    )
    full = train_flops_per_token(cfg, 64)
    step = StepConfig(lora_rank=4, train_lm_head=False)
    frozen_layers = 2 * (4 * 64 * 64 + 3 * 64 * 176)
    lora = 2 * 4 * (4 * (64 + 64) + 3 * (64 + 176))
    expected = full - 2 * (frozen_layers + 320 * 64) + 6 * lora
    assert step_flops_per_token(cfg, 64, {0, 1}, step) == pytest.approx(expected)
    assert step_flops_per_token(cfg, 64, set(), None) == full


def test_family_1b_8b_is_accepted_by_the_planner() -> None:
    recipe = load_recipe(REPO / "recipes" / "family-1b-8b.yaml")
    stages = resolve_stages(recipe)
    params = [s.recipe.model.build_config() for s in stages]
    sizes = [non_embedding_params(c) + 2 * c.vocab_size * c.hidden_size for c in params]
    assert [round(p / 1e9) for p in sizes] == [1, 2, 4, 8]
    lrs = [s.recipe.train.lr for s in stages]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == 4e-4
    plan = plan_recipe(recipe, world_size=64, budget_bytes=80 * 1024**3)
    assert [s.layers for s in plan.stages] == [16, 32, 32, 32]
    assert plan.vanilla.params_total == plan.stages[-1].params_total
    # before any run, the table counts the planned tokens
    members = family_table(stages)
    assert [m.tokens for m in members] == [50e9, 50e9, 50e9, 100e9]
    assert members[-1].progressive_flops < sum(m.independent_flops for m in members)
    assert "saved" in format_family_table(members)


@pytest.mark.slow
def test_family_demo_end_to_end(tmp_path: Path, demo_data: Path) -> None:
    out = tmp_path / "family"
    overrides = [f"output_dir={out}", f"data.cache_dir={tmp_path / 'data'}", "train.max_steps=6"]
    run = subprocess.run(
        [*PYTHON, "-m", "bigtrain.cli.run", "recipes/family-demo.yaml", "--nproc", "1", *overrides],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    recipe = load_recipe(REPO / "recipes" / "family-demo.yaml", overrides)
    stages = resolve_stages(recipe, overrides)
    losses = []
    for st, hidden, layers in zip(stages, (64, 64, 128), (2, 4, 4), strict=True):
        config = json.loads((st.export_dir / "config.json").read_text())  # every member exported ...
        assert (config["hidden_size"], config["num_hidden_layers"]) == (hidden, layers)
        info = json.loads((st.output_dir / "run.json").read_text())
        assert info["final_eval"]["eval_ppl"] > 1  # ... and evaluated on held-out text
        assert info["init_from"] == (str(st.output_dir / "init") if st.index else None)
        losses.append(info["final_eval"]["eval_loss"])
        flat = load_recipe(st.output_dir / "stage.yaml")
        assert flat.train.lr == pytest.approx(st.recipe.train.lr)
    assert stages[2].recipe.train.lr < stages[1].recipe.train.lr < stages[0].recipe.train.lr
    assert losses[-1] < losses[0]
    table = run.stdout[run.stdout.index("member") :]
    for st, loss in zip(stages, losses, strict=True):
        row = next(line for line in table.splitlines() if line.startswith(st.name + " "))
        assert f"{loss:.4f}" in row
    assert "training every member independently" in table
