"""bigtrain-report on constructed runs: the compute of the run a grown run started from (its `init_from`) counts,
and arms are compared with the baseline seed by seed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bigtrain.growth.record import GROWTH_RECORD_NAME, GrowthRecord
from bigtrain.report.runs import load_run
from tests.trainer_runs import PYTHON


def write_run(
    path: Path, steps: int, flops_per_token: float, init_from: str | None = None, loss: float | None = None
) -> None:
    """A finished run of `steps` steps of 100 tokens, evaluated at its end (`loss`), 0.5 s a step."""
    path.mkdir(parents=True)
    loss = 4.0 - steps / 100 if loss is None else loss
    lines = [
        {"step": steps, "loss": 4.0, "lr": 1e-3, "tokens": steps * 100, "step_time_s": 0.5},
        {"step": steps, "eval_loss": loss},
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    info = {"tokens": steps * 100, "flops_per_token": flops_per_token, "init_from": init_from}
    (path / "run.json").write_text(json.dumps({**info, "final_eval": {"eval_loss": loss}}))


def test_a_grown_run_counts_the_compute_of_the_run_it_grew_from(tmp_path: Path, monkeypatch) -> None:
    repo = tmp_path / "repo"
    write_run(repo / "runs" / "base", steps=10, flops_per_token=2.0)  # 1000 tokens, 2e3 FLOPs
    (repo / "runs" / "base" / "hf").mkdir()
    (repo / "runs" / "base" / "checkpoints" / "step_10").mkdir(parents=True)
    # recorded as the training command saw it: relative to the repository it ran in
    write_run(repo / "runs" / "grown", steps=20, flops_per_token=5.0, init_from="runs/base/hf")
    write_run(repo / "runs" / "carried", steps=20, flops_per_token=5.0, init_from="runs/base/checkpoints/step_10")
    write_run(repo / "runs" / "again", steps=5, flops_per_token=5.0, init_from="runs/grown/hf")
    (repo / "runs" / "grown" / "hf").mkdir()
    write_run(repo / "runs" / "lost", steps=20, flops_per_token=5.0, init_from="runs/nowhere/hf")
    monkeypatch.chdir(tmp_path)  # not the repository: the paths resolve from the run's own ancestors

    grown = load_run(repo / "runs" / "grown")
    assert grown.inherited is not None and grown.inherited.path == repo / "runs" / "base"
    assert grown.flops == 2e3 + 2000 * 5.0 and grown.tokens == 1000 + 2000 and grown.wall_s == 5.0 + 10.0
    assert grown.eval[-1].flops == grown.flops and grown.growth_points == [("grown", 1000.0, 2e3, 5.0)]
    assert load_run(repo / "runs" / "carried").flops == grown.flops  # a training checkpoint: the same source
    assert load_run(repo / "runs" / "again").flops == grown.flops + 500 * 5.0  # a chain: base, grown, again
    own = load_run(repo / "runs" / "grown", inherited=False)
    assert own.flops == 2000 * 5.0 and own.inherited is None and own.growth_points == []
    lost = load_run(repo / "runs" / "lost")
    assert lost.flops == 2000 * 5.0 and "runs/nowhere/hf" in (lost.inherited_note or "")

    out = tmp_path / "rep"
    cmd = [*PYTHON, "-m", "bigtrain.cli.report", str(repo / "runs" / "grown"), str(repo / "runs" / "lost")]
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
    report = json.loads((out / "report.json").read_text())
    entries = {e["name"]: e for e in report["runs"]}
    assert entries["grown"]["flops"] == pytest.approx(1.2e4) and entries["grown"]["inherited_flops"] == 2e3
    assert entries["lost"]["inherited_from"] is None and entries["lost"]["inherited_note"]
    md = (out / "report.md").read_text()
    assert "- grown: repo/runs/base (2000 FLOPs)" in md and "- lost: init_from runs/nowhere/hf" in md
    subprocess.run([*cmd, "--own-compute", "--out", str(out)], check=True, capture_output=True)
    assert json.loads((out / "report.json").read_text())["runs"][0]["flops"] == pytest.approx(1e4)


def test_arms_are_compared_with_the_baseline_seed_by_seed(tmp_path: Path) -> None:
    # the baseline's seeds scatter (5.0, 5.3, 4.7); the arm is 0.1 above it on every seed, 0.2 on none
    for seed, (base, arm) in enumerate([(5.0, 5.1), (5.3, 5.4), (4.7, 4.8)], start=1):
        write_run(tmp_path / f"scratch-seed{seed}", steps=10, flops_per_token=1.0, loss=base)
        write_run(tmp_path / f"stack-seed{seed}", steps=10, flops_per_token=1.0, loss=arm)
    write_run(tmp_path / "stack-seed4", steps=10, flops_per_token=1.0, loss=9.0)  # no baseline seed 4: unpaired
    out = tmp_path / "rep"
    runs = [str(tmp_path / f"stack-seed{s}") for s in range(1, 5)] + [
        str(tmp_path / f"scratch-seed{s}") for s in (2, 3)
    ]
    cmd = [*PYTHON, "-m", "bigtrain.cli.report", *runs, "--baseline", str(tmp_path / "scratch-seed1")]
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
    arms = {a["arm"]: a for a in json.loads((out / "report.json").read_text())["arms"]}
    diff = arms["stack"]["paired_loss_diff"]
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(0.1)
    assert diff["min"] == pytest.approx(0.1) and diff["max"] == pytest.approx(0.1)
    assert arms["scratch"]["paired_loss_diff"]["mean"] == 0.0
    assert (
        "| stack | 4 |" in (out / "report.md").read_text()
        and "+0.1000 [+0.1000, +0.1000] |" in (out / "report.md").read_text()
    )


def test_a_pipeline_stage_grown_from_another_run_counts_it_through_its_growth_record(tmp_path: Path) -> None:
    """bigtrain-run grows a stage into the stage's own `init/`, whose growth.json names the real source."""
    write_run(tmp_path / "base", steps=10, flops_per_token=2.0)
    (tmp_path / "base" / "hf").mkdir()
    for name, source in [("arm", tmp_path / "base" / "hf"), ("self", tmp_path / "self" / "small" / "hf")]:
        stage = tmp_path / name / "grown"
        write_run(stage, steps=20, flops_per_token=5.0, init_from=str(stage / "init"))
        (stage / "init").mkdir()
        record = GrowthRecord("net2net", ["net2net"], {}, {"path": str(source)}, {}, {}, True, [], {})
        (stage / "init" / GROWTH_RECORD_NAME).write_text(record.to_json())
        (tmp_path / name / "pipeline.json").write_text(json.dumps({"stages": ["grown"]}))
    arm = load_run(tmp_path / "arm")
    assert arm.inherited is not None and arm.inherited.path == tmp_path / "base" and arm.flops == 2e3 + 1e4
    (tmp_path / "arm" / "grown" / "init" / GROWTH_RECORD_NAME).write_text('{"op": "net2net"')  # truncated
    truncated = load_run(tmp_path / "arm")
    assert truncated.flops == 1e4 and truncated.inherited is None and truncated.inherited_note  # own compute, and why
    # a source inside the run's own root is one of its stages, already counted: no offset, no note
    write_run(tmp_path / "self" / "small", steps=10, flops_per_token=2.0)
    (tmp_path / "self" / "small" / "hf").mkdir()
    own = load_run(tmp_path / "self")
    assert own.inherited is None and own.inherited_note is None and own.flops == 1e4


def test_the_plots_give_an_arm_one_colour_and_one_legend_entry(tmp_path: Path) -> None:
    from bigtrain.report.plots import arm_styles

    for name in ("stack-seed1", "stack-seed2", "scratch-seed1", "base"):
        write_run(tmp_path / name, steps=10, flops_per_token=1.0)
    styles = arm_styles([load_run(tmp_path / n) for n in ("stack-seed1", "scratch-seed1", "stack-seed2", "base")])
    assert [label for _, label in styles] == ["stack (2 seeds)", "scratch-seed1", "stack (2 seeds)", "base"]
    assert styles[0][0] == styles[2][0] and len({styles[0][0], styles[1][0], styles[3][0]}) == 3
