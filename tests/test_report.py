"""bigtrain-report and the end-of-run summary, on real short runs: two plain runs and one staged run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bigtrain.report.runs import load_run
from bigtrain.report.target import cost_to_reach, frontier_cost, saving, value_at
from tests.trainer_runs import PYTHON, REPO, launch, metrics, tiny_overrides

PLOTS = ("loss_vs_tokens.png", "loss_vs_flops.png", "loss_vs_wall.png", "lr.png", "stages.png")

STAGED_RECIPE = """
output_dir: unused
model: {{hidden_size: 64, num_layers: 1, head_dim: 32, num_heads: 2, num_kv_heads: 1, intermediate_size: 128, tie_embeddings: true}}
data:
  train_files: [{train}/macbeth_gut.txt, {train}/othello_gut.txt, {train}/lear_gut.txt]
  tokenizer: {tokenizer}
  cache_dir: {cache}
  seq_len: 64
  eval_fraction: 0.02
train: {{max_steps: 4, micro_batch_size: 2, global_batch_size: 8, lr: 3.0e-3, warmup_steps: 1, eval_every: 2, eval_batches: 2, log_every: 1, progress: false}}
stages:
  - name: small
  - name: stacked
    grow: {{op: stack, layers: 2, optimizer: carry}}
"""


def cli(module: str, *args: object, check: bool = True) -> subprocess.CompletedProcess:
    env_cmd = [*PYTHON, "-m", module, *map(str, args)]
    result = subprocess.run(env_cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{module} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> dict[str, object]:
    root = tmp_path_factory.mktemp("report")
    cache = root / "cache"
    base = launch(tiny_overrides(demo_data, root / "base", cache), ranks=2)
    other = launch(
        tiny_overrides(demo_data, root / "other", cache, **{"train.lr": 1e-3, "train.max_steps": 6}), ranks=1
    )
    recipe = root / "staged.yaml"
    train = demo_data / "shakespeare" / "train"
    recipe.write_text(STAGED_RECIPE.format(train=train, tokenizer=demo_data / "tokenizer", cache=cache))
    staged = cli("bigtrain.cli.run", recipe, "--nproc", "1", f"output_dir={root / 'staged'}")
    return {"root": root, "base": base, "other": other, "staged": staged}


def run_info(path: Path) -> dict:
    return json.loads((path / "run.json").read_text())


@pytest.mark.slow
def test_a_run_ends_with_its_summary(runs: dict) -> None:
    root: Path = runs["root"]
    info = run_info(root / "base")
    # the summary is rank 0's last output; the deepspeed launcher adds one "exits successfully" line per rank
    tail = runs["base"].stdout.strip().splitlines()[-10:]
    text = "\n".join(tail)
    assert f"[bigtrain] run finished at step 8: {root / 'base'}" in text
    loss = info["final_eval"]["eval_loss"]
    assert f"held-out loss {loss:.4f}, perplexity {math.exp(loss):.2f}" in text
    assert f"tokens {info['tokens']:,}" in text
    assert f"export   {root / 'base' / 'hf'}" in text
    assert f"metrics  {root / 'base' / 'metrics.jsonl'}" in text
    assert f"tensorboard --logdir {root / 'base' / 'tb'}" in text
    assert f"bigtrain-report {root / 'base'} --out {root / 'base' / 'report'}" in text
    assert info["wall_time_s"] > 0


@pytest.mark.slow
def test_bigtrain_run_ends_with_every_stage_and_the_total(runs: dict) -> None:
    root: Path = runs["root"] / "staged"
    out = runs["staged"].stdout
    assert out.count("[bigtrain] run finished at step 4") == 2  # each stage's own summary
    summary = out[out.index("[bigtrain-run] summary") :]
    infos = [run_info(root / name) for name in ("small", "stacked")]
    for name, info in zip(("small", "stacked"), infos):
        line = next(x for x in summary.splitlines() if x.strip().startswith(name))
        assert f"held-out loss {info['final_eval']['eval_loss']:.4f}" in line
    assert f"tokens {sum(i['tokens'] for i in infos):,}" in summary
    assert f"bigtrain-report {root} --out {root / 'report'}" in summary
    assert json.loads((root / "pipeline.json").read_text()) == {"stages": ["small", "stacked"]}
    # the hand-over: the last training checkpoint grown with its Adam state, seen before the first update
    growth = json.loads((root / "stacked" / "init" / "growth.json").read_text())
    assert growth["source"]["kind"] == "zero3" and growth["extra"]["optimizer"] == "carry"
    assert infos[1]["handover"] == {"masters": "fp32 from init_from", "optimizer": "carried", "adam_step": 4}
    first = metrics(root / "stacked")[0]
    assert first["step"] == 0 and first["growth_eval"] is True and first["eval_loss"] > 0


@pytest.mark.slow
def test_report_on_plain_and_staged_runs(runs: dict) -> None:
    root: Path = runs["root"]
    out = root / "rep"
    cli("bigtrain.cli.report", root / "other", root / "staged", "--baseline", root / "base", "--out", out)
    for name in PLOTS:
        with Image.open(out / name) as img:
            img.load()  # decodes
            assert img.size[0] >= 600 and img.size[1] >= 300
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert report["baseline"] == "base"
    by_name = {e["name"]: e for e in report["runs"]}
    assert set(by_name) == {"base", "other", "staged"}
    for name in ("base", "other"):
        info, entry = run_info(root / name), by_name[name]
        assert entry["final_eval_loss"] == info["final_eval"]["eval_loss"]
        assert entry["tokens"] == info["tokens"]
        assert entry["flops"] == info["tokens"] * info["flops_per_token"]
        assert entry["peak_memory_bytes"] == info["memory"]["peak_bytes"]
        mem = info["memory"]
        assert entry["model_state_bytes"] == mem["param_bytes"] + mem["grad_bytes"] + mem["optimizer_state_bytes"] > 0
        assert f"| {name} | {info['final_eval']['eval_loss']:.4f} |" in md
    # the staged run: one curve from the first stage on, the growth point where the second starts
    small, stacked = run_info(root / "staged" / "small"), run_info(root / "staged" / "stacked")
    entry = by_name["staged"]
    assert entry["final_eval_loss"] == stacked["final_eval"]["eval_loss"]
    assert entry["tokens"] == small["tokens"] + stacked["tokens"]
    assert entry["flops"] == small["tokens"] * small["flops_per_token"] + stacked["tokens"] * stacked["flops_per_token"]
    assert [s["name"] for s in entry["stages"]] == ["small", "stacked"]
    assert entry["stages"][1]["start_tokens"] == small["tokens"]
    assert [s["params_trainable"] for s in entry["stages"]] == [small["params_trainable"], stacked["params_trainable"]]
    run = load_run(root / "staged")
    assert run.growth_points[0][:2] == ("stacked", small["tokens"])
    assert [p.tokens for p in run.eval][-1] == entry["tokens"]
    # against the baseline: its own cost to reach its final loss is on its curve, saving 0
    base = by_name["base"]["vs_baseline"]
    assert base["token_saving_pct"] == 0.0 and base["target_loss"] == run_info(root / "base")["final_eval"]["eval_loss"]
    assert "Per stage:" in md and "| staged / stacked |" in md


def write_run(path: Path, eval_curve: list[tuple[int, float]], flops_per_token: float, tokens_per_step: int) -> None:
    path.mkdir(parents=True)
    lines = []
    for step, loss in eval_curve:
        t = step * tokens_per_step
        lines.append({"step": step, "loss": loss + 0.1, "lr": 1e-3, "tokens": t, "step_time_s": 0.5})
        lines.append({"step": step, "eval_loss": loss, "eval_ppl": math.exp(loss)})
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    last_step = eval_curve[-1][0] if eval_curve else 10
    final = {"eval_loss": eval_curve[-1][1]} if eval_curve else {}
    info = {"tokens": last_step * tokens_per_step, "flops_per_token": flops_per_token, "final_eval": final}
    (path / "run.json").write_text(json.dumps({**info, "memory": {"peak_bytes": 2**20}, "params_trainable": 10}))


def test_tokens_to_target_is_exact_on_a_constructed_curve(tmp_path: Path) -> None:
    assert cost_to_reach([100, 200, 300], [5.0, 4.0, 3.0], 3.5) == 250.0
    assert cost_to_reach([100, 200], [5.0, 4.0], 5.5) == 100.0
    assert cost_to_reach([100, 200], [5.0, 4.0], 3.0) is None
    assert saving(75.0, 100.0) == 25.0
    assert value_at([100, 200, 300], [5.0, 4.0, 3.0], 250) == 3.5 and value_at([100, 200], [5.0, 4.0], 100) == 5.0
    assert value_at([100, 200], [5.0, 4.0], 50) is None and value_at([100, 200], [5.0, 4.0], 201) is None
    # baseline: 4.0 at step 40 (its final loss); the grown run crosses 4.0 halfway between steps 20 and 30
    write_run(
        tmp_path / "base", [(10, 6.0), (20, 5.0), (30, 4.5), (40, 4.0)], flops_per_token=10.0, tokens_per_step=100
    )
    write_run(
        tmp_path / "grown", [(10, 5.0), (20, 4.5), (30, 3.5), (40, 3.0)], flops_per_token=8.0, tokens_per_step=100
    )
    write_run(tmp_path / "silent", [], flops_per_token=8.0, tokens_per_step=100)
    out = tmp_path / "rep"
    cli("bigtrain.cli.report", tmp_path / "grown", tmp_path / "silent", "--baseline", tmp_path / "base", "--out", out)
    report = json.loads((out / "report.json").read_text())
    grown = next(e for e in report["runs"] if e["name"] == "grown")["vs_baseline"]
    assert grown["tokens_to_target"] == 2500.0 and grown["baseline_tokens_to_target"] == 4000.0
    assert grown["flops_to_target"] == 2500.0 * 8.0 and grown["baseline_flops_to_target"] == 4000.0 * 10.0
    assert grown["token_saving_pct"] == pytest.approx(37.5) and grown["flops_saving_pct"] == pytest.approx(50.0)
    # at the grown run's final 3.2e4 FLOPs the baseline is between 3e4 (4.5) and 4e4 (4.0): 4.4
    assert grown["baseline_loss_at_equal_flops"] == pytest.approx(4.4) and grown[
        "loss_gain_at_equal_flops"
    ] == pytest.approx(1.4)
    silent = next(e for e in report["runs"] if e["name"] == "silent")
    assert silent["final_eval_loss"] is None and silent["vs_baseline"]["note"] == "silent has no eval points"
    md = (out / "report.md").read_text()
    assert "| silent | no eval points |" in md
    assert "| grown | 4.0000 | 2500 | 2e+04 | +37.5 | +50.0 |" in md


def test_saving_is_read_off_a_frontier_of_complete_baselines(tmp_path: Path) -> None:
    assert frontier_cost([(1e4, 5.0), (4e4, 4.0)], 4.5) == pytest.approx(2e4)  # halfway in log FLOPs
    assert frontier_cost([(1e4, 5.0), (4e4, 4.0)], 3.9) is None and frontier_cost([(1e4, 5.0), (4e4, 4.0)], 5.1) is None
    # four budgets, the cheapest with two seeds (mean 5.1); every baseline a complete run ending at its point
    for name, step, loss in [
        ("base-a-seed1", 10, 5.0),
        ("base-a-seed2", 10, 5.2),
        ("base-b", 20, 4.5),
        ("base-c", 40, 4.0),
        ("base-d", 80, 3.6),
    ]:
        write_run(tmp_path / name, [(step, loss)], flops_per_token=10.0, tokens_per_step=100)
    write_run(tmp_path / "grown", [(10, 5.0), (30, 4.25)], flops_per_token=8.0, tokens_per_step=100)
    out = tmp_path / "rep"
    frontier = [tmp_path / n for n in ("base-a-seed1", "base-a-seed2", "base-b", "base-c", "base-d")]
    cli("bigtrain.cli.report", tmp_path / "grown", "--frontier", *frontier, "--out", out)
    report = json.loads((out / "report.json").read_text())
    assert [(p["budget"], p["seeds"]) for p in report["frontier"]] == [
        ("base-a", 2),
        ("base-b", 1),
        ("base-c", 1),
        ("base-d", 1),
    ]
    assert report["frontier"][0]["loss"] == pytest.approx(5.1)
    grown = next(e for e in report["runs"] if e["name"] == "grown")["vs_frontier"]
    needed = math.sqrt(2e4 * 4e4)  # 4.25 lies halfway between base-b (4.5) and base-c (4.0)
    assert grown["frontier_flops"] == pytest.approx(needed)
    assert grown["frontier_saving_pct"] == pytest.approx(100 * (1 - 2.4e4 / needed))
    assert "| grown | 4.2500 | 2.4e+04 | 2.828e+04 | +15.1 |" in (out / "report.md").read_text()


def test_report_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = cli("bigtrain.cli.report", tmp_path / "empty", "--out", tmp_path / "rep", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'empty'}: neither a run (run.json) nor a staged run (stage directories with run.json)"
    ]
    assert not (tmp_path / "rep").exists()


EXPERIMENTS = REPO / "recipes" / "experiments"
EXPERIMENT_RECIPES = sorted(EXPERIMENTS.glob("*/*/*.yaml"))


def arms(name: str) -> list[str]:
    lines = (EXPERIMENTS / name / "arms.txt").read_text().splitlines()
    return [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("recipe", EXPERIMENT_RECIPES, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_each_experiment_recipe_loads_and_plans(recipe: Path) -> None:
    from bigtrain.config import load_recipe
    from bigtrain.pipeline.planner import format_plan, plan_recipe

    loaded = load_recipe(recipe)
    plan = plan_recipe(loaded, 1 if recipe.parent.name == "cpu" else 8, None, None, None, source=str(recipe))
    assert format_plan(plan)
    assert len(plan.stages) == len(loaded.stages or [None])


def test_every_experiment_has_both_sizes_of_each_arm_and_a_baseline() -> None:
    names = sorted(p.name for p in EXPERIMENTS.iterdir() if p.is_dir())
    assert names == ["family", "ffn-middle", "gstack", "step", "upcycle", "upscale", "width"]
    for name in names:
        for size in ("cpu", "gpu"):
            assert sorted(p.stem for p in (EXPERIMENTS / name / size).glob("*.yaml")) == sorted(arms(name)), name
        lines = [x for x in (EXPERIMENTS / name / "arms.txt").read_text().splitlines() if not x.startswith("#")]
        assert sum(x.split()[1:2] == ["baseline"] for x in lines) == 1, name


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["nope"], "error: recipes/experiments/nope/arms.txt: no such experiment (known: "),
        (["gstack", "--arms", "stack,nope"], "error: --arms: nope: not an arm of recipes/experiments/gstack/arms.txt"),
        (["gstack", "--set", "model.hidden_size"], "error: --set model.hidden_size: expected KEY=VALUE"),
    ],
    ids=["experiment", "arm", "set"],
)
def test_run_sh_refuses_bad_arguments_in_one_line(args: list[str], error: str) -> None:
    result = subprocess.run(
        ["bash", "tools/experiments/run.sh", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and result.stderr.startswith(error) and result.stderr.count("\n") == 1


def test_size_trend_tabulates_each_size_against_its_own_frontier(tmp_path: Path) -> None:
    published = REPO / "docs" / "results" / "gstack-sweep"
    wide = json.loads((published / "report.json").read_text())
    for arm in wide["arms"]:  # at d=256 two seeds of stack-grow50 end beyond the frontier's largest budget
        arm["frontier_saving_pct"] = dict(mean=30.0, min=25.0, max=35.0, n=1 if arm["arm"] == "stack-grow50" else 3)
    (tmp_path / "wide.json").write_text(json.dumps(wide))
    args = [f"d=128={published}", f"d=256={tmp_path / 'wide.json'}", "--arms", "stack,stack-grow50"]
    result = subprocess.run(
        [sys.executable, "tools/experiments/size_trend.py", *args, "--out", str(tmp_path / "trend")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "trend" / "trend.md").read_text().splitlines()
    assert rows[2].startswith("| d=128 | 4.17e+12, 5.0936 | 5.1055 [5.0897, 5.1224] | +0.012 [+0.008, +0.014] |")
    assert rows[2].endswith("| -0.088 [-0.095, -0.077] | +16.7 [+12.2, +19.5] |")
    assert rows[3].startswith("| d=256 |") and "| +30.0 [+25.0, +35.0] |" in rows[3]
    assert rows[3].endswith("| +30.0 [+25.0, +35.0] (1 of 3 seeds inside the frontier) |")
    assert Image.open(tmp_path / "trend" / "trend.png").size[0] > 0

    missing = subprocess.run(
        [
            sys.executable,
            "tools/experiments/size_trend.py",
            f"d=128={published}",
            "--arms",
            "nope",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode != 0 and missing.stderr.startswith("error: d=128: no arm nope in the report")


def test_run_set_refuses_an_unknown_experiment_before_running_any() -> None:
    result = subprocess.run(
        ["bash", "tools/experiments/run_set.sh", "gstack", "nope"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and result.stderr == "error: recipes/experiments/nope: no such experiment\n"
    assert "[run_set]" not in result.stdout


def test_run_sh_passes_sets_and_points_a_grown_arm_at_its_seeds_base_under_runs(tmp_path: Path) -> None:
    """run.sh's own decisions, with bigtrain-run and bigtrain-report replaced by scripts that log their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bigtrain-run", "bigtrain-report"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path / "calls"}\n')
        (bin_dir / tool).chmod(0o755)
    runs = tmp_path / "w"
    cmd = ["bash", "tools/experiments/run.sh", "width", "--arms", "net2net", "--runs", str(runs), "--seeds", "2"]
    env = {**os.environ, "BIGTRAIN_BIN": str(bin_dir), "NICE": "0"}
    result = subprocess.run(
        [*cmd, "--set", "train.lr=1e-3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    trained = [c.split()[1].rsplit("/", 1)[1] for c in calls if c.startswith("bigtrain-run")]
    frontier = ["scratch-wide", "scratch-wide-0.5x", "scratch-wide-0.75x", "scratch-wide-1.5x"]
    arms = ["base", *frontier, "net2net"]  # --arms: with what it needs
    assert trained == [f"{arm}.yaml" for arm in arms for _ in (1, 2)]
    for seed in (1, 2):  # each seed grows its own base: whole replicates
        net2net = next(c for c in calls if "/net2net.yaml" in c and f"net2net-seed{seed} " in c)
        assert f"train.lr=1e-3 init_from={runs}/base-seed{seed}/hf output_dir={runs}/net2net-seed{seed} " in net2net
        assert f"train.seed={seed} data.seed={seed}" in net2net
    assert "init_from" not in next(c for c in calls if "/scratch-wide.yaml" in c)  # a scratch arm grows from nothing
    assert calls[-1].startswith("bigtrain-report ") and f"--out {runs}/report" in calls[-1]
    # upscale's arms grow a run directory (its last training checkpoint), not an export
    (tmp_path / "calls").unlink()
    up = ["bash", "tools/experiments/run.sh", "upscale", "--arms", "dus", "--seeds", "2"]
    assert subprocess.run(up, cwd=REPO, env=env, capture_output=True, text=True, timeout=60).returncode == 0
    dus = [c for c in (tmp_path / "calls").read_text().splitlines() if "/dus.yaml" in c]
    assert [f"init_from=runs/experiments/upscale/base-seed{s} " in c for s, c in zip((1, 2), dus)] == [True, True]
