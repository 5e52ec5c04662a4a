"""bigtrain-eval: lm-eval on the offline Shakespeare task, on a tiny real export; scores land in the run.

Needs the [eval] extra, which tools/setup.sh installs: a missing lm-eval fails here rather than skipping."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bigtrain.evaluation.shakespeare_task import SHIPPED, build
from tests.trainer_runs import PYTHON, REPO, launch, tiny_overrides


def test_the_shipped_task_is_built_from_the_held_out_split(demo_data: Path) -> None:
    shipped = [json.loads(line) for line in SHIPPED.read_text().splitlines()]
    assert shipped == build(demo_data / "shakespeare" / "eval")
    assert {x["source"] for x in shipped} == {p.stem for p in (demo_data / "shakespeare" / "eval").glob("*.txt")}
    for x in shipped:
        assert len(x["choices"]) == 4 and len(set(x["choices"])) == 4
        # the true next line follows the context in the held-out text
        text = (demo_data / "shakespeare" / "eval" / f"{x['source']}.txt").read_text(errors="replace")
        assert x["choices"][x["label"]] in text


@pytest.mark.slow
def test_bigtrain_eval_scores_a_tiny_export(tmp_path: Path, demo_data: Path) -> None:
    out = tmp_path / "run"
    launch(tiny_overrides(demo_data, out, tmp_path / "cache", **{"train.max_steps": 2}), ranks=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [*PYTHON, "-m", "bigtrain.cli.eval", str(out), "--tasks", "shakespeare_next_line", "--limit", "24"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((out / "eval" / "downstream.json").read_text())
    acc = written["scores"]["shakespeare_next_line"]
    assert 0.0 <= acc <= 1.0
    assert 0.0 <= written["metrics"]["shakespeare_next_line"]["acc_norm,none"] <= 1.0
    assert written["step"] == 2 and written["limit"] == 24
    assert "shakespeare_next_line" in result.stdout and f"{acc:.4f}" in result.stdout
    assert any((out / "tb").glob("events.out.tfevents.*"))
    # ... and bigtrain-report shows them
    rep = subprocess.run(
        [*PYTHON, "-m", "bigtrain.cli.report", str(out), "--out", str(tmp_path / "rep")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert f"| run | {acc:.3f} |" in (tmp_path / "rep" / "report.md").read_text()


def test_bigtrain_eval_names_a_missing_export(tmp_path: Path) -> None:
    cmd = [*PYTHON, "-m", "bigtrain.cli.eval", str(tmp_path), "--tasks", "shakespeare_next_line"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path}: no HF export (config.json) here, in {tmp_path / 'hf'} or in a bigtrain-run's last stage"
    ]
