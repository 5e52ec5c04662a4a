"""`run.json`: what a stage ran with (written at the start) and how it ended (updated at the end)."""

from __future__ import annotations

import time
from typing import Any

import torch

from bigtrain.config import Recipe
from bigtrain.model.counting import palm_flops_per_token, train_flops_per_token
from bigtrain.train import state_bytes
from bigtrain.train.build import Built
from bigtrain.train.checkpoint import TrainState
from bigtrain.train.distributed import World
from bigtrain.train.metrics import detect_peak, peak_memory_bytes, peak_reserved_bytes
from bigtrain.train.optimizer import optimizer_name


def numel(p: torch.nn.Parameter) -> int:
    return int(getattr(p, "ds_numel", p.numel()))


def start_record(
    recipe: Recipe,
    world: World,
    run: Built,
    total_steps: int,
    resumed_from: str | None,
    resume_s: float,
    handover: dict[str, Any] | None,
) -> dict[str, Any]:
    t, params = recipe.train, list(run.engine.module.parameters())
    detected = detect_peak()
    seq = recipe.data.seq_len
    return {
        "params_total": sum(numel(p) for p in params),
        "params_trainable": sum(numel(p) for p in params if p.requires_grad),
        "world_size": world.size,
        "global_batch_size": run.global_batch,
        "gradient_accumulation_steps": run.accum,
        "total_steps": total_steps,
        "start_sequence": recipe.data.start_sequence or 0,  # where in the data order this run began
        "resumed_from": resumed_from,
        "resume_s": resume_s if resumed_from else None,  # incl. a conversion to another world size
        "init_from": recipe.init_from,
        "handover": handover,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "precision": "bf16" if run.ds_config.get("bf16", {}).get("enabled") else "fp32",
        "zero_stage": run.ds_config.get("zero_optimization", {}).get("stage", 0),
        "zero_stage_reason": run.zero_choice["zero_stage_reason"],
        "optimizer": optimizer_name(run.engine),
        "optimizer_reason": run.zero_choice["optimizer_reason"],
        **run.fast_path,
        "flops_per_token": train_flops_per_token(run.model_cfg, seq) + run.step_flops,
        "flops_per_token_palm": palm_flops_per_token(run.model_cfg, seq) + run.step_flops,
        "peak_tflops_per_device": t.peak_tflops or (detected.tflops if detected else None),
        "peak_device": "train.peak_tflops" if t.peak_tflops else (detected.device if detected else None),
        "model_config": run.model_cfg.to_dict(),
    }


def end_record(
    info: dict[str, Any], run: Built, state: TrainState, status: str, final_eval: dict[str, float], started: float
) -> dict[str, Any]:
    memory = state_bytes.per_rank(run.engine, run.optimizer)
    return info | {
        "status": status,
        "step": state.step,
        "tokens": state.tokens,
        "final_eval": final_eval,
        "wall_time_s": time.perf_counter() - started,
        "memory": memory | {"peak_bytes": peak_memory_bytes(), "peak_reserved_bytes": peak_reserved_bytes()},
    }
