"""bigtrain against what a user would otherwise pick, in one run: the same model, token sequences, global
batch, sequence length, precision and optimizer for every runner.

    .venv/bin/python tools/bench/bench_peers.py --preset cpu                 # the demo model on CPU
    python tools/bench/bench_peers.py --preset 1b --out $OUT/peers           # Llama-3.2-1B shape, one GPU

Runners (each in its own process, one after another):
  bigtrain            the real trainer through its entry point (`python bigtrain/train.py`, a group of one),
                      with its own defaults for the hardware (ZeRO stage, kernels, loss, ...)
  hf_deepspeed        transformers `Trainer` with a `deepspeed` config dict as its docs show ("auto" values
                      filled from TrainingArguments; ZeRO stage --peer-zero-stage), `LlamaForCausalLM`; the
                      Trainer's own AdamW with bigtrain's parameter groups (no decay on norms, embeddings)
  hf_deepspeed_liger  the same with `use_liger_kernel=True` (CUDA and liger-kernel only; else skipped)
  torch_eager         a plain PyTorch loop: one process, `LlamaForCausalLM`, torch AdamW (fused where
                      available), autocast bf16 over fp32 weights on GPU, fp32 on CPU
  torch_compile       the same loop with the model `torch.compile`d

Same inputs: one `LlamaForCausalLM` initialised once (seed 0, std 0.02) and saved; every runner starts
from those weights (bigtrain through `init_from`), so the first losses agree to rounding and later ones
within the precision's noise (checked: `loss_check`). Batches are the trainer's own: real Shakespeare
through bigtrain's tokeniser and token store, global batch k = `GlobalBatchSampler` batch k, split into
micro batches in the trainer's order. AdamW lr / betas / eps / weight decay / clip 1.0, constant LR.

Step time: wall time between consecutive step ends, each end synchronised (the step's loss read back);
median and p10/p90 over the steps after --warmup. MFU under bigtrain's and the PaLM convention against
the detected device's dense bf16 peak. Memory: CUDA max allocated / reserved (CPU: the process's peak RSS).
Writes peers.json and peers.md under --out and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tools.bench.presets import DEMO, LLAMA_1B, ModelPreset  # noqa: E402

RUNNERS = ("bigtrain", "hf_deepspeed", "hf_deepspeed_liger", "torch_eager", "torch_compile")


PRESETS = {"cpu": DEMO, "1b": LLAMA_1B}


# --- shared inputs -------------------------------------------------------------------------------------


def llama_config(ps: ModelPreset) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=ps.vocab,
        hidden_size=ps.hidden,
        intermediate_size=ps.ffn,
        num_hidden_layers=ps.layers,
        num_attention_heads=ps.heads,
        num_key_value_heads=ps.kv_heads,
        head_dim=ps.head_dim,
        max_position_embeddings=max(ps.seq_len, 4096),
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": ps.rope_theta},
        initializer_range=0.02,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )


def make_init(ps: ModelPreset, path: Path) -> None:
    """One random LlamaForCausalLM, saved once: every runner starts from these weights."""
    import torch
    from transformers import LlamaForCausalLM

    if (path / "config.json").exists():
        return
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(ps))
    model.save_pretrained(path)


def make_tokens(ps: ModelPreset, path: Path) -> None:
    from bigtrain.config import DataConfig
    from bigtrain.data.prepare import prepare_token_dir
    from bigtrain.data.tokenizer import load_tokenizer

    if (path / "index.json").exists():  # a finished token store (bigtrain/data/store.py)
        return
    path.mkdir(parents=True, exist_ok=True)
    cfg = DataConfig(
        train_files=[str(REPO / "data" / "shakespeare" / "train" / "*.txt")],
        tokenizer=str(REPO / "data" / "tokenizer"),
        seq_len=ps.seq_len,
        max_tokens=ps.max_tokens,
    )
    prepare_token_dir(cfg, load_tokenizer(cfg.tokenizer), path)


def step_batches(spec: dict[str, Any], step: int) -> list[Any]:
    """The micro batches of global batch `step`, exactly as bigtrain's loop draws them on one rank."""
    from bigtrain.data.sampler import GlobalBatchSampler
    from bigtrain.data.store import open_tokens

    seq, micro, gbs = spec["seq_len"], spec["micro_batch"], spec["global_batch"]
    file = open_tokens(spec["tokens"])
    sampler = GlobalBatchSampler(file.num_sequences(seq), gbs, spec["data_seed"])
    import numpy as np
    import torch

    out = []
    for m in range(gbs // micro):
        idx = sampler.micro_batch_indices(step, m, 0, 1, micro)
        out.append(torch.from_numpy(np.stack([file.sequence(int(i), seq) for i in idx])))
    return out


# --- measurements ----------------------------------------------------------------------------------------


def memory() -> dict[str, int | None]:
    import torch

    if torch.cuda.is_available():
        return {
            "peak_allocated_bytes": int(torch.cuda.max_memory_allocated()),
            "peak_reserved_bytes": int(torch.cuda.max_memory_reserved()),
        }
    return {
        "peak_allocated_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_reserved_bytes": None,
    }


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "deepspeed", "transformers", "accelerate", "liger-kernel", "triton"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    import torch

    out["cuda"] = str(torch.version.cuda)
    return out


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"


def no_decay_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """bigtrain's parameter groups: no decay on norms (1-D) and embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embed_tokens" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --- workers (each runs in its own process) -------------------------------------------------------------------


def run_bigtrain(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    out = work / "bigtrain_run"
    overrides = [
        f"output_dir={out}",
        f"init_from={spec['init']}",
        f"data.token_dir={spec['tokens']}",
        f"data.seq_len={spec['seq_len']}",
        "data.eval_fraction=0.0",
        "data.eval_files=[]",
        f"data.seed={spec['data_seed']}",
        f"train.max_steps={spec['total_steps']}",
        f"train.micro_batch_size={spec['micro_batch']}",
        f"train.global_batch_size={spec['global_batch']}",
        f"train.lr={spec['lr']}",
        "train.schedule=constant",
        "train.warmup_steps=0",
        f"train.weight_decay={spec['weight_decay']}",
        f"train.precision={spec['precision']}",
        "train.log_every=1",
        "train.eval_every=0",
        "train.save_every=0",
        "train.export=false",
        "train.progress=false",
        *spec["bigtrain_overrides"],
    ]
    cmd = [*spec["python"], str(REPO / "bigtrain" / "train.py"), *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise RuntimeError(f"bigtrain exited {proc.returncode}: {' '.join(cmd)}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in records if "step_time_s" in r]
    info = json.loads((out / "run.json").read_text())
    chosen = {k: info[k] for k in ("zero_stage", "precision", "peak_device") if k in info}
    chosen |= {k: v for k, v in info.items() if k.startswith(("kernels", "loss", "compile", "fast_path"))}
    return {
        "losses": [r["loss"] for r in steps],
        "step_times_s": [r["step_time_s"] for r in steps],
        "memory": {
            "peak_allocated_bytes": info["memory"]["peak_bytes"],
            "peak_reserved_bytes": info["memory"].get("peak_reserved_bytes"),
        },
        "params": info["params_total"],
        "settings": chosen,
    }


def hf_ds_config(stage: int) -> dict[str, Any]:
    """transformers' documented DeepSpeed config (docs: DeepSpeed integration), "auto" everywhere it allows,
    without its `optimizer` block: with one, DeepSpeed's optimizer gets every parameter in one group
    (weight decay on norms and embeddings too); without, the Trainer builds its own optimizer from
    its parameter groups, which `SameGroupsTrainer` makes bigtrain's (the docs' "HF optimizer" case)."""
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero |= {
            "sub_group_size": 1e9,
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": 1e9,
            "stage3_max_reuse_distance": 1e9,
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    elif stage == 2:
        zero |= {"allgather_partitions": True, "allgather_bucket_size": 2e8, "reduce_scatter": True}
    return {
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


def run_hf(spec: dict[str, Any], work: Path, liger: bool) -> dict[str, Any]:
    import torch
    from transformers import LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    # one process as the transformers docs show for a notebook: the distributed env by hand
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    from bigtrain.train.distributed import free_port, skip_shm_allreduce

    os.environ.setdefault("MASTER_PORT", str(free_port()))
    skip_shm_allreduce()  # as bigtrain's ranks do: DeepSpeed's inference-only shm op, a JIT build, unused here
    accum = spec["global_batch"] // spec["micro_batch"]
    args = TrainingArguments(  # before from_pretrained: under ZeRO-3 the model is then built partitioned
        output_dir=str(work / "hf_run"),
        per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=accum,
        max_steps=spec["total_steps"],
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=spec["weight_decay"],
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        bf16=spec["precision"] == "bf16",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        seed=0,
        deepspeed=hf_ds_config(spec["peer_zero_stage"]),
        use_liger_kernel=liger,
        use_cpu=not torch.cuda.is_available(),
    )
    model = LlamaForCausalLM.from_pretrained(spec["init"], attn_implementation="sdpa", dtype=torch.float32)

    class Rows(torch.utils.data.Dataset):
        """Sequences in the order the trainer consumes them: step 0's micro batches, then step 1's, ..."""

        def __init__(self) -> None:
            self.rows = [row for s in range(spec["total_steps"]) for b in step_batches(spec, s) for row in b]

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": self.rows[i], "labels": self.rows[i]}

    losses: list[float] = []
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            sync()
            ends.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            sync()
            ends.append(time.perf_counter())

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict | None = None, **k: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class SameGroupsTrainer(Trainer):
        """The Trainer's parameter groups made bigtrain's: its own rule leaves the norms undecayed; the
        embeddings (tied to the head here) are left out as well, so every runner trains the same thing."""

        def get_decay_parameter_names(self, model: Any) -> list[str]:
            return [n for n in super().get_decay_parameter_names(model) if "embed_tokens" not in n]

    trainer = SameGroupsTrainer(model=model, args=args, train_dataset=Rows(), callbacks=[Clock()])
    trainer.train()
    # as the Trainer groups them: named_parameters() names a tied head once, as model.embed_tokens
    decay_names = set(trainer.get_decay_parameter_names(model))
    decayed = [n for n, _ in model.named_parameters() if n in decay_names]
    optim = getattr(args.optim, "value", args.optim)
    return {
        "losses": losses,
        "step_times_s": [b - a for a, b in itertools.pairwise(ends)],
        "memory": memory(),
        "params": sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters()),
        "settings": {
            "zero_stage": spec["peer_zero_stage"],
            "use_liger_kernel": liger,
            "optimizer": f"Trainer's {optim} (no DeepSpeed optimizer block: the Trainer's parameter groups)",
            "decayed_tensors": decayed,
        },
    }


def run_torch(spec: dict[str, Any], compiled: bool) -> dict[str, Any]:
    import torch
    from transformers import LlamaForCausalLM

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = LlamaForCausalLM.from_pretrained(spec["init"], attn_implementation="sdpa", dtype=torch.float32).to(device)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    groups = no_decay_groups(model, spec["weight_decay"])
    try:
        opt = torch.optim.AdamW(groups, lr=spec["lr"], betas=(0.9, 0.95), eps=1e-8, fused=True)
        fused = True
    except (RuntimeError, ValueError):  # no fused kernel for this device/dtype
        opt = torch.optim.AdamW(groups, lr=spec["lr"], betas=(0.9, 0.95), eps=1e-8)
        fused = False
    step_model = torch.compile(model) if compiled else model
    bf16 = spec["precision"] == "bf16"
    losses, times = [], []
    sync()
    last = time.perf_counter()
    for step in range(spec["total_steps"]):
        micro = step_batches(spec, step)
        total = torch.zeros((), device=device)
        for batch in micro:
            batch = batch.to(device, non_blocking=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = step_model(input_ids=batch, labels=batch).loss
            (loss / len(micro)).backward()
            total += loss.detach().float()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(total) / len(micro))  # the read-back is the step's sync
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return {
        "losses": losses,
        "step_times_s": times,
        "memory": memory(),
        "params": params,
        "settings": {
            "fused_adamw": fused,
            "compiled": compiled,
            "weights": "fp32" + (" + autocast bf16" if bf16 else ""),
        },
    }


def worker(name: str, spec_path: Path, result_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    work = spec_path.parent
    if name == "bigtrain":
        result = run_bigtrain(spec, work)
    elif name in ("hf_deepspeed", "hf_deepspeed_liger"):
        result = run_hf(spec, work, liger=name.endswith("liger"))
    else:
        result = run_torch(spec, compiled=name == "torch_compile")
    result |= {"versions": versions(), "device": device_name()}
    result_path.write_text(json.dumps(result, indent=2))


# --- orchestration ------------------------------------------------------------------------------------------


def skip_reason(name: str) -> str | None:
    import importlib.util

    import torch

    if name == "hf_deepspeed_liger":
        if not torch.cuda.is_available():
            return "liger-kernel needs CUDA (Triton)"
        if importlib.util.find_spec("liger_kernel") is None:
            return "liger-kernel is not installed"
    return None


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarise(
    name: str, raw: dict[str, Any], spec: dict[str, Any], flops: dict[str, float], peak: Any
) -> dict[str, Any]:
    from bigtrain.train.metrics import mfu

    timed = raw["step_times_s"][spec["warmup"] :]
    median = statistics.median(timed) if timed else float("nan")
    tokens_per_s = spec["global_batch"] * spec["seq_len"] / median if timed else float("nan")
    return {
        "runner": name,
        "device": raw["device"],
        "versions": raw["versions"],
        "params": raw["params"],
        "settings": raw["settings"],
        "timed_steps": len(timed),
        "step_s_median": median,
        "step_s_p10": percentile(timed, 0.1) if timed else None,
        "step_s_p90": percentile(timed, 0.9) if timed else None,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(flops["bigtrain"], tokens_per_s, peak.tflops if peak else None, 1),
        "mfu_palm": mfu(flops["palm"], tokens_per_s, peak.tflops if peak else None, 1),
        "memory": raw["memory"],
        "losses": raw["losses"],
    }


def loss_check(rows: list[dict[str, Any]], vocab: int, precision: str) -> dict[str, Any]:
    """First losses near ln(vocab); every runner's per-step loss within tolerance of the first runner's."""
    tol = 1e-3 if precision == "fp32" else 5e-2
    ref = rows[0]
    worst = 0.0
    for r in rows[1:]:
        diffs = [abs(a - b) for a, b in zip(r["losses"], ref["losses"])]
        r["max_loss_diff_vs_" + ref["runner"]] = max(diffs) if diffs else None
        worst = max([worst, *diffs])
    starts = {r["runner"]: r["losses"][0] for r in rows if r["losses"]}
    near = all(abs(v - math.log(vocab)) < 0.5 for v in starts.values())
    same_length = all(len(r["losses"]) == len(ref["losses"]) for r in rows)
    return {
        "ln_vocab": math.log(vocab),
        "first_losses": starts,
        "max_abs_diff": worst,
        "tolerance": tol,
        "ok": near and same_length and worst <= tol,
    }


def markdown(result: dict[str, Any]) -> str:
    gib = 2**30
    lines = [
        f"preset `{result['preset']}`, {result['device']}, {result['params']:,} parameters, seq {result['seq_len']}, "
        f"global batch {result['global_batch']} (micro {result['micro_batch']}), {result['precision']}, "
        f"{result['timed_steps']} timed steps after {result['warmup']} warm-up; FLOPs/token "
        f"{result['flops_per_token']['bigtrain'] / 1e9:.3g}G (bigtrain) / {result['flops_per_token']['palm'] / 1e9:.3g}G (PaLM); "
        f"peak {result['peak_tflops'] or 'unknown'} TFLOP/s",
        "",
        "| runner | step s median (p10-p90) | tokens/s | vs bigtrain | MFU | MFU PaLM | peak alloc GiB | peak reserved GiB | loss first / last |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = next((r["tokens_per_s"] for r in result["runs"] if r["runner"] == "bigtrain"), None)

    def pct(v: float | None) -> str:
        return f"{100 * v:.1f}%" if v is not None else "-"

    for r in result["runs"]:
        mem = r["memory"]
        res = f"{mem['peak_reserved_bytes'] / gib:.2f}" if mem.get("peak_reserved_bytes") else "-"
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {r['runner']} | {r['step_s_median']:.3f} ({r['step_s_p10']:.3f}-{r['step_s_p90']:.3f}) | "
            f"{r['tokens_per_s']:.0f} | {ratio} | {pct(r['mfu'])} | {pct(r['mfu_palm'])} | "
            f"{mem['peak_allocated_bytes'] / gib:.2f} | {res} | {r['losses'][0]:.4f} / {r['losses'][-1]:.4f} |"
        )
    for name, why in result["skipped"].items():
        lines.append(f"| {name} | skipped: {why} | | | | | | | |")
    c = result["loss_check"]
    lines += [
        "",
        f"loss check: {'ok' if c['ok'] else 'MISMATCH'} (ln vocab {c['ln_vocab']:.4f}; largest per-step difference "
        f"{c['max_abs_diff']:.2e}, tolerance {c['tolerance']:.0e})",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    p.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated subset of {','.join(RUNNERS)}")
    p.add_argument(
        "--peer-zero-stage", type=int, choices=(0, 1, 2, 3), default=3, help="ZeRO stage of the HF Trainer peer"
    )
    p.add_argument("--micro-batch", type=int, default=None, help="override the preset's micro batch")
    p.add_argument("--global-batch", type=int, default=None, help="override the preset's global batch")
    p.add_argument("--bigtrain", action="append", default=[], metavar="KEY=VALUE", help="extra bigtrain override")
    p.add_argument("--out", type=Path, default=None, help="where peers.json / peers.md go (default: a temp dir)")
    p.add_argument("--work", type=Path, default=None, help="scratch dir (weights, tokens, runs); default: temp")
    p.add_argument(
        "--python", default=sys.executable, help="the command that starts each runner's process (default: this Python)"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.spec, args.result)
        return 0

    import torch

    from bigtrain.model.configuration import BigTrainConfig
    from bigtrain.model.counting import palm_flops_per_token, total_params, train_flops_per_token
    from bigtrain.train.metrics import detect_peak

    runners = [r for r in args.runners.split(",") if r]
    unknown = [r for r in runners if r not in RUNNERS]
    if unknown:
        print(f"error: --runners: unknown runner {unknown[0]!r} (known: {', '.join(RUNNERS)})", file=sys.stderr)
        return 2
    if args.steps < 1 or args.warmup < 0:
        print(
            f"error: --steps {args.steps} / --warmup {args.warmup}: need >= 1 timed step, >= 0 warm-up", file=sys.stderr
        )
        return 2
    ps = PRESETS[args.preset]
    micro, gbs = args.micro_batch or ps.micro_batch, args.global_batch or ps.global_batch
    if gbs % micro:
        print(f"error: --global-batch {gbs} is not a multiple of the micro batch {micro}", file=sys.stderr)
        return 2
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_peers_")
        args.work = Path(tmp.name)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = (args.out or work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    make_init(ps, work / "init")
    make_tokens(ps, work / "tokens")
    cfg = BigTrainConfig.from_llama_config(llama_config(ps))
    flops = {"bigtrain": train_flops_per_token(cfg, ps.seq_len), "palm": palm_flops_per_token(cfg, ps.seq_len)}
    peak = detect_peak()
    spec = {
        "init": str(work / "init"),
        "tokens": str(work / "tokens"),
        "seq_len": ps.seq_len,
        "micro_batch": micro,
        "global_batch": gbs,
        "total_steps": args.warmup + args.steps,
        "warmup": args.warmup,
        "lr": ps.lr,
        "weight_decay": 0.1,
        "data_seed": 1234,
        "precision": "bf16" if torch.cuda.is_available() else "fp32",
        "peer_zero_stage": args.peer_zero_stage,
        "bigtrain_overrides": args.bigtrain,
        "python": shlex.split(args.python),
    }
    (work / "spec.json").write_text(json.dumps(spec, indent=2))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}  # the runners find bigtrain as this script does
    rows, skipped, failed = [], {}, {}

    def report() -> dict:
        """peers.json and peers.md from the runners finished so far: a killed session keeps them."""
        result = {
            "preset": args.preset,
            "preset_shape": asdict(ps),
            "device": rows[0]["device"] if rows else device_name(),
            "params": total_params(cfg),
            "seq_len": ps.seq_len,
            "micro_batch": micro,
            "global_batch": gbs,
            "precision": spec["precision"],
            "warmup": args.warmup,
            "timed_steps": args.steps,
            "flops_per_token": flops,
            "peak_tflops": peak.tflops if peak else None,
            "peak_device": peak.device if peak else None,
            "load_average": os.getloadavg(),
            "runs": rows,
            "skipped": skipped | {k: f"failed: {v}" for k, v in failed.items()},
            "loss_check": loss_check(rows, ps.vocab, spec["precision"]) if rows else {"ok": False},
        }
        (out / "peers.json").write_text(json.dumps(result, indent=2))
        (out / "peers.md").write_text(markdown(result) if rows else "no runner finished\n")
        return result

    for name in runners:
        why = skip_reason(name)
        if why:
            skipped[name] = why
            continue
        result_path = work / f"result_{name}.json"
        print(f"bench_peers: {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        cmd = [
            *spec["python"],
            __file__,
            "--worker",
            name,
            "--spec",
            str(work / "spec.json"),
            "--result",
            str(result_path),
        ]
        proc = subprocess.run(cmd, cwd=REPO, env=env)
        if proc.returncode != 0 or not result_path.exists():
            failed[name] = f"exit {proc.returncode}"
            print(f"bench_peers: {name} failed (exit {proc.returncode})", file=sys.stderr)
            report()
            continue
        row = summarise(name, json.loads(result_path.read_text()), spec, flops, peak)
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        report()
    result = report()
    print((out / "peers.md").read_text())
    if tmp is not None:
        tmp.cleanup()
    return 0 if rows and not failed and result["loss_check"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
