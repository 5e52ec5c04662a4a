"""Slurm: job script rendering (no cluster needed) and real jobs on the local test cluster.

The cluster tests need `tools/slurm-cluster.sh up` (CI runs it before pytest); without a reachable
cluster (`sinfo` fails) they are skipped with the reason. Each submits real jobs: two slurmd "nodes" on
loopback, one CPU rank per node, DeepSpeed ZeRO-3 over gloo, a tiny model on the Shakespeare demo data.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bigtrain.cli.submit import main
from bigtrain.errors import BigtrainError
from bigtrain.pipeline.slurm import Launch, SlurmResources, plan_jobs

REPO = Path(__file__).resolve().parents[1]
TRAIN_SBATCH = REPO / "slurm" / "train.sbatch"
CLUSTER_CONF = Path(os.environ.get("BIGTRAIN_SLURM_DIR", "/tmp/bigtrain-slurm")) / "slurm.conf"

# demo.yaml shrunk to seconds per step on two shared CPU cores
TINY = [
    "model.hidden_size=64",
    "model.num_layers=2",
    "model.head_dim=16",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "model.intermediate_size=176",
    "data.seq_len=64",
    "train.micro_batch_size=4",
    "train.eval_every=0",
    "train.save_every=0",
    "train.eval_batches=2",
    "train.log_every=1",
    "train.progress=false",
]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def submit_cli(*args: str) -> CliResult:
    """`bigtrain-submit ARGS` run in this process from the repository root (imports cost seconds here)."""
    cwd = Path.cwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.chdir(REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
            main(list(args))
    finally:
        os.chdir(cwd)
    return CliResult(int(exited.value.code or 0), out.getvalue(), err.getvalue())


def two_stage_recipe(tmp_path: Path) -> Path:
    """The first two stages of recipes/step-demo.yaml (2 layers, then STEP-grown to 3), a few steps each."""
    data = yaml.safe_load((REPO / "recipes" / "step-demo.yaml").read_text())
    data["stages"] = data["stages"][:2]
    data["train"].update(max_steps=4, eval_batches=2, log_every=1, progress=False)
    data["output_dir"] = str(tmp_path / "pipe")
    path = tmp_path / "two-stage.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


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


def fake_slurm(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Stand-in srun/scontrol for running train.sbatch outside Slurm: srun exits $FAKE_RC (saying
    $FAKE_SRUN_SAYS on stderr), scontrol names $FAKE_LOG as the job's log and records each requeue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "srun").write_text(
        f'#!/bin/bash\necho srun >> {calls}\n[ -n "${{FAKE_SRUN_SAYS:-}}" ] && echo "srun: error: $FAKE_SRUN_SAYS" >&2\n'
        'exit "${FAKE_RC:-0}"\n'
    )
    (bin_dir / "scontrol").write_text(
        '#!/bin/bash\ncase "$1 $2" in\n  "show hostnames") echo bt-node1 ;;\n'
        '  "show job") echo "   StdOut=$FAKE_LOG" ;;\n'
        f'  requeue*) echo "$@" >> {calls} ;;\nesac\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "BIGTRAIN_MAX"))}
    env |= {"PATH": f"{bin_dir}:{env['PATH']}", "BIGTRAIN_HOME": str(REPO), "BIGTRAIN_PYTHON": "python3"}
    env |= {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "bt-node1", "SLURM_JOB_NUM_NODES": "1"}
    return env, calls


def test_time_limit_requeues_and_failure_restarts_have_their_own_caps(tmp_path: Path) -> None:
    """train.sbatch's requeue decisions, run as Slurm would start each restart (log appended, the restart
    counted by Slurm): the two kinds are counted apart from the log's lines, so failure restarts never use
    up time-limit requeues (a 3-week run on a 4-hour partition needs ~126 of those)."""
    env, calls = fake_slurm(tmp_path)
    log = tmp_path / "bigtrain-42.out"
    env |= {"FAKE_LOG": str(log), "BIGTRAIN_MAX_TIME_REQUEUES": "2", "BIGTRAIN_MAX_FAILURE_RESTARTS": "1"}

    def start(restart: int, rc: int, says: str = "", **extra: str) -> tuple[int, str]:
        before = read(log) if log.exists() else ""
        run_env = env | extra | {"SLURM_RESTART_COUNT": str(restart), "FAKE_RC": str(rc), "FAKE_SRUN_SAYS": says}
        with log.open("a") as out:
            code = subprocess.run(
                ["bash", str(TRAIN_SBATCH), "recipes/demo.yaml"], env=run_env, stdout=out, stderr=out, check=False
            ).returncode
        return code, read(log)[len(before) :]

    code, text = start(0, 3)  # checkpointed on the signal
    assert code == 0 and "requeues so far: 0 of 2 for the time limit, 0 of 1 after a failure (from the log)" in text
    assert "bigtrain: time limit (ranks exited with code 3 after the signal); requeueing job 42, " in text, text
    assert "time-limit requeue 1 of 2\n" in text
    code, text = start(1, 137)  # a rank killed by SIGKILL
    assert code == 0, text
    assert (
        "bigtrain: lost rank (exit 137: a rank was killed by signal 9); requeueing job 42, failure restart 1 of 1"
        in text
    )
    code, text = start(2, 3)  # Slurm counts 2 restarts, but only 1 was for the time limit: requeued again
    assert code == 0 and "requeues so far: 1 of 2 for the time limit, 1 of 1 after a failure" in text, text
    assert "time-limit requeue 2 of 2\n" in text
    # both caps reached now, each stops its own kind only
    code, text = start(3, 1, says="Node failure on bt-node2")
    assert code == 1 and "requeues so far: 2 of 2 for the time limit, 1 of 1 after a failure" in text, text
    assert "bigtrain: trainer exited with code 1 (Node failure on bt-node2); restarted 1 times after a failure" in text
    assert "(BIGTRAIN_MAX_FAILURE_RESTARTS=1): not again" in text
    code, text = start(3, 3)
    assert code == 3, text
    assert "requeued 2 times for the time limit already (BIGTRAIN_MAX_TIME_REQUEUES=2): not again" in text
    assert read(calls).count("requeue 42") == 3
    # an ordinary error and a finished run are never requeued; the old variable names still count
    assert start(0, 1, BIGTRAIN_MAX_FAILURE_RESTARTS="")[1].endswith("bigtrain: trainer exited with code 1\n")
    code, text = start(0, 137, BIGTRAIN_MAX_FAILURE_RESTARTS="", BIGTRAIN_MAX_RESTARTS="9")
    assert code == 0 and "failure restart 2 of 9," in text, text
    # no readable log (--output=/dev/null): both kinds fall back to Slurm's restart count
    code, text = start(2, 137, FAKE_LOG="/dev/null", BIGTRAIN_MAX_FAILURE_RESTARTS="3")
    assert code == 0 and "2 of 3 after a failure (log /dev/null unreadable: both from SLURM_RESTART_COUNT)" in text
    # a bad cap: one line, exit 2, nothing started
    srun_calls = read(calls).count("srun")
    code, text = start(0, 0, BIGTRAIN_MAX_TIME_REQUEUES="lots")
    assert code == 2 and text.strip().splitlines()[-1] == "error: BIGTRAIN_MAX_TIME_REQUEUES=lots: not a number >= 0"
    assert read(calls).count("srun") == srun_calls


def test_train_sbatch_without_recipe_is_usage_error() -> None:
    out = subprocess.run(["bash", str(TRAIN_SBATCH)], capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert out.stderr.startswith("usage: sbatch")
    subprocess.run(["bash", "-n", str(TRAIN_SBATCH)], check=True)


# --- the real cluster ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> None:
    if "SLURM_CONF" not in os.environ and not Path("/etc/slurm/slurm.conf").exists() and CLUSTER_CONF.exists():
        os.environ["SLURM_CONF"] = str(CLUSTER_CONF)
    if shutil.which("sinfo") is None:
        pytest.skip("no Slurm client (sinfo) on PATH; start the test cluster with tools/slurm-cluster.sh up")
    try:  # sinfo retries a missing config or controller for a minute
        probe = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, check=False, timeout=15
        )
    except subprocess.TimeoutExpired:
        pytest.skip("no Slurm cluster reachable (sinfo timed out); run tools/slurm-cluster.sh up")
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["sinfo failed"])[-1]
        pytest.skip(f"no Slurm cluster reachable ({why}); run tools/slurm-cluster.sh up")
    up = [line.split()[0] for line in probe.stdout.splitlines() if re.search(r"idle|mix|alloc", line)]
    if len(up) < 2:
        pytest.skip(f"the tests need 2 usable Slurm nodes, sinfo shows: {probe.stdout.strip()!r}")


def sbatch(*args: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def job_field(job_id: str, name: str) -> str | None:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=False)
    m = re.search(rf"\b{name}=(\S+)", out.stdout)
    return m.group(1) if m else None


def wait_for(job_id: str, log: Path, timeout: float = 400) -> None:
    """Until the job has left the queue (requeues included); fails with the log when it did not complete."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if not state:
            break
        time.sleep(1)
    else:
        subprocess.run(["scancel", job_id], check=False)
        pytest.fail(f"job {job_id} still queued after {timeout}s; log:\n{read(log)}")
    final = job_field(job_id, "JobState")
    assert final in ("COMPLETED", None), f"job {job_id} ended {final}; log:\n{read(log)}"


