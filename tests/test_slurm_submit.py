"""Slurm submission: job script rendering and bigtrain-submit (no cluster needed), then real jobs on the
local test cluster: a run on two nodes, one rank per stand-in GPU, a two-stage pipeline.

The cluster tests need `tools/slurm-cluster.sh up` (CI runs it before pytest); without a reachable
cluster (`sinfo` fails) they are skipped with the reason. Each submits real jobs: two slurmd "nodes" on
loopback, one CPU rank per node, DeepSpeed ZeRO-3 over gloo, a tiny model on the Shakespeare demo data.
Requeues (time limit, lost node) are in test_slurm_requeue.py, so the two files share the suite's workers.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bigtrain.errors import BigtrainError
from bigtrain.pipeline.slurm import Launch, SlurmResources, plan_jobs
from tests.slurm_helpers import (
    FORKED_RANKS,
    REPO,
    TINY,
    TRAIN_SBATCH,
    job_field,
    read,
    sbatch,
    submit_cli,
    train_records,
    two_stage_recipe,
    wait_for,
)

# --- rendering, no cluster --------------------------------------------------------------------------


def test_stage_scripts_cpu_nodes(tmp_path: Path, demo_data: Path) -> None:
    recipe = two_stage_recipe(tmp_path)
    jobs = plan_jobs(recipe, [], SlurmResources(nodes=2), Launch(REPO, "/opt/py/bin/python", REPO))
    assert [j.stage for j in jobs] == ["s1", "s2"]
    assert not any(j.finished for j in jobs)
    s2 = jobs[1].script
    assert "#SBATCH --nodes=2\n" in s2
    assert "#SBATCH --ntasks-per-node=1\n" in s2  # CPU-only nodes: one rank per node
    assert "--gpus-per-node" not in s2
    assert "#SBATCH --signal=B:USR1@300\n" in s2 and "#SBATCH --requeue\n" in s2
    assert f"#SBATCH --output={tmp_path / 'pipe' / 'slurm'}/%x-%j.out\n" in s2
    assert f"#SBATCH --comment=bigtrain:{tmp_path / 'pipe' / 's2'}\n" in s2
    assert f"{recipe} --prepare-stage s2 " in s2
    assert f'exec bash {TRAIN_SBATCH} "$STAGE_RECIPE"' in s2
    assert "BIGTRAIN_PYTHON=${BIGTRAIN_PYTHON:-/opt/py/bin/python}" in s2
    for job in jobs:
        subprocess.run(["bash", "-n"], input=job.script, text=True, check=True)


def test_stage_scripts_gpu_nodes(tmp_path: Path, demo_data: Path) -> None:
    recipe = two_stage_recipe(tmp_path)
    launch = Launch(REPO, sys.executable, REPO)
    res = SlurmResources(
        nodes=4,
        gpus_per_node=8,
        cpus_per_task=12,
        partition="gpu",
        time="2-00:00:00",
        sbatch_args=("--exclusive",),
    )
    script = plan_jobs(recipe, ["train.lr=1e-3"], res, launch)[0].script
    wanted = ["--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=12", "--partition=gpu", "--exclusive"]
    for line in [*wanted, "--time=2-00:00:00"]:
        assert f"#SBATCH {line}\n" in script
    assert "train.lr=1e-3 --prepare-stage s1" in script
    explicit = SlurmResources(nodes=1, gpus_per_node=8, ntasks_per_node=1)
    assert "#SBATCH --ntasks-per-node=1\n" in plan_jobs(recipe, [], explicit, launch)[0].script


def test_flat_recipe_is_one_train_job(demo_data: Path) -> None:
    jobs = plan_jobs(REPO / "recipes" / "demo.yaml", ["output_dir=/x/y"], SlurmResources(), Launch.detect())
    assert len(jobs) == 1
    assert "--prepare-stage" not in jobs[0].script
    assert f"exec bash {TRAIN_SBATCH} {REPO / 'recipes' / 'demo.yaml'} output_dir=/x/y\n" in jobs[0].script


def test_finished_stage_is_skipped(tmp_path: Path, demo_data: Path) -> None:
    recipe = two_stage_recipe(tmp_path)
    export = tmp_path / "pipe" / "s1" / "hf"
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
    (export.parent / "run.json").write_text(json.dumps({"status": "finished", "step": 4, "tokens": 4096}))
    out = submit_cli(str(recipe), "--nodes", "2", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "# ===== stage s1: finished, would be skipped" in out.stdout
    assert "--prepare-stage s1" not in out.stdout and "--prepare-stage s2" in out.stdout
    # the recipe now asks s1 for more steps: it is submitted again (the trainer extends it)
    longer = submit_cli(str(recipe), "--nodes", "2", "--dry-run", "train.max_steps=6")
    assert longer.returncode == 0, longer.stderr
    assert "--prepare-stage s1" in longer.stdout and "would be skipped" not in longer.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["recipes/nope.yaml"], "error: recipes/nope.yaml: recipe file not found"),
        (["recipes/demo.yaml", "--nodes", "0"], "error: --nodes 0: must be >= 1"),
        (["recipes/demo.yaml", "--gpus-per-node", "-1"], "error: --gpus-per-node -1: must be >= 0"),
        (["recipes/demo.yaml", "--cpus-per-task", "0"], "error: --cpus-per-task 0: must be >= 1"),
        (["recipes/demo.yaml", "model.bogus=1"], "error: recipes/demo.yaml: unknown key 'model.bogus'"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    out = submit_cli(*args, "--dry-run")
    assert out.returncode == 2
    assert out.stderr.strip() == message


def test_no_slurm_on_path_is_one_line(tmp_path: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch/squeue here
    out = submit_cli(str(two_stage_recipe(tmp_path)))
    assert out.returncode == 2
    assert out.stderr.strip() == "error: squeue: not found; run bigtrain-submit on a Slurm login node"
    assert not (tmp_path / "pipe").exists()


def test_launch_needs_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIGTRAIN_HOME", str(tmp_path))
    with pytest.raises(BigtrainError, match=r"slurm/train\.sbatch: not found"):
        Launch.detect()


def test_train_sbatch_without_recipe_is_usage_error() -> None:
    out = subprocess.run(["bash", str(TRAIN_SBATCH)], capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert out.stderr.startswith("usage: sbatch")
    subprocess.run(["bash", "-n", str(TRAIN_SBATCH)], check=True)


# --- the real cluster ---------------------------------------------------------------------------------


@pytest.mark.slurm
def test_gpu_nodes_get_one_rank_per_gpu(cluster: None, demo_data: Path, tmp_path: Path) -> None:
    """The test cluster's stand-in GPUs (Slurm gpu GRES, no CUDA): --gpus-per-node 2 places 2 ranks a node."""
    gres = subprocess.run(["sinfo", "-h", "-N", "-o", "%G"], capture_output=True, text=True, check=True).stdout
    if "gpu:2" not in gres:
        pytest.skip(f"the cluster has no 2-GPU nodes (sinfo %G: {gres.split()}); see tools/slurm-cluster.sh")
    run = tmp_path / "run"
    job = sbatch(
        "--nodes=2",
        "--gpus-per-node=2",
        "--exclusive",
        f"--output={tmp_path}/%x-%j.out",
        str(TRAIN_SBATCH),
        "recipes/demo.yaml",
        f"output_dir={run}",
        "train.max_steps=3",
        *TINY,
        env=FORKED_RANKS,
    )
    log = tmp_path / f"bigtrain-{job}.out"
    wait_for(job, log)
    text = read(log)
    assert "srun --ntasks-per-node=2 --ntasks=4 --cpus-per-task=1 " in text, text
    placed = sorted(re.findall(r"rank (\d) of 4 on node (\S+) \(\S+\), local rank (\d)", text))
    assert len(placed) == 4, text
    assert [rank for rank, _, _ in placed] == ["0", "1", "2", "3"]
    by_node: dict[str, list[str]] = {}
    for _, node, local in placed:
        by_node.setdefault(node, []).append(local)
    assert sorted(sorted(v) for v in by_node.values()) == [["0", "1"], ["0", "1"]], text  # 2 nodes x 2 ranks
    assert json.loads((run / "run.json").read_text())["world_size"] == 4
    assert [r["step"] for r in train_records(run)] == [1, 2, 3]


