"""Helpers shared by the Slurm test files (test_slurm_submit.py, test_slurm_requeue.py, test_data_slurm.py):
running bigtrain-submit in-process, a small staged recipe, stand-in srun/scontrol, and the local test
cluster (tools/slurm-cluster.sh): probing it, submitting to it, waiting for jobs, and the lock that lets
the files share it from two pytest-xdist workers."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bigtrain.cli.submit import main

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
    # one token cache for every job: the first job of a fresh cluster tokenises the demo data, the rest
    # start seconds sooner (test_data_slurm.py's preparation test uses its own)
    f"data.cache_dir={CLUSTER_CONF.parent / 'token-cache'}",
]

# For a job whose ranks may fork from the suite's preloaded server (tests/zygote.py) instead of importing
# torch, DeepSpeed and transformers afresh (~10 s of CPU each): train.sbatch's own $BIGTRAIN_PYTHON, set to
# tests/python. What srun and train.sbatch add to a task's environment is read at run time, not at import
# (gloo runs here, not NCCL). The start-up signal, header time-limit (tuned to a real start-up's length),
# lost-node and preparation tests keep fresh interpreters.
FORKED_RANKS = {
    "BIGTRAIN_PYTHON": str(REPO / "tests" / "python"),
    "BIGTRAIN_TEST_RUNTIME_ENV": ",".join(
        (
            *("LOCAL_WORLD_SIZE", "SLURMD_NODENAME", "ENVIRONMENT", "SRUN_DEBUG", "TMPDIR", "HOSTNAME"),
            *("TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT"),
            *("CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK"),
        )
    ),
}


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


def fake_slurm(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Stand-in srun/scontrol for running train.sbatch outside Slurm: srun exits $FAKE_RC (saying
    $FAKE_SRUN_SAYS on stderr) or, with $FAKE_HANG, sleeps that long deaf to SIGUSR1; scontrol names
    $FAKE_LOG as the job's log and $FAKE_END as its end time, and records each requeue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "srun").write_text(
        # $FAKE_HANG: a step that ignores the signal (ranks stuck starting up); deaf before it says it runs
        f'#!/bin/bash\n[ -n "${{FAKE_HANG:-}}" ] && trap "" USR1\necho srun >> {calls}\n'
        '[ -n "${FAKE_SRUN_SAYS:-}" ] && echo "srun: error: $FAKE_SRUN_SAYS" >&2\n'
        '[ -n "${FAKE_HANG:-}" ] && exec sleep "$FAKE_HANG"\n'
        'exit "${FAKE_RC:-0}"\n'
    )
    (bin_dir / "scontrol").write_text(
        '#!/bin/bash\ncase "$1 $2" in\n  "show hostnames") echo bt-node1 ;;\n'
        '  "show job") echo "   StdOut=$FAKE_LOG"; echo "   StartTime=2026-01-01T00:00:00 EndTime=${FAKE_END:-Unknown}" ;;\n'
        f'  requeue*) echo "$@" >> {calls} ;;\nesac\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "BIGTRAIN_MAX"))}
    env |= {"PATH": f"{bin_dir}:{env['PATH']}", "BIGTRAIN_HOME": str(REPO), "BIGTRAIN_PYTHON": "python3"}
    env |= {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "bt-node1", "SLURM_JOB_NUM_NODES": "1"}
    return env, calls


def require_cluster() -> None:
    """Skips (with the reason) unless the test cluster answers with 2 usable nodes."""
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


@contextlib.contextmanager
def cluster_lock(exclusive: bool) -> Iterator[None]:
    """Tests on the cluster share it (the two pytest-xdist workers each run a Slurm file), except one that
    takes a node away (exclusive): it waits for the running ones to end and holds back new ones. The
    turnstile, taken in turn by everyone before the lock itself, keeps the exclusive one from starving."""
    folder = CLUSTER_CONF.parent
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "tests.turnstile", "a") as gate, open(folder / "tests.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def sbatch(*args: str, env: dict[str, str] | None = None) -> str:
    """Submits; `env`: added to this process's environment, which the job inherits."""
    out = subprocess.run(
        ["sbatch", "--parsable", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
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
