"""Benchmark bigtrain-grow on a ~1B-parameter checkpoint: wall time and peak RSS against a plain copy.

    python tools/bench/bench_grow.py --work /tmp/bench_grow

Builds (once, kept in --work) a stock LLaMA checkpoint with random bf16 weights (hidden 2048, 16 layers,
FFN 5632, 32 heads: 0.95B parameters, 1.9 GB), then runs each of these in its own subprocess and
reads that child's peak RSS from os.wait4:
  import      `import bigtrain.growth` only (the interpreter + torch + transformers floor)
  copy        shutil.copytree of the checkpoint (the same bytes, no tensor work)
  load+save   safetensors load_file of every shard, then save_file (what a non-streaming tool holds)
  stack       bigtrain-grow --op stack --layers 32                      (output 1.9B params)
  net2net     bigtrain-grow --op net2net --hidden 2560 --ffn 7040 --heads 40   (output 1.5B params)
Outputs are deleted after each run. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from bigtrain.ckpt.safetensors_writer import StreamingSafetensorsWriter
from bigtrain.model import BigTrainConfig
from bigtrain.model.param_shapes import expected_shapes

GROW = str(Path(sys.executable).parent / "bigtrain-grow")
LOAD_SAVE = """
import sys
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir()
state = {}
for f in sorted(src.glob("*.safetensors")):
    state.update(load_file(f))
save_file(state, dst / "model.safetensors")
"""


def build_source(path: Path, cfg: BigTrainConfig) -> None:
    if (path / "config.json").is_file():
        return
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    plan = [(n, s, torch.bfloat16) for n, s in expected_shapes(cfg).items()]
    writer = StreamingSafetensorsWriter(tmp, plan)
    g = torch.Generator().manual_seed(0)
    for name, shape, _ in plan:
        t = torch.ones(shape) if name.endswith("norm.weight") else torch.randn(shape, generator=g) * 0.02
        writer.write(name, t.to(torch.bfloat16))
    writer.close()
    llama = cfg.to_llama_config()
    llama.dtype = "bfloat16"
    llama.save_pretrained(tmp)
    os.replace(tmp, path)


# Linux carries a process's peak RSS across fork + exec, so a child forked from this (large) process
# would report at least our size. A bare interpreter forks the measured command and reports its peak.
WRAPPER = """
import resource, subprocess, sys, time
t = time.perf_counter()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - t
print(code, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one command."""
    out = subprocess.run([sys.executable, "-S", "-c", WRAPPER, *cmd], capture_output=True, text=True, check=True)
    code, wall, maxrss_kib = out.stdout.split()
    if code != "0":
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return float(wall), int(maxrss_kib) / 1024


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch directory (needs ~8 GB free)")
    args = ap.parse_args()
    cfg = BigTrainConfig(
        vocab_size=32000,
        hidden_size=2048,
        num_hidden_layers=16,
        head_dim=64,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=5632,
    )
    src = args.work / "source"
    t0 = time.perf_counter()
    build_source(src, cfg)
    print(f"source: {src} ({dir_bytes(src) / 1e9:.2f} GB, built/found in {time.perf_counter() - t0:.0f} s)")
    model_mib = dir_bytes(src) / 2**20
    out = args.work / "out"
    runs = {
        "import": [sys.executable, "-c", "import bigtrain.growth"],
        "copy": [
            sys.executable,
            "-c",
            "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2])",
            str(src),
            str(out),
        ],
        "load+save": [sys.executable, "-c", LOAD_SAVE, str(src), str(out)],
        "stack": [GROW, str(src), str(out), "--op", "stack", "--layers", "32", "--no-progress"],
        "net2net": [
            GROW,
            str(src),
            str(out),
            "--op",
            "net2net",
            "--hidden",
            "2560",
            "--ffn",
            "7040",
            "--heads",
            "40",
            "--no-progress",
        ],
    }
    rows = []
    for name, cmd in runs.items():
        shutil.rmtree(out, ignore_errors=True)
        wall, rss = measure(cmd)
        size = dir_bytes(out) / 1e9 if out.exists() else 0.0
        rows.append((name, size, wall, rss))
        print(f"{name}: {wall:.1f} s, peak RSS {rss:.0f} MiB, output {size:.2f} GB", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    copy_wall = rows[1][2]
    print(f"\nsource checkpoint: {model_mib:.0f} MiB (bf16, {sum(1 for _ in expected_shapes(cfg))} tensors)\n")
    print("| run | output GB | wall s | wall / copy | peak RSS MiB | RSS / source size |")
    print("|---|---|---|---|---|---|")
    for name, size, wall, rss in rows:
        print(f"| {name} | {size:.2f} | {wall:.1f} | {wall / copy_wall:.1f}x | {rss:.0f} | {rss / model_mib:.2f} |")


if __name__ == "__main__":
    main()
