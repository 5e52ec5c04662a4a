"""What the trainer sets up around the model for speed: the ZeRO stage and DeepSpeed config, the kernels,
the loss, torch.compile and activation checkpointing. Each is a `train` option (docs/performance.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from bigtrain.config import Recipe, TrainConfig
from bigtrain.errors import BigtrainError
from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.counting import layer_params, total_params
from bigtrain.model.kernels import resolve_kernels
from bigtrain.model.loss import resolve_loss
from bigtrain.model.modeling import BigTrainForCausalLM, DecoderLayer, RotaryEmbedding
from bigtrain.train.ds_config import build_ds_config
from bigtrain.train.optimizer import choose_optimizer
from bigtrain.train.zero_stage import choose_zero_stage, device_memory_bytes, local_world_size


def resumed_zero_stage(output_dir: Path, resuming: bool) -> int | None:
    """A checkpoint loads only into the stage that saved it: run.json says which."""
    run_json = output_dir / "run.json"
    if not resuming or not run_json.is_file():
        return None
    stage = json.loads(run_json.read_text()).get("zero_stage")
    return int(stage) if stage is not None else None


def plan_engine(
    recipe: Recipe, world_size: int, model_cfg: BigTrainConfig, resumed_stage: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(DeepSpeed config, what run.json records about the choice)."""
    stage, why = choose_zero_stage(recipe, world_size, total_params(model_cfg), device_memory_bytes(), resumed_stage)
    biggest_layer = max((layer_params(model_cfg, i) for i in range(model_cfg.num_hidden_layers)), default=0)
    ds_config = build_ds_config(
        recipe,
        world_size,
        model_cfg.hidden_size,
        zero_stage=stage,
        layer_params=biggest_layer,
        local_world_size=local_world_size(world_size),
    )
    optimizer_reason = choose_optimizer(ds_config)  # torch's AdamW where FusedAdam cannot be built
    return ds_config, {"zero_stage": stage, "zero_stage_reason": why, "optimizer_reason": optimizer_reason}


def decoder_layers(model: torch.nn.Module) -> list[DecoderLayer]:
    return [m for m in model.modules() if isinstance(m, DecoderLayer)]


def resolve_fast_path(t: TrainConfig) -> tuple[str, str]:
    """The recipe's `train.kernels` and `train.loss`, resolved (`auto` made concrete); a value that cannot
    run here is one error naming its recipe key."""
    try:
        kernels = resolve_kernels(t.kernels, compiled=t.compile)
    except BigtrainError as e:
        raise BigtrainError(f"train.kernels: {e}") from None
    try:
        loss = resolve_loss(t.loss)
    except BigtrainError as e:
        raise BigtrainError(f"train.loss: {e}") from None
    return kernels, loss


def prepare_model(model: torch.nn.Module, recipe: Recipe, zero3: bool) -> dict[str, Any]:
    """Before deepspeed.initialize (after STEP's LoRA, if any); returns what run.json records."""
    t = recipe.train
    kernels, loss = resolve_fast_path(t)
    lm = next(m for m in model.modules() if isinstance(m, BigTrainForCausalLM))
    lm.select_kernels(kernels)
    lm.select_loss(loss)
    layers = decoder_layers(model)
    if zero3:
        import deepspeed
        from deepspeed.utils import set_z3_leaf_modules

        # one gather per decoder layer instead of one per Linear/norm (and one hook each)
        set_z3_leaf_modules(model, [DecoderLayer])
        if loss != "plain":
            # the loss reads the head weight outside lm_head's forward: gather it with the model's forward
            deepspeed.zero.register_external_parameter(lm, lm.lm_head.weight)
    if t.compile:
        for layer in layers:
            layer.block = torch.compile(layer.block)
    return {"kernels": kernels, "loss": loss, "compile": t.compile}


def restore_fp32_rope(module: torch.nn.Module) -> int:
    """After deepspeed.initialize: RoPE's inv_freq recomputed in fp32 from the config. zero.Init and the
    engine's bf16 cast (`module.bfloat16()` below stage 3) leave it bf16, whose 8-bit mantissa puts the
    angles at position 2047 off by radians, so the trained model would differ from its fp32-RoPE export.
    Returns how many tables it restored."""
    tables = [m for m in module.modules() if isinstance(m, RotaryEmbedding)]
    for rope in tables:
        rope.inv_freq = rope.compute_inv_freq().to(rope.inv_freq.device)
    return len(tables)