def read(path: Path) -> str:
    return path.read_text() if path.exists() else f"({path} missing)"


def train_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.slurm
def test_train_sbatch_on_two_nodes(cluster: None, demo_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    job = sbatch(
        "--nodes=2",
        f"--output={tmp_path}/%x-%j.out",
        str(TRAIN_SBATCH),
        "recipes/demo.yaml",
        f"output_dir={run}",
        "train.max_steps=8",
        *TINY,
    )
    log = tmp_path / f"bigtrain-{job}.out"
    wait_for(job, log)
    text = read(log)
    assert "bigtrain: trainer exited with code 0" in text, text
    # one rank on each node, rendezvous on the first
    assert re.search(r"rank 0 of 2 on node bt-node\d", text) and re.search(r"rank 1 of 2 on node bt-node\d", text)
    nodes = set(re.findall(r"rank \d of 2 on node (\S+)", text))
    assert len(nodes) == 2, text
    first = subprocess.run(
        ["scontrol", "show", "hostnames", "bt-node[1-2]"], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    assert f"master {first}:{20000 + int(job) % 20000}" in text
    records = train_records(run)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) for r in records)
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert json.loads((run / "hf" / "config.json").read_text())["num_hidden_layers"] == 2


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
def test_pipeline_second_stage_starts_from_grown_first(cluster: None, demo_data: Path, tmp_path: Path) -> None:
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


