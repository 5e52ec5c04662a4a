"""What bigtrain's data and checkpoint paths cost at cluster scale (issue 21), measured small, on synthetic
data (no tokenizer, no model, no GPU), and extrapolated to 100B tokens / 64 ranks / 8B with the formula shown:

1. store: a token store of --shards shards opened by --ranks rank processes at once, each under
   `ulimit -n` --nofile (soft and hard, so the store cannot raise it) and reading --reads random sequences:
   open time, descriptors held, read cost;
2. sampler: the global sampler at --sequences (49M: 100B tokens at seq_len 2048) over a 5-source mixture,
   per order (`feistel`, and the old materialised `permutation`), each in its own process: start-up, peak
   memory, one global batch, one rank's micro batch of a 64-rank step, and the jump to --resume-step;
3. conversion: a synthetic ZeRO-3 checkpoint (Llama-shaped tensors, --hidden/--layers/--vocab, saved by
   --src-ranks ranks, in the layout `bigtrain/ckpt/zero3.py` reads) converted to the universal layout by
   one process (what rank 0 did alone before) and rank 0's share of --new-ranks (`reshard.shares`): write
   rate per rank and the cost of opening a rank file, checked tensor for tensor against what was saved;
4. checksums: SHA-256 of the checkpoint's files (`ckpt/manifest.sha256`), MB/s per rank.

    .venv/bin/python tools/bench/bench_scale.py [--json out.json]       # defaults: under 3 min on one core
    .venv/bin/python tools/bench/bench_scale.py --shards 20000 --hidden 1024 --layers 8   # larger

Timings are one pass on whatever machine runs it (say how loaded it was when recording figures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bigtrain.data.store import FORMAT, ShardWriter, write_index  # noqa: E402

MB = 1e6
# the target: Llama-3-8B shapes (hidden 4096, 32 layers, 8 KV heads of 128, FFN 14336, vocab 128256)
TARGET = {"hidden": 4096, "layers": 32, "kv": 1024, "ffn": 14336, "vocab": 128256, "ranks": 64}
SOURCES = (0.5, 0.2, 0.15, 0.1, 0.05)  # the mixture's weights


# --- 1. the token store ----------------------------------------------------------------------------


def write_store(path: Path, shards: int, tokens_per_shard: int) -> int:
    """`shards` shards of random uint16 tokens; returns the token count."""
    rng = np.random.default_rng(0)
    (path / "shards").mkdir(parents=True)
    settings = {
        "format": FORMAT,
        "dtype": "uint16",
        "fingerprint": "synthetic",
        "tokenizer": {"name": "synthetic", "vocab_size": 50000, "eos_token_id": 0, "bos_token_id": None, "hash": None},
    }
    records = []
    for unit in range(shards):
        w = ShardWriter(path, unit, np.dtype(np.uint16))
        w.write(rng.integers(0, 50000, tokens_per_shard, dtype=np.uint16), documents=1)
        records.append(w.finish())
    write_index(path, settings, records)
    return shards * tokens_per_shard


RANK = """
import json, os, resource, sys, time
import numpy as np
limit, reads, seq_len, seed = (int(a) for a in sys.argv[2:6])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))  # soft and hard: the store cannot raise it
from bigtrain.data.store import TokenStore, map_cache
before = len(os.listdir("/proc/self/fd"))
t = time.perf_counter()
s = TokenStore(sys.argv[1])
opened = time.perf_counter() - t
idx = np.random.default_rng(seed).integers(0, s.num_sequences(seq_len), reads)
t = time.perf_counter()
for i in idx:
    s.sequence(int(i), seq_len)
read = time.perf_counter() - t
print(json.dumps({"open_s": opened, "read_us": read / reads * 1e6, "fds_before": before,
                  "fds_after": len(os.listdir("/proc/self/fd")), "maps": len(map_cache()), "limit": map_cache().limit}))
