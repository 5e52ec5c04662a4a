"""The scale benchmark runs end to end at tiny sizes (no timing assertions), so it cannot rot: a many-shard
store opened by two ranks under a low `ulimit -n`, both sampler orders, and a synthetic ZeRO-3 checkpoint
converted (checked against what was saved inside the benchmark) and hashed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "tools" / "bench" / "bench_scale.py"
TINY = ["--shards", "200", "--tokens-per-shard", "256", "--ranks", "2", "--nofile", "200", "--reads", "100"]
TINY += ["--sequences", "200000", "--global-batch", "256", "--resume-step", "1000"]
TINY += ["--hidden", "64", "--layers", "1", "--vocab", "512", "--src-ranks", "2", "--new-ranks", "3"]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=REPO, env=env, capture_output=True, text=True)


def test_tiny_sizes_run_and_report(tmp_path: Path) -> None:
    proc = run(*TINY, "--work", str(tmp_path / "work"), "--json", str(tmp_path / "scale.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "scale.json").read_text())
    store = res["store"]
    assert store["shards"] == 200 and store["ranks"] == 2
    assert store["maps_held"] <= store["map_limit"] and store["fds_max"] < store["nofile"]
    assert [o["order"] for o in res["sampler"]] == ["feistel", "permutation"]
    conv = res["conversion"]
    assert conv["src_ranks"] == 2 and conv["new_ranks"] == 3 and conv["rank0_share_mb"] < conv["ckpt_mb"]
    assert conv["target_busiest_files"] >= 1 and conv["target_convert_s"] < conv["target_convert_alone_s"]
    assert "8B on 64 ranks: conversion" in proc.stdout and "B <= 12 x params / 64" in proc.stdout


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    proc = run("--only", "store,bogus")
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == "error: --only bogus: unknown section (store, sampler, conversion)"
    )
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    proc = run("--work", str(tmp_path / "used"))
    assert proc.returncode == 2 and "not empty" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
