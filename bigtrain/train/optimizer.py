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
