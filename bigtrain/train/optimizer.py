"""Which Adam runs. The built-in DeepSpeed templates ask for DeepSpeed's `AdamW`, which on CUDA is FusedAdam:
a CUDA extension JIT-built with nvcc and ninja at the first `deepspeed.initialize` (minutes on a fresh
machine, a crash where no CUDA toolkit is installed). When it cannot be built here, the config asks for
torch's AdamW instead (`torch_adam`, with `fused=True` on CUDA: one kernel per step, as FusedAdam); the
update rule is the same decoupled weight decay. `BIGTRAIN_TORCH_ADAM=1` asks for torch's AdamW whatever the
machine has (skips the build). Off CUDA, DeepSpeed's own choice is kept. run.json records what ran
(`optimizer`) and why (`optimizer_reason`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

ADAM_TYPES = ("adam", "adamw")
FORCE_ENV = "BIGTRAIN_TORCH_ADAM"


def fused_adam_problem() -> str | None:
    """Why DeepSpeed's FusedAdam cannot be loaded on this machine; None when it can (or off CUDA)."""
    if not torch.cuda.is_available():
        return None
    from deepspeed.git_version_info import installed_ops

    if installed_ops.get("fused_adam"):
        return None  # built into the installed DeepSpeed: nothing to compile
    from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available

    if CUDA_HOME is None or not (Path(CUDA_HOME) / "bin" / "nvcc").is_file():
        return "no nvcc to build DeepSpeed's FusedAdam (CUDA_HOME unset or without bin/nvcc)"
    if not is_ninja_available():
        return "no ninja to build DeepSpeed's FusedAdam"
    try:  # the JIT build deepspeed.initialize would do, done now so that a failure can fall back
        from deepspeed.accelerator import get_accelerator

        get_accelerator().create_op_builder("FusedAdamBuilder").load(verbose=False)
    except Exception as e:  # a compiler error of any kind: fall back rather than crash
        return f"DeepSpeed's FusedAdam failed to build ({type(e).__name__}: {str(e)[:200]})"
    return None


def choose_optimizer(ds_config: dict[str, Any], problem: str | None = None) -> str:
    """Switch `ds_config`'s Adam to torch's AdamW when FusedAdam cannot run; returns why (run.json).
    `problem`: fused_adam_problem()'s answer (computed here when None and needed)."""
    opt = ds_config.get("optimizer")
    if not opt or str(opt.get("type", "")).lower() not in ADAM_TYPES:
        return "the DeepSpeed config's optimizer"
    params = opt.setdefault("params", {})
    if params.get("torch_adam"):
        return "the DeepSpeed config asks for torch_adam"
    if ds_config.get("zero_optimization", {}).get("offload_optimizer"):
        return "optimizer offload: DeepSpeed's CPU Adam"
    if os.environ.get(FORCE_ENV) == "1":
        problem = f"{FORCE_ENV}=1"
    elif problem is None:
        problem = fused_adam_problem()
    if problem is None:
        return "DeepSpeed's choice (FusedAdam on CUDA)" if torch.cuda.is_available() else "DeepSpeed's choice (no CUDA)"
    params["torch_adam"] = True
    if torch.cuda.is_available():
        params["fused"] = True
    return f"torch.optim.AdamW{' (fused)' if params.get('fused') else ''}: {problem}"


def optimizer_name(engine: Any) -> str:
    """The Adam the engine steps with, e.g. deepspeed.ops.adam.fused_adam.FusedAdam, torch.optim.adamw.AdamW."""
    basic = getattr(engine, "basic_optimizer", None) or getattr(engine, "optimizer", None)
    if basic is None:
        return "none"
    name = f"{type(basic).__module__}.{type(basic).__qualname__}"
    fused = getattr(basic, "defaults", {}).get("fused")
    return f"{name} (fused)" if fused else name


def undo_initial_adam_step(engine: Any) -> str | None:
    """Undo the Adam step DeepSpeed takes on zero gradients inside `deepspeed.initialize`; returns what it
    undid (run.json), None where there was none.

    FP16_Optimizer and FP16_UnfusedOptimizer (fp16, or bf16 at ZeRO stage 0) call the inner Adam once with
    zero gradients to create its state. That call counts as Adam's step 1, so the first real update uses
    step 2's bias corrections (0.73x AdamW's first update at betas 0.9/0.95), and it applies the weight
    decay once at the peak LR (the schedule is attached after it). ZeRO stages 1-3 and BF16_Optimizer
    create their state lazily (DeepSpeed 0.19): nothing to undo. The fp32 master copy is reset from the
    low-precision weights it was made from (exact: nothing else has touched them) and Adam's state is
    dropped, so that the first real step creates it as torch's AdamW does."""
    from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    opt = engine.optimizer
    if isinstance(opt, FP16_Optimizer):  # flat fp32 master groups over flat low-precision groups
        pairs = list(zip(opt.fp32_groups_flat, opt.fp16_groups_flat, strict=True))
    elif isinstance(opt, FP16_UnfusedOptimizer):  # one fp32 master tensor per weight
        pairs = [pq for g32, g16 in zip(opt.fp32_groups, opt.fp16_groups, strict=True) for pq in zip(g32, g16)]
    else:
        return None
    basic = engine.basic_optimizer
    steps = {int(s["step"]) for s in basic.state.values() if "step" in s}
    if not steps - {0}:
        return None  # no step was taken (a DeepSpeed that creates the state lazily here too)
    with torch.no_grad():
        for master, weights in pairs:
            master.copy_(weights)
    basic.state.clear()
    for group in basic.param_groups:
        group.pop("step", None)
    return f"{type(opt).__name__}'s zero-gradient Adam step at deepspeed.initialize"
