"""Trainer overhead: bigtrain (DeepSpeed ZeRO-3, one rank) against a minimal plain-PyTorch loop on the same
model, batch and sequence length, measured in one run. Reports median step time, tokens/s and their ratio.

    .venv/bin/python tools/bench/bench_trainer.py                      # small CPU model
    .venv/bin/python tools/bench/bench_trainer.py --preset 1b --steps 30   # on a GPU: Llama-3.2-1B shape, bf16
    .venv/bin/python tools/bench/bench_trainer.py --baseline train.loss=plain train.sync_every=1   # fast path vs not

`--overrides` are added to bigtrain's run; `--baseline` runs bigtrain a second time with those overrides too
(e.g. the fast path switched off) and reports the ratio of the two in the same run.

The plain loop is what a person writes by hand: AdamW, forward, backward, clip, step, no ZeRO, on the
same model class with random tokens. On a GPU it trains fp32 weights under torch.autocast(bf16); bigtrain
runs DeepSpeed's bf16 (bf16 weights, fp32 master copies in the optimizer). bigtrain's step time is the
`step_time_s` it logs (data loading included); the first `--warmup` steps of both are dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tools.bench.presets import DEMO, LLAMA_1B  # noqa: E402

# the demo model at one micro batch of 8 a step, and Llama-3.2-1B
PRESETS = {"small": replace(DEMO, micro_batch=8, global_batch=8), "1b": LLAMA_1B}


def plain_pytorch(preset: str, steps: int, warmup: int, vocab: int) -> list[float]:
    from bigtrain.model import BigTrainConfig, BigTrainForCausalLM

    ps = PRESETS[preset]
    cfg = BigTrainConfig(
        vocab_size=vocab,
        hidden_size=ps.hidden,
        num_hidden_layers=ps.layers,
        head_dim=ps.head_dim,
        num_attention_heads=ps.heads,
        num_key_value_heads=ps.kv_heads,
        intermediate_size=ps.ffn,
        tie_word_embeddings=True,
    )
    cfg._attn_implementation = "sdpa"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = BigTrainForCausalLM(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    batch = torch.randint(0, vocab, (ps.micro_batch, ps.seq_len), device=device)
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def bigtrain_run(
    preset: str, steps: int, warmup: int, out: Path, extra: list[str] | None = None
) -> tuple[list[float], dict]:
    ps = PRESETS[preset]
    overrides = [
        f"output_dir={out}",
        f"model.hidden_size={ps.hidden}",
        f"model.num_layers={ps.layers}",
        f"model.head_dim={ps.head_dim}",
        f"model.num_heads={ps.heads}",
        f"model.num_kv_heads={ps.kv_heads}",
        f"model.intermediate_size={ps.ffn}",
        f"model.vocab_size={ps.vocab}",
        "model.tie_embeddings=true",
        f"data.seq_len={ps.seq_len}",
        f"train.micro_batch_size={ps.micro_batch}",
        f"train.max_steps={warmup + steps}",
        "train.log_every=1",
        "train.eval_every=0",
        "train.save_every=0",
        "train.export=false",
        "train.progress=false",
        "data.eval_fraction=0.0",
        "data.eval_files=[]",
        *(extra or []),
    ]
    cmd = [sys.executable, str(REPO / "bigtrain" / "train.py"), *overrides]
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in records if "step_time_s" in r and r["step"] > warmup]
    return times, json.loads((out / "run.json").read_text())


def main() -> None:
    from bigtrain.train.metrics import mfu

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--overrides", nargs="*", default=[], help="key=value for bigtrain's run")
    p.add_argument("--baseline", nargs="*", default=None, help="also run bigtrain with these overrides added")
    args = p.parse_args()
    tokens_per_step = PRESETS[args.preset].micro_batch * PRESETS[args.preset].seq_len
    with tempfile.TemporaryDirectory() as tmp:
        ours, info = bigtrain_run(args.preset, args.steps, args.warmup, Path(tmp) / "run", args.overrides)
        if args.baseline is not None:
            extra = [*args.overrides, *args.baseline]
            base, _ = bigtrain_run(args.preset, args.steps, args.warmup, Path(tmp) / "baseline", extra)
    plain = plain_pytorch(args.preset, args.steps, args.warmup, vocab=PRESETS[args.preset].vocab)
    t_ours, t_plain = statistics.median(ours), statistics.median(plain)
    result = {
        "preset": args.preset,
        "device": info["device"],
        "params": info["params_total"],
        "tokens_per_step": tokens_per_step,
        "bigtrain_step_s": t_ours,
        "plain_step_s": t_plain,
        "bigtrain_tokens_per_s": tokens_per_step / t_ours,
        "plain_tokens_per_s": tokens_per_step / t_plain,
        "throughput_ratio": t_plain / t_ours,
        "bigtrain_peak_memory_bytes": info["memory"]["peak_bytes"],
        "bigtrain_mfu": mfu(info["flops_per_token"], tokens_per_step / t_ours, info["peak_tflops_per_device"], 1),
        "bigtrain_mfu_palm": mfu(
            info["flops_per_token_palm"], tokens_per_step / t_ours, info["peak_tflops_per_device"], 1
        ),
    }
    if args.baseline is not None:
        t_base = statistics.median(base)
        result.update(
            baseline_overrides=args.baseline,
            baseline_step_s=t_base,
            baseline_tokens_per_s=tokens_per_step / t_base,
            speedup_vs_baseline=t_base / t_ours,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