"""


def store_figures(work: Path, shards: int, tokens_per_shard: int, ranks: int, nofile: int, reads: int) -> dict:
    path = work / "store"
    t = time.perf_counter()
    write_store(path, shards, tokens_per_shard)
    written = time.perf_counter() - t
    seq_len = min(2048, tokens_per_shard)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [str(path), str(nofile), str(reads), str(seq_len)]
    procs = [
        subprocess.Popen([sys.executable, "-c", RANK, *args, str(r)], env=env, stdout=subprocess.PIPE, text=True)
        for r in range(ranks)
    ]
    rows = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"error: a store rank exited {p.returncode}")
        rows.append(json.loads(out))
    return {
        "shards": shards,
        "tokens": shards * tokens_per_shard,
        "ranks": ranks,
        "nofile": nofile,
        "write_s": written,
        "open_ms_median": 1e3 * statistics.median(r["open_s"] for r in rows),
        "open_ms_max": 1e3 * max(r["open_s"] for r in rows),
        "open_us_per_shard": 1e6 * statistics.median(r["open_s"] for r in rows) / shards,
        "read_us_per_sequence": statistics.median(r["read_us"] for r in rows),
        "fds_max": max(r["fds_after"] for r in rows),
        "fds_before": max(r["fds_before"] for r in rows),
        "maps_held": max(r["maps"] for r in rows),
        "map_limit": rows[0]["limit"],
    }


# --- 2. the sampler --------------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def sampler_child(order: str, sequences: int, global_batch: int, resume_step: int) -> dict:
    from bigtrain.data.sampler import MixtureSampler

    counts = [int(sequences * w) for w in SOURCES]
    names = [f"s{i}" for i in range(len(SOURCES))]
    base = rss_mb()
    t = time.perf_counter()
    s = MixtureSampler(counts, list(SOURCES), names, global_batch, seed=7, order=order)
    s.global_batch_indices(0)
    start = time.perf_counter() - t
    t = time.perf_counter()
    for b in range(1, 21):
        s.global_batch_indices(b)
    per_global = (time.perf_counter() - t) / 20
    micro = max(1, global_batch // TARGET["ranks"] // 4)  # 4 micro steps per step on 64 ranks
    t = time.perf_counter()
    for b in range(21, 121):
        s.micro_batch_indices(b, 0, 5, TARGET["ranks"], micro)
    per_micro = (time.perf_counter() - t) / 100
    t = time.perf_counter()
    r = MixtureSampler(counts, list(SOURCES), names, global_batch, seed=7, order=order)
    r.micro_batch_indices(resume_step, 0, 5, TARGET["ranks"], micro)
    resume = time.perf_counter() - t
    return {
        "order": order,
        "sequences": sum(counts),
        "sources": len(counts),
        "startup_s": start,
        "global_batch_ms": per_global * 1e3,
        "micro_batch_ms": per_micro * 1e3,
        "resume_s": resume,
        "resume_step": resume_step,
        "rss_mb": rss_mb() - base,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def sampler_figures(orders: list[str], sequences: int, global_batch: int, resume_step: int) -> list[dict]:
    out = []
    for order in orders:
        cmd = [sys.executable, __file__, "--sampler-child", order, "--sequences", str(sequences)]
        cmd += ["--global-batch", str(global_batch), "--resume-step", str(resume_step)]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if run.returncode != 0:
            raise SystemExit(f"error: the {order} sampler run failed: {run.stderr.strip().splitlines()[-1:]}")
        out.append(json.loads(run.stdout))
    return out


# --- 3. world-size conversion and 4. checksums --------------------------------------------------------


def llama_shapes(hidden: int, layers: int, kv: int, ffn: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (ffn, hidden),
            p + "mlp.up_proj.weight": (ffn, hidden),
            p + "mlp.down_proj.weight": (hidden, ffn),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    return shapes | {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}


def write_zero3(tag: Path, shapes: dict[str, tuple[int, ...]], world: int) -> None:
    """A ZeRO-3 checkpoint as DeepSpeed saves it (what ckpt/zero3.py reads): per rank one flat fp32 group of
    its ceil(numel / world) elements of every parameter, and Adam's moments flat like it. Values: the
    parameter's index + element / 2^20 (fp32 master), x2 and x3 (moments), so a read can be checked."""
    import torch

    tag.mkdir(parents=True)
    parts: list[list[torch.Tensor]] = [[] for _ in range(world)]
    for k, shape in enumerate(shapes.values()):
        n = math.prod(shape)
        per = math.ceil(n / world)
        full = torch.zeros(per * world)
        full[:n] = k + torch.arange(n, dtype=torch.float32) / 2**20
        for r in range(world):
            parts[r].append(full[r * per : (r + 1) * per])
    for r in range(world):
        flat = torch.cat(parts[r])
        state = {0: {"step": torch.tensor(1.0), "exp_avg": flat * 2, "exp_avg_sq": flat * 3}}
        group = {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "params": [0]}
        osd = {
            "zero_stage": 3,
            "partition_count": [world],
            "fp32_flat_groups": [flat],
            "optimizer_state_dict": {"state": state, "param_groups": [group]},
        }
        torch.save({"optimizer_state_dict": osd}, tag / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
        model = {
            "param_shapes": [OrderedDict((name, torch.Size(s)) for name, s in shapes.items())],
            "frozen_param_shapes": None,
            "shared_params": {},
            "lr_scheduler": None,
            "global_steps": 1,
            "global_samples": 8,
            "skipped_steps": 0,
            "ds_config": {"train_batch_size": 8},
        }
        torch.save(model, tag / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
        del flat, state, osd


class Shapes:
    """What `reshard.shares` reads of a checkpoint: its shapes (none frozen)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes

    def is_frozen(self, name: str) -> bool:
        return False


def busiest_share(shapes: dict[str, tuple[int, ...]], ranks: int) -> tuple[int, int]:
    """(bytes, files) of the most loaded rank's share of a conversion on `ranks` ranks."""
    from bigtrain.train.reshard import shares, tensor_bytes

    src = Shapes(shapes)
    plan = shares(src, ranks)  # type: ignore[arg-type]
    loads = [(sum(tensor_bytes(src, n) for n, _ in units), len(units)) for units in plan]  # type: ignore[arg-type]
    return max(loads)


def conversion_figures(work: Path, a: argparse.Namespace) -> dict:
    import torch

    from bigtrain.ckpt.manifest import sha256
    from bigtrain.ckpt.zero3 import _load
    from bigtrain.train.reshard import _open as open_checkpoint
    from bigtrain.train.reshard import conversion_units, convert_share, shares, tensor_bytes

    torch.set_num_threads(1)
    kv = max(a.hidden // 4, 1)
    shapes = llama_shapes(a.hidden, a.layers, kv, int(3.5 * a.hidden), a.vocab)
    params = sum(math.prod(s) for s in shapes.values())
    tag = work / "ckpt" / "step_1"
    t = time.perf_counter()
    write_zero3(tag, shapes, a.src_ranks)
    saved_s = time.perf_counter() - t
    files = sorted(p for p in tag.iterdir() if p.is_file())
    ckpt_bytes = sum(p.stat().st_size for p in files)

    # the cost of opening one rank file (every tensor read opens each source rank's file it spans)
    optim = [f for f in files if f.name.endswith("optim_states.pt")]
    _load(optim[0])  # warm: imports, page cache
    t = time.perf_counter()
    for _ in range(5):
        for f in optim:
            _load(f)
    open_s = (time.perf_counter() - t) / (5 * len(optim))

    src = open_checkpoint(tag)
    units = conversion_units(src)
    one = work / "one"
    t = time.perf_counter()
    convert_share(src, units, one)  # one process converts everything: what rank 0 did alone
    one_s = time.perf_counter() - t
    one_bytes = sum(tensor_bytes(src, n) for n, _ in units)
    for k, (name, shape) in enumerate(shapes.items()):  # the conversion read back what was saved
        got = torch.load(one / "zero" / name / "exp_avg.pt", weights_only=True)["param"]
        want = 2 * (k + torch.arange(math.prod(shape), dtype=torch.float32) / 2**20)
        if not torch.equal(got.flatten(), want):
            raise SystemExit(f"error: the converted {name} differs from what was saved")
    share0 = shares(src, a.new_ranks)[0]
    part = work / "share"
    t = time.perf_counter()
    convert_share(src, share0, part)
    share_s = time.perf_counter() - t
    share_bytes = sum(tensor_bytes(src, n) for n, _ in share0)
    rate = one_bytes / one_s  # bytes/s, opens included: the extrapolation below is an upper bound

    t = time.perf_counter()
    for f in files:
        sha256(f)
    hash_s = time.perf_counter() - t
    hash_rate = ckpt_bytes / hash_s

    g = TARGET
    big = llama_shapes(g["hidden"], g["layers"], g["kv"], g["ffn"], g["vocab"])
    big_params = sum(math.prod(s) for s in big.values())
    busy_bytes, busy_files = busiest_share(big, g["ranks"])
    big_open = busy_files * g["ranks"]  # source saved on 64 ranks too
    t8 = busy_bytes / rate + big_open * open_s
    t8_alone = 12 * big_params / rate + 3 * len(big) * g["ranks"] * open_s
    ckpt8 = 12 * big_params  # fp32 master + 2 moments; the model-state files hold only shapes
    return {
        "ckpt_params": params,
        "ckpt_mb": ckpt_bytes / MB,
        "src_ranks": a.src_ranks,
        "save_s": saved_s,
        "open_file_ms": open_s * 1e3,
        "convert_one_s": one_s,
        "convert_one_mb_s": one_bytes / MB / one_s,
        "new_ranks": a.new_ranks,
        "rank0_share_mb": share_bytes / MB,
        "rank0_share_s": share_s,
        "rank0_share_mb_s": share_bytes / MB / share_s,
        "checksum_mb_s": hash_rate / MB,
        "target_params": big_params,
        "target_busiest_mb": busy_bytes / MB,
        "target_busiest_files": busy_files,
        "target_convert_s": t8,
        "target_convert_alone_s": t8_alone,
        "target_ckpt_gb": ckpt8 / 1e9,
        "target_checksum_per_rank_s": ckpt8 / g["ranks"] / hash_rate,
        "target_checksum_rank0_alone_s": ckpt8 / hash_rate,
    }


# --- the report ------------------------------------------------------------------------------------


def report(res: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    if "store" in res:
        s = res["store"]
        rows += [
            (f"store: {s['shards']} shards, {s['tokens'] / 1e6:.0f}M tokens, written", f"{s['write_s']:.1f} s"),
            (
                f"store: open, {s['ranks']} ranks at once, ulimit -n {s['nofile']}",
                f"median {s['open_ms_median']:.0f} ms, max {s['open_ms_max']:.0f} ms ({s['open_us_per_shard']:.0f} us per shard)",
            ),
            (
                "store: descriptors per rank (before open -> after reads)",
                f"{s['fds_before']} -> {s['fds_max']} ({s['maps_held']} maps, limit {s['map_limit']})",
            ),
            ("store: random sequence read", f"{s['read_us_per_sequence']:.0f} us"),
        ]
    for o in res.get("sampler", []):
        k = f"sampler ({o['order']}, {o['sequences'] / 1e6:.0f}M seq, {o['sources']} sources)"
        rows += [
            (
                f"{k}: start-up / resident memory",
                f"{o['startup_s']:.2f} s / {o['rss_mb']:.0f} MB (peak RSS {o['peak_rss_mb']:.0f} MB)",
            ),
            (
                f"{k}: global batch / one rank's micro batch",
                f"{o['global_batch_ms']:.2f} ms / {o['micro_batch_ms']:.3f} ms",
            ),
            (f"{k}: resume at step {o['resume_step']}", f"{o['resume_s']:.2f} s"),
        ]
    if "conversion" in res:
        c = res["conversion"]
        rows += [
            (
                f"ckpt: synthetic ZeRO-3, {c['ckpt_params'] / 1e6:.0f}M params, {c['src_ranks']} ranks",
                f"{c['ckpt_mb']:.0f} MB, saved in {c['save_s']:.1f} s",
            ),
            ("ckpt: open one rank file (torch.load, mmap)", f"{c['open_file_ms']:.1f} ms"),
            (
                "convert: one process, everything",
                f"{c['convert_one_s']:.1f} s, r = {c['convert_one_mb_s']:.0f} MB/s",
            ),
            (
                f"convert: rank 0's share of {c['new_ranks']} ranks",
                f"{c['rank0_share_mb']:.0f} MB in {c['rank0_share_s']:.1f} s, {c['rank0_share_mb_s']:.0f} MB/s",
            ),
            ("checksum: SHA-256 per rank", f"{c['checksum_mb_s']:.0f} MB/s"),
            (
                f"8B ({c['target_params'] / 1e9:.2f}B) on 64 ranks: busiest rank's share",
                f"{c['target_busiest_mb']:.0f} MB, {c['target_busiest_files']} files",
            ),
            (
                "8B on 64 ranks: conversion, busiest rank",
                f"{c['target_convert_s']:.0f} s (rank 0 alone: {c['target_convert_alone_s']:.0f} s)",
            ),
            (
                f"8B on 64 ranks: checksums per save ({c['target_ckpt_gb']:.0f} GB)",
                f"{c['target_checksum_per_rank_s']:.0f} s per rank (rank 0 alone: {c['target_checksum_rank0_alone_s']:.0f} s)",
            ),
        ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if "conversion" in res:
        lines += [
            "",
            "extrapolation (8B = Llama-3-8B shapes, saved and resumed on 64 ranks; r, t_open and the SHA-256 rate measured",
            "above; r includes the opens, so the conversion figures are upper bounds for this machine's storage):",
            "  conversion, busiest rank  = B / r + F x 64 x t_open, B, F = bytes and files of its share (reshard.shares),",
            "                              B <= 12 x params / 64 + 4 x largest tensor's elements",
            "  rank 0 alone              = 12 x params / r + 3 x tensors x 64 x t_open",
            "  checksums per save, rank  = 12 x params / 64 / sha256 rate (fp32 master + 2 Adam moments per rank)",
        ]
    return "\n".join(lines)


def bad_input(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="store,sampler,conversion", help="comma list of sections")
    p.add_argument("--shards", type=int, default=3000)
    p.add_argument("--tokens-per-shard", type=int, default=4096)
    p.add_argument("--ranks", type=int, default=4, help="store: rank processes opening the store at once")
    p.add_argument("--nofile", type=int, default=256, help="store: each rank's ulimit -n (soft = hard)")
    p.add_argument("--reads", type=int, default=2000)
    p.add_argument("--sequences", type=int, default=49_000_000)
    p.add_argument("--global-batch", type=int, default=1024)
    p.add_argument("--resume-step", type=int, default=500_000)
    p.add_argument("--orders", default="feistel,permutation")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--src-ranks", type=int, default=4)
    p.add_argument("--new-ranks", type=int, default=8)
    p.add_argument("--work", type=Path, help="scratch directory (default: a temporary one, removed after)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--sampler-child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.sampler_child:
        print(json.dumps(sampler_child(a.sampler_child, a.sequences, a.global_batch, a.resume_step)))
        return
    sections = [s for s in a.only.split(",") if s]
    unknown = sorted(set(sections) - {"store", "sampler", "conversion"})
    if unknown:
        bad_input(f"--only {','.join(unknown)}: unknown section (store, sampler, conversion)")
    sizes = ("shards", "tokens_per_shard", "ranks", "reads", "src_ranks", "new_ranks", "layers", "hidden", "vocab")
    small = [f"--{k.replace('_', '-')}" for k in sizes if getattr(a, k) < 1]
    if small:
        bad_input(f"{', '.join(small)}: must be >= 1")
    if a.work and a.work.exists() and any(a.work.iterdir()):
        bad_input(f"--work {a.work}: not empty")
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()[0]}}
    started = time.perf_counter()
    try:
        if "store" in sections:
            res["store"] = store_figures(work, a.shards, a.tokens_per_shard, a.ranks, a.nofile, a.reads)
        if "sampler" in sections:
            orders = [o for o in a.orders.split(",") if o]
            res["sampler"] = sampler_figures(orders, a.sequences, a.global_batch, a.resume_step)
        if "conversion" in sections:
            res["conversion"] = conversion_figures(work, a)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    res["wall_s"] = time.perf_counter() - started
    print(report(res))
    print(f"\n{res['wall_s']:.0f} s on {res['machine']['cpus']} CPUs, load average {res['machine']['load']:.1f}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