@pytest.mark.slurm
def test_signal_checkpoints_requeues_and_resumes(cluster: None, demo_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    steps = 30
    job = sbatch(
        "--nodes=2",
        f"--output={tmp_path}/%x-%j.out",
        str(TRAIN_SBATCH),
        "recipes/demo.yaml",
        f"output_dir={run}",
        f"train.max_steps={steps}",
        *TINY,
    )
    log = tmp_path / f"bigtrain-{job}.out"
    deadline = time.monotonic() + 300
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert time.monotonic() < deadline, f"no metrics after 300 s; log:\n{read(log)}"
        time.sleep(0.2)
    # what --signal=B:USR1@N delivers before the time limit, sent now so the test does not wait for it
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    wait_for(job, log)

    text = read(log)
    assert "bigtrain: SIGUSR1, asking the ranks to checkpoint" in text, text
    assert f"requeueing job {job}" in text, text
    assert f"bigtrain: job {job} restart 1 " in text, text
    assert "bigtrain: trainer exited with code 0" in text, text
    restarts = job_field(job, "Restarts")
    assert restarts in ("1", None), restarts  # None: the finished job's record already expired
    info = json.loads((run / "run.json").read_text())
    saved = re.fullmatch(r".*step_(\d+)", info["resumed_from"] or "")
    assert saved, info["resumed_from"]
    assert 1 <= int(saved.group(1)) < steps
    assert info["status"] == "finished" and info["step"] == steps
    records = train_records(run)
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # continued, nothing repeated or lost
    assert all(math.isfinite(r["loss"]) for r in records)
    assert (run / "hf" / "config.json").exists()


@pytest.mark.slurm
def test_signal_during_startup_still_requeues(cluster: None, demo_data: Path, tmp_path: Path) -> None:
    """The signal may come before the trainer can catch it (ranks still importing): requeue all the same."""
    run = tmp_path / "run"
    job = sbatch(
        "--nodes=2",
        f"--output={tmp_path}/%x-%j.out",
        str(TRAIN_SBATCH),
        "recipes/demo.yaml",
        f"output_dir={run}",
        "train.max_steps=4",
        *TINY,
    )
    log = tmp_path / f"bigtrain-{job}.out"
    deadline = time.monotonic() + 300
    while "rank 1 of 2 on node" not in read(log) or "rank 0 of 2 on node" not in read(log):
        assert time.monotonic() < deadline, f"ranks did not start in 300 s; log:\n{read(log)}"
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    wait_for(job, log)

    text = read(log)
    assert f"requeueing job {job}" in text, text
    assert f"bigtrain: job {job} restart 1 " in text, text
    assert "bigtrain: trainer exited with code 0" in text, text
    assert [r["step"] for r in train_records(run)] == [1, 2, 3, 4]
    assert (run / "hf" / "config.json").exists()


@pytest.mark.slurm
def test_time_limit_signal_from_the_header_requeues(cluster: None, demo_data: Path, tmp_path: Path) -> None:
    """The real thing: train.sbatch's own `--signal=B:USR1@300` with a 6-minute limit, so Slurm signals
    about a minute in (it may signal up to 60 s early), mid-training or while the ranks still start."""
    run = tmp_path / "run"
    steps = 250  # ~90 s of steps here: the signal (60-80 s in) comes well before the end
    job = sbatch(
        "--nodes=2",
        "--time=6",
        f"--output={tmp_path}/%x-%j.out",
        str(TRAIN_SBATCH),
        "recipes/demo.yaml",
        f"output_dir={run}",
        f"train.max_steps={steps}",
        *TINY,
    )
    log = tmp_path / f"bigtrain-{job}.out"
    deadline = time.monotonic() + 300
    while f"requeueing job {job}" not in read(log):
        assert "trainer exited with code" not in read(log), f"no signal before the end; log:\n{read(log)}"
        assert time.monotonic() < deadline, f"no requeue after 300 s; log:\n{read(log)}"
        time.sleep(0.2)
    # the requeued job would be signalled again a minute in: give it room to finish
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=30"], check=True)
    wait_for(job, log)

    text = read(log)
    assert "bigtrain: SIGUSR1, asking the ranks to checkpoint" in text, text
    assert f"bigtrain: job {job} restart 1 " in text, text
    assert "bigtrain: trainer exited with code 0" in text, text
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["step"] == steps
    if info["resumed_from"]:  # signalled mid-training (else while starting: nothing saved yet)
        assert 1 <= int(re.fullmatch(r".*step_(\d+)", info["resumed_from"]).group(1)) < steps
    records = train_records(run)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all(math.isfinite(r["loss"]) for r in records)


# --- lost ranks and nodes (issue 12) ------------------------------------------------------------------


def test_elastic_nodes_and_max_restarts_in_the_script(tmp_path: Path, demo_data: Path) -> None:
    recipe = two_stage_recipe(tmp_path)
    out = submit_cli(str(recipe), "--nodes", "1-2", "--max-restarts", "5", "train.global_batch_size=8", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.count("#SBATCH --nodes=1-2\n") == 2
        and "export BIGTRAIN_MAX_FAILURE_RESTARTS=${BIGTRAIN_MAX_FAILURE_RESTARTS:-5}" in out.stdout
        and "export BIGTRAIN_MAX_TIME_REQUEUES=${BIGTRAIN_MAX_TIME_REQUEUES:-1000}" in out.stdout
    )
    assert "BIGTRAIN_MAX_TIME_REQUEUES:-7}" in submit_cli(str(recipe), "--max-time-requeues", "7", "--dry-run").stdout
    assert (
        submit_cli(str(recipe), "--max-time-requeues", "-1", "--dry-run").stderr.strip()
        == "error: --max-time-requeues -1: must be >= 0"
    )
    # without a fixed global batch the batch would follow the node count: refused, one line
    bad = submit_cli(str(recipe), "--nodes", "1-2", "--dry-run")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --nodes 1-2: stage 's1' needs train.global_batch_size")
    assert (
        submit_cli(str(recipe), "--nodes", "3-2", "--dry-run").stderr.strip()
        == "error: --nodes 3-2: need 1 <= MIN <= MAX"
    )


def node_processes(job: str, node: str) -> tuple[int, int]:
    """(rank pid, its slurmstepd pid) of `job`'s rank on `node` (the test cluster's nodes share this host)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
            cmd = (proc / "cmdline").read_text()
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job and env.get("SLURMD_NODENAME") == node and "train.py" in cmd:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            return int(proc.name), ppid
    raise AssertionError(f"no rank of job {job} on {node}")


@pytest.mark.slurm
def test_lost_node_requeues_and_resumes_when_it_returns(cluster: None, demo_data: Path, tmp_path: Path) -> None:
    """The second node dies mid-job (its slurmd, slurmstepd and rank SIGKILLed at once); the job says so,
    requeues itself and, once the node is back, finishes from its last checkpoint with no step lost."""
    run = tmp_path / "run"
    steps, save_every = 16, 4
    env = {**os.environ, "BIGTRAIN_SRUN_WAIT": "15"}  # how long srun waits for the dead node's rank
    job = (
        subprocess.run(
            [
                "sbatch",
                "--parsable",
                "--nodes=2",
                f"--output={tmp_path}/%x-%j.out",
                str(TRAIN_SBATCH),
                "recipes/demo.yaml",
                f"output_dir={run}",
                f"train.max_steps={steps}",
                *TINY,
                f"train.save_every={save_every}",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(";")[0]
    )
    log = tmp_path / f"bigtrain-{job}.out"
    deadline = time.monotonic() + 600
    while not (run / "checkpoints" / f"step_{save_every}" / "manifest.json").exists():
        assert time.monotonic() < deadline and "exited with code" not in read(log), f"no checkpoint; log:\n{read(log)}"
        time.sleep(0.2)
    node = "bt-node2" if "rank 1 of 2 on node bt-node2" in read(log) else "bt-node1"
    slurmd_pid = Path(CLUSTER_CONF.parent / "run" / f"slurmd-{node}.pid")
    rank_pid, stepd_pid = node_processes(job, node)
    try:
        for pid in (int(slurmd_pid.read_text()), stepd_pid, rank_pid):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 180
        while "bigtrain: lost rank" not in read(log):
            assert time.monotonic() < deadline, f"no requeue after the node died; log:\n{read(log)}"
            time.sleep(0.5)
    finally:  # the node returns (and the cluster is left as it was found, for the other tests)
        subprocess.run(["slurmd", "-f", str(CLUSTER_CONF), "-N", node], check=False)
        time.sleep(2)
        # its dead step would keep the node "completing": an admin's down/resume clears it
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=test_lost_node"], check=False)
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False)
    wait_for(job, log, timeout=900)

    text = read(log)
    assert re.search(rf"bigtrain: lost rank \(exit \d+: .+\); requeueing job {job}, failure restart 1 of 3", text), text
    assert f"bigtrain: job {job} restart 1 " in text, text
    assert "bigtrain: trainer exited with code 0" in text, text
    info = json.loads((run / "run.json").read_text())
    saved = int(re.fullmatch(r".*step_(\d+)", info["resumed_from"] or "").group(1))
    assert saved >= save_every and saved % save_every == 0
    assert info["status"] == "finished" and info["step"] == steps
    records = train_records(run)
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # resumed at the checkpoint: none lost
    assert all(math.isfinite(r["loss"]) for r in records)
