"""bigtrain-report counts the compute of the run a grown run started from (its `init_from`), on constructed runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bigtrain.report.runs import load_run


def write_run(path: Path, steps: int, flops_per_token: float, init_from: str | None = None) -> None:
    """A finished run of `steps` steps of 100 tokens, evaluated at its end, 0.5 s a step."""
    path.mkdir(parents=True)
    lines = [
        {"step": steps, "loss": 4.0, "lr": 1e-3, "tokens": steps * 100, "step_time_s": 0.5},
        {"step": steps, "eval_loss": 4.0 - steps / 100},
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    info = {"tokens": steps * 100, "flops_per_token": flops_per_token, "init_from": init_from}
    (path / "run.json").write_text(json.dumps({**info, "final_eval": {"eval_loss": 4.0 - steps / 100}}))


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
    cmd = [sys.executable, "-m", "bigtrain.cli.report", str(repo / "runs" / "grown"), str(repo / "runs" / "lost")]
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
    report = json.loads((out / "report.json").read_text())
    entries = {e["name"]: e for e in report["runs"]}
    assert entries["grown"]["flops"] == pytest.approx(1.2e4) and entries["grown"]["inherited_flops"] == 2e3
    assert entries["lost"]["inherited_from"] is None and entries["lost"]["inherited_note"]
    md = (out / "report.md").read_text()
    assert f"- grown: {repo / 'runs' / 'base'} (2000 FLOPs)" in md and "- lost: init_from runs/nowhere/hf" in md
    subprocess.run([*cmd, "--own-compute", "--out", str(out)], check=True, capture_output=True)
    assert json.loads((out / "report.json").read_text())["runs"][0]["flops"] == pytest.approx(1e4)
