"""The peer benchmark's cpu preset runs end to end (2 steps per runner, no timing assertions), so it cannot rot:
bigtrain through its entry point, HF Trainer + DeepSpeed, and the plain PyTorch loop, eager and compiled, on
the same weights and batches, whose per-step losses must agree."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "tools" / "bench" / "bench_peers.py"


@pytest.mark.slow
def test_cpu_preset_runs_and_losses_agree(demo_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    runners = "bigtrain,hf_deepspeed,hf_deepspeed_liger,torch_eager,torch_compile"
    # each runner's process (and bigtrain's own, inside its runner) forks from the suite's preloaded server
    python = str(REPO / "tests" / "python")
    cmd = [sys.executable, str(BENCH), "--preset", "cpu", "--steps", "1", "--warmup", "1", "--runners", runners]
    cmd += ["--python", python]
    proc = subprocess.run(
        [*cmd, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "peers.json").read_text())
    rows = {r["runner"]: r for r in result["runs"]}
    assert sorted(rows) == ["bigtrain", "hf_deepspeed", "torch_compile", "torch_eager"]
    assert "CUDA" in result["skipped"]["hf_deepspeed_liger"]  # no GPU here: skipped with its reason
    assert (
        result["params"]
        == rows["bigtrain"]["params"]
        == rows["hf_deepspeed"]["params"]
        == rows["torch_eager"]["params"]
    )
    assert result["flops_per_token"]["palm"] > result["flops_per_token"]["bigtrain"] > 0
    for r in rows.values():
        assert len(r["losses"]) == 2 and r["timed_steps"] == 1
        assert abs(r["losses"][0] - math.log(32000)) < 0.5
        assert r["losses"][1] < r["losses"][0]  # one AdamW step at lr 1e-3 lowers the loss on the next batch
        assert r["memory"]["peak_allocated_bytes"] > 0 and r["tokens_per_s"] > 0
    # same weights, same batches, fp32: the runners agree to rounding, step by step
    assert result["loss_check"]["ok"] and result["loss_check"]["max_abs_diff"] < 1e-3
    assert "| bigtrain |" in (tmp_path / "out" / "peers.md").read_text()


def test_unknown_runner_is_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(REPO / "tests" / "python"), str(BENCH), "--runners", "bigtrain,megatron", "--work", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --runners: unknown runner 'megatron'")
    assert not (tmp_path / "init").exists()
