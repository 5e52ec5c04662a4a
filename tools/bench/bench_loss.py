"""Peak memory and time of the causal-LM loss from hidden states: plain (full logits) vs chunked (bigtrain's
PyTorch chunked linear cross-entropy) vs fused (liger, CUDA only), forward + backward, each in its own process.

    .venv/bin/python tools/bench/bench_loss.py                                 # CPU: 4 x 1024 tokens, vocab 32k
    python tools/bench/bench_loss.py --tokens 8192 --hidden 2048 --vocab 128256 --dtype bf16   # a GPU, the 1B

Memory: CUDA max-allocated above what the inputs hold; on CPU the process's peak RSS above the RSS after the
inputs were made (`getrusage`), so each variant runs in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(kind: str, tokens: int, hidden: int, vocab: int, dtype: str) -> dict:
    from bigtrain.model.loss import linear_cross_entropy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    h = torch.randn(1, tokens, hidden, device=device, dtype=dt, requires_grad=True)
    w = (0.02 * torch.randn(vocab, hidden, device=device, dtype=dt)).requires_grad_()
    labels = torch.randint(0, vocab, (1, tokens), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    t0 = time.perf_counter()
    loss = linear_cross_entropy(h, w, labels, kind)
    loss.backward()
    value = loss.item()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else rss_bytes()) - base
    return {"loss": kind, "device": device, "value": value, "seconds": seconds, "peak_extra_bytes": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.tokens, args.hidden, args.vocab, args.dtype)))
        return
    kinds = ["plain", "chunked"] + (["fused"] if torch.cuda.is_available() else [])
    logits_bytes = args.tokens * args.vocab * 4
    rows = []
    for kind in kinds:
        cmd = [sys.executable, __file__, "--worker", kind, "--tokens", str(args.tokens), "--hidden", str(args.hidden)]
        cmd += ["--vocab", str(args.vocab), "--dtype", args.dtype]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    plain = rows[0]
    for r in rows:
        r["memory_vs_plain"] = r["peak_extra_bytes"] / plain["peak_extra_bytes"]
        r["fp32_logits_bytes"] = logits_bytes
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
