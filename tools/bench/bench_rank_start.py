"""What DeepSpeed's op loading costs a rank at start-up, with and without bigtrain's per-host py-cpuinfo cache
(`bigtrain/train/cpu_info.py`): in fresh processes, one after another, the op load a CPU rank makes
(FusedAdam, already JIT-built and cached; the shm all-reduce is skipped, `skip_shm_allreduce`), timed around
the load only.

    .venv/bin/python tools/bench/bench_rank_start.py [--repeats 5] [--json out.json]

Both variants load the same cached ops; the difference is py-cpuinfo's subprocess (which sleeps 1 s to time
the clock) asked per load. The first cached process writes the cache; the repeats after it read it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, time
from pathlib import Path
if sys.argv[1] == "cached":
    from bigtrain.train.cpu_info import remember_cpu_info
    remember_cpu_info(Path(sys.argv[2]))
from deepspeed.ops.op_builder.cpu import FusedAdamBuilder
start = time.perf_counter()
FusedAdamBuilder().load(verbose=False)
print(time.perf_counter() - start)
"""


def timed(variant: str, cache: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(cache)], check=True, capture_output=True, text=True
    ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        timed("plain", Path(cache))  # warm: build the ops if this machine has not yet
        first = timed("cached", Path(cache))  # asks py-cpuinfo, writes the cache
        plain = [timed("plain", Path(cache)) for _ in range(args.repeats)]
        cached = [timed("cached", Path(cache)) for _ in range(args.repeats)]
    result = {
        "plain_s": statistics.median(plain),
        "cached_s": statistics.median(cached),
        "first_cached_s": first,
        "ratio_cached_over_plain": statistics.median(cached) / statistics.median(plain),
        "repeats": args.repeats,
    }
    print(
        f"op loads per rank start: {result['plain_s']:.2f} s without the cache, {result['cached_s']:.2f} s with it "
        f"(median of {args.repeats}; ratio {result['ratio_cached_over_plain']:.2f}; the process that writes the "
        f"cache {first:.2f} s)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
