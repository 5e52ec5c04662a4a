"""The data side at scale (issue 21), on synthetic data (no tokenizer):

1. the sampler at --sequences (default 49M: 100B tokens at seq_len 2048): first batch, one global batch,
   one rank's micro batch, a jump to --resume-step, and the process's peak memory, for the `feistel` order
   and the old materialised `permutation`;
2. a token store of --shards shards read at random through the map cache at several sizes: the cost of
   reopening maps when the cache is smaller than the shards a run touches.

    .venv/bin/python tools/bench/bench_data_scale.py [--sequences 49000000] [--shards 2000]

Each order runs in its own process, so peak memory is its own. Timings are one pass (the machine may be
shared: say so when recording figures).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def sampler_figures(order: str, sequences: int, global_batch: int, resume_step: int) -> dict:
    from bigtrain.data.sampler import GlobalBatchSampler

    s = GlobalBatchSampler(sequences, global_batch, seed=7, order=order)
    t = time.perf_counter()
    s.micro_batch_indices(0, 0, 0, 64, 4)
    first = time.perf_counter() - t
    t = time.perf_counter()
    for b in range(1, 101):
        s.global_batch_indices(b)
    per_global = (time.perf_counter() - t) / 100
    t = time.perf_counter()
    for b in range(1, 101):
        s.micro_batch_indices(b, 0, 5, 64, 4)
    per_micro = (time.perf_counter() - t) / 100
    t = time.perf_counter()
    s.global_batch_indices(resume_step)
    jump = time.perf_counter() - t
    return {
        "order": order,
        "first_batch_ms": round(first * 1e3, 1),
        "global_batch_ms": round(per_global * 1e3, 3),
        "micro_batch_ms": round(per_micro * 1e3, 3),
        "resume_jump_ms": round(jump * 1e3, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def store_figures(shards: int, tokens_per_shard: int, seq_len: int, reads: int) -> list[dict]:
    sys.path.insert(0, str(REPO))
    from bigtrain.data import store as sm
    from tests.test_data_scale import synthetic_store

    path = Path(tempfile.mkdtemp()) / "store"
    synthetic_store(path, shards, tokens_per_shard)
    rng = np.random.default_rng(0)
    out = []
    for limit in (16, sm.OPEN_SHARDS_DEFAULT, 2 * shards):
        sm._CACHE = sm.MapCache(limit)
        s = sm.TokenStore(path)
        idx = rng.integers(0, s.num_sequences(seq_len), reads)
        t = time.perf_counter()
        for i in idx:
            s.sequence(int(i), seq_len)
        out.append({"open_maps": limit, "us_per_sequence": round((time.perf_counter() - t) / reads * 1e6)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=49_000_000)
    p.add_argument("--global-batch", type=int, default=1024)
    p.add_argument("--resume-step", type=int, default=500_000)
    p.add_argument("--shards", type=int, default=2000)
    p.add_argument("--tokens-per-shard", type=int, default=5000)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--reads", type=int, default=3000)
    p.add_argument("--one-order", help=argparse.SUPPRESS)  # the child process of one order
    a = p.parse_args()
    if a.one_order:
        print(json.dumps(sampler_figures(a.one_order, a.sequences, a.global_batch, a.resume_step)))
        return
    for order in ("feistel", "permutation"):
        cmd = [sys.executable, __file__, "--one-order", order, "--sequences", str(a.sequences)]
        cmd += ["--global-batch", str(a.global_batch), "--resume-step", str(a.resume_step)]
        print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())
    for row in store_figures(a.shards, a.tokens_per_shard, a.seq_len, a.reads):
        print(json.dumps({"shards": a.shards, "seq_len": a.seq_len, **row}))


if __name__ == "__main__":
    main()
