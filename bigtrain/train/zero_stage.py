"""`train.zero_stage: auto`: the fastest ZeRO stage whose model states fit the device.

DeepSpeed ranks speed 0 > 1 > 2 > 3: every stage above 0 adds communication, and stage 3 gathers every
weight twice per step. On one GPU ZeRO partitions nothing, so a model that fits runs at stage 0 (fp32, fp16)
or stage 1 (bf16). bf16 never gets stage 0: DeepSpeed 0.19 runs bf16 at stage 0 through FP16_Optimizer, which
sums micro-batch gradients in bf16 (`grad_accum_dtype: fp32` is refused there); stage 1 with
`data_types.grad_accum_dtype: fp32` (ds_config.py sets it) selects BF16_Optimizer, which sums them in an fp32
buffer of the whole model, for the cost of that buffer. The model states per GPU at each stage and dtype are
`state_bytes.widths` (the table in state_bytes.py, checked against DeepSpeed's allocations), e.g. bf16 with N
GPUs, per parameter: stage 1: 2 + (2 + 4) + 12/N, 2: 2 + (4 + 12)/N, 3: (2 + 4 + 12)/N. A stage fits when its
states take at most STATE_SHARE of the device memory; the rest is for activations, the logits slice and
allocator slack.
"""

from __future__ import annotations

import os
import re

import torch

from bigtrain.config import Recipe
from bigtrain.train.ds_config import load_template, resolve_precision
from bigtrain.train.state_bytes import widths

STATE_SHARE = 0.5
AUTO_TEMPLATES = ("zero3", "zero2")  # built-in templates whose stage `auto` may change


def model_state_bytes(params: int, stage: int, world_size: int, precision: str) -> int:
    """Per-GPU model states of `params` trainable parameters (state_bytes.widths, the accounting the
    planner and run.json use; here without per-tensor padding)."""
    w, n = widths(stage, precision), world_size
    per_param = (
        w.weight / (n if w.weight_split else 1)
        + w.grad_full
        + w.grad_split / n
        + w.optimizer / (n if w.optimizer_split else 1)
    )
    return int(params * per_param)


def auto_stages(precision: str) -> tuple[int, ...]:
    """The stages `auto` tries, fastest first: bf16 skips stage 0 (gradients summed in bf16)."""
    return (1, 2, 3) if precision == "bf16" else (0, 1, 2, 3)


def device_memory_bytes() -> int | None:
    return (
        torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        if torch.cuda.is_available()
        else None
    )


def local_world_size(world_size: int) -> int | None:
    """GPUs per node: the launcher's LOCAL_WORLD_SIZE, Slurm's tasks per node, else this node's GPU count."""
    for var in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        m = re.match(r"\d+", os.environ.get(var, ""))
        if m:
            return int(m.group())
    return min(world_size, torch.cuda.device_count()) if torch.cuda.is_available() else None


def choose_zero_stage(
    recipe: Recipe, world_size: int, params: int, device_bytes: int | None, resumed_stage: int | None = None
) -> tuple[int, str]:
    """(stage, why): what run.json records as zero_stage and zero_stage_reason."""
    t = recipe.train
    if t.zero_stage != "auto":
        return int(t.zero_stage), f"train.zero_stage: {t.zero_stage}"
    template = load_template(t.ds_config)
    template_stage = int(template.get("zero_optimization", {}).get("stage", 0))
    if resumed_stage is not None:
        return resumed_stage, f"resumed: the checkpoint was saved at stage {resumed_stage}"
    if t.ds_config not in AUTO_TEMPLATES:
        return template_stage, f"train.ds_config {t.ds_config!r} sets stage {template_stage}"
    if device_bytes is None:
        return template_stage, f"no CUDA device: the {t.ds_config} template's stage {template_stage}"
    precision = resolve_precision(recipe)
    budget = STATE_SHARE * device_bytes
    gib = 2**30
    for stage in auto_stages(precision):
        need = model_state_bytes(params, stage, world_size, precision)
        if need <= budget:
            bf16 = precision == "bf16" and stage == 1
            why_not_0 = " (bf16: stage 1 at least, for fp32 master weights and fp32 gradient sums)" if bf16 else ""
            return stage, (
                f"fastest stage whose model states fit: {need / gib:.1f} GiB per GPU at stage {stage} "
                f"<= {STATE_SHARE:.0%} of {device_bytes / gib:.1f} GiB, {world_size} GPU(s){why_not_0}"
            )
    need = model_state_bytes(params, 3, world_size, precision)
    return 3, f"model states need {need / gib:.1f} GiB per GPU even at stage 3 (of {device_bytes / gib:.1f} GiB)"