@pytest.mark.slurm
def test_pipeline_second_stage_starts_from_grown_first(
    cluster: None, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in FORKED_RANKS.items():  # the stage jobs inherit this process's environment
        monkeypatch.setenv(key, value)
    recipe = two_stage_recipe(tmp_path)
    pipe = tmp_path / "pipe"
    out = submit_cli(str(recipe), "--nodes", "2", "--gpus-per-node", "0")
    assert out.returncode == 0, out.stderr
    ids = out.stdout.splitlines()[-1].split()
    assert len(ids) == 2, out.stdout
    # the second stage waits for the first (the record may already be gone if the first was quick)
    dep = job_field(ids[1], "Dependency")
    assert dep in (f"afterok:{ids[0]}(unfulfilled)", f"afterok:{ids[0]}", "(null)", None), dep
    for job_id, stage in zip(ids, ("s1", "s2"), strict=True):
        wait_for(job_id, pipe / "slurm" / f"two-stage.{stage}-{job_id}.out", timeout=600)

    grown = pipe / "s2" / "init"
    stage_recipe = yaml.safe_load((pipe / "s2" / "stage.yaml").read_text())
    assert Path(stage_recipe["init_from"]).resolve() == grown.resolve()
    assert Path(json.loads((pipe / "s2" / "run.json").read_text())["init_from"]).resolve() == grown.resolve()
    growth = json.loads((grown / "growth.json").read_text())
    # the hand-over: s1's last training checkpoint (its fp32 masters), not its export
    assert Path(growth["source"]["path"]).resolve() == (pipe / "s1").resolve(), growth["source"]
    assert growth["source"]["kind"] == "zero3", growth["source"]
    assert json.loads((pipe / "s1" / "hf" / "config.json").read_text())["num_hidden_layers"] == 2
    assert json.loads((pipe / "s2" / "hf" / "config.json").read_text())["num_hidden_layers"] == 3
    assert all(math.isfinite(r["loss"]) for r in train_records(pipe / "s2"))

    # resubmitting the finished pipeline submits nothing
    again = submit_cli(str(recipe), "--nodes", "2")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["s1: - (finished, skipped)", "s2: - (finished, skipped)", ""]
