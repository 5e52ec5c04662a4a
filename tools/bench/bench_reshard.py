"""Resume on another world size: the time to convert a ZeRO-3 checkpoint (saved by 2 ranks) and load it on 1
rank, against the time to load it normally on the 2 ranks that saved it. Measured in one run, with the
real trainer (`bigtrain/train.py`, launched as `bigtrain-run` does) on the demo data:

    .venv/bin/python tools/bench/bench_reshard.py --work /tmp/bench_reshard                 # demo model
    .venv/bin/python tools/bench/bench_reshard.py --work /tmp/bench_reshard --preset large  # ~0.3B model

1. train 1 step on 2 ranks and save (a finished checkpoint with Adam state);
2. rerun it with `max_steps=2` on 2 ranks (a normal load; the run is extended by one step);
3. rerun a hard-linked copy of 1. with `max_steps=2` on 1 rank (conversion + load).
`resume_s` in run.json is the time `load_checkpoint` took (conversion included); the conversion alone is
what the trainer logs. The checkpoint's size on disk is reported too.

The conversion alone, spread over N ranks (issue 21), instead of 2. and 3.:

    .venv/bin/python tools/bench/bench_reshard.py --work /tmp/bench_reshard --convert-ranks 1,2 --repeat 3

converts hard-linked copies of 1. with `reshard.convert_distributed` on each number of ranks (torchrun,
gloo; 1: plain python), `--repeat` times each, and reports the median of rank 0's seconds (from its start
to the rename; process start-up excluded) and of the wall time of the whole launch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bigtrain.pipeline.runner import launch_command  # noqa: E402

# A ~2M-parameter model on three Shakespeare plays (seconds per step on 2 CPU cores); the presets below
# change its size. The same as the test suite's tiny model, written out here: a benchmark does not import
# the tests.
TINY: dict[str, object] = {
    "model.hidden_size": 64,
    "model.num_layers": 2,
    "model.head_dim": 32,
    "model.num_heads": 2,
    "model.num_kv_heads": 1,
    "model.intermediate_size": 128,
    "model.tie_embeddings": True,
    "data.eval_files": "[]",
    "data.seq_len": 64,
    "data.eval_fraction": 0.02,
    "train.micro_batch_size": 2,
    "train.global_batch_size": 8,
    "train.lr": 3e-3,
    "train.eval_batches": 2,
    "train.progress": False,
    "train.log_every": 1,
}
PLAYS = ("macbeth_gut.txt", "othello_gut.txt", "lear_gut.txt")

PRESETS: dict[str, dict[str, object]] = {
    "demo": {},  # TINY as it is
    # ~0.33B: a 1B ZeRO-3 checkpoint with Adam state is ~16 GB and needs ~20 GB of RAM on one CPU rank
    "large": {
        "model.hidden_size": 1024,
        "model.num_layers": 24,
        "model.head_dim": 64,
        "model.num_heads": 16,
        "model.num_kv_heads": 4,
        "model.intermediate_size": 2816,
        "train.micro_batch_size": 1,
        "train.global_batch_size": 2,
    },
    "1b": {
        "model.hidden_size": 2048,
        "model.num_layers": 16,
        "model.head_dim": 128,
        "model.num_heads": 16,
        "model.num_kv_heads": 8,
        "model.intermediate_size": 5632,
        "train.micro_batch_size": 1,
        "train.global_batch_size": 2,
    },
}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def tiny_overrides(data: Path, out: Path, cache: Path, **extra: object) -> list[str]:
    plays = ",".join(str(data / "shakespeare" / "train" / p) for p in PLAYS)
    values = {
        "output_dir": out,
        "data.train_files": f"[{plays}]",
        "data.tokenizer": data / "tokenizer",
        "data.cache_dir": cache,
        **TINY,
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def launch(overrides: list[str], ranks: int) -> str:
    """Train on `ranks` local ranks (the launch `bigtrain-run` uses); its stdout. Stops on a failure."""
    cmd = [*launch_command(REPO / "recipes" / "demo.yaml", ranks), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        sys.exit(f"bench_reshard: training failed ({result.returncode}):\n{tail}")
    return result.stdout


def convert_worker(ckpt: Path) -> None:
    """One rank of a conversion launched by `time_conversion`: rank 0 prints its seconds."""
    from bigtrain.train.distributed import init_distributed
    from bigtrain.train.reshard import convert_distributed

    world = init_distributed()
    _, seconds = convert_distributed(ckpt, world)
    if world.is_main:
        print(f"convert_s {seconds:.4f}", flush=True)


def time_conversion(ckpt: Path, work: Path, ranks: int, repeat: int) -> dict[str, float]:
    """Median seconds of `repeat` conversions of fresh hard-linked copies of `ckpt` on `ranks` ranks."""
    inner, wall = [], []
    for i in range(repeat):
        copy = work / f"convert{ranks}-{i}" / ckpt.name
        copy.parent.mkdir(parents=True)
        subprocess.run(["cp", "-al", str(ckpt), str(copy)], check=True)
        me = [str(Path(__file__).resolve()), "--convert-worker", str(copy)]
        cmd = (
            [sys.executable, *me]
            if ranks == 1
            else [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", *me]
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall.append(time.perf_counter() - start)
        m = re.search(r"convert_s ([0-9.]+)", result.stdout)
        if result.returncode != 0 or not m:
            sys.exit(
                f"bench_reshard: conversion on {ranks} ranks failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        inner.append(float(m.group(1)))
        shutil.rmtree(copy.parent)
    return {"convert_s": round(statistics.median(inner), 3), "launch_wall_s": round(statistics.median(wall), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="scratch directory (removed first)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    ap.add_argument("--convert-ranks", default="", help="e.g. 1,2: time the conversion alone on each number of ranks")
    ap.add_argument("--repeat", type=int, default=3, help="conversions per number of ranks (--convert-ranks)")
    ap.add_argument("--convert-worker", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.convert_worker:
        convert_worker(a.convert_worker)
        return
    if a.work is None:
        ap.error("--work is required")
    shutil.rmtree(a.work, ignore_errors=True)
    data = REPO / "data"
    cache = a.work / "cache"

    def overrides(out: Path, steps: int) -> list[str]:
        extra = {"train.max_steps": steps, "train.warmup_steps": 0, "train.eval_every": 0, "train.export": False}
        return tiny_overrides(data, out, cache, **{**extra, **PRESETS[a.preset]})

    saved = a.work / "ranks2"
    start = time.perf_counter()
    launch(overrides(saved, 1), ranks=2)
    train_s = time.perf_counter() - start
    ckpt = saved / "checkpoints" / "step_1"
    params = json.loads((saved / "run.json").read_text())["params_total"]
    size = du(ckpt)
    moved = a.work / "ranks1"
    (moved / "checkpoints").mkdir(parents=True)
    subprocess.run(["cp", "-al", str(ckpt), str(moved / "checkpoints" / "step_1")], check=True)
    (moved / "checkpoints" / "latest").write_text("step_1")
    if a.convert_ranks:
        timed = {n: time_conversion(ckpt, a.work, int(n), a.repeat) for n in a.convert_ranks.split(",")}
        print(
            json.dumps(
                {
                    "preset": a.preset,
                    "params": params,
                    "checkpoint_bytes": size,
                    "repeat": a.repeat,
                    "convert_on_ranks": timed,
                },
                indent=2,
            )
        )
        return

    launch(overrides(saved, 2), ranks=2)
    same = json.loads((saved / "run.json").read_text())["resume_s"]
    log = launch(overrides(moved, 2), ranks=1)
    other = json.loads((moved / "run.json").read_text())["resume_s"]
    m = re.search(r"converted in ([0-9.]+)s", log)
    convert_s = float(m.group(1)) if m else float("nan")
    result = {
        "preset": a.preset,
        "params": params,
        "checkpoint_bytes": size,
        "universal_bytes": du(moved / "checkpoints" / "step_1" / "universal"),
        "first_run_s": round(train_s, 1),
        "load_same_world_s": round(same, 2),
        "convert_s": round(convert_s, 2),
        "convert_and_load_s": round(other, 2),
        "ratio": round(other / same, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
