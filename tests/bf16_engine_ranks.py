"""Launched by test_fast_path.py on one rank: builds a bf16 engine the way the trainer does (plan_engine's
config, zero.Init at ZeRO-3, deepspeed.initialize, then restore_fp32_rope) and writes, per ZeRO stage, RoPE's
inv_freq dtype before and after the restore, its largest difference from the fp32 table, its dtype after a
step, which optimizer DeepSpeed chose, in what dtype it sums micro-batch gradients, and the state bytes."""

from __future__ import annotations

import json
import sys

import deepspeed
import torch

from bigtrain.config import Recipe
from bigtrain.model import BigTrainForCausalLM
from bigtrain.model.modeling import RotaryEmbedding
from bigtrain.train import state_bytes
from bigtrain.train.build import weight_decay_groups
from bigtrain.train.distributed import init_distributed
from bigtrain.train.fast_path import plan_engine, prepare_model, restore_fp32_rope
from bigtrain.train.weights import initialize_weights


def build(world, zero_stage: int) -> tuple[deepspeed.DeepSpeedEngine, dict]:
    recipe = Recipe.model_validate(
        {
            "model": {"hidden_size": 64, "num_layers": 2, "head_dim": 16, "num_heads": 4, "num_kv_heads": 2},
            "train": {"zero_stage": zero_stage, "micro_batch_size": 1, "precision": "bf16"},
        }
    )
    model_cfg = recipe.model.build_config(512)
    ds_config, _ = plan_engine(recipe, world.size, model_cfg)
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=zero_stage == 3):
        model = BigTrainForCausalLM(model_cfg)
    initialize_weights(model, 1234, world.rank)
    prepare_model(model, recipe, zero3=zero_stage == 3)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=weight_decay_groups(model, 0.1), config=ds_config)
    return engine, ds_config


def rope(engine: deepspeed.DeepSpeedEngine) -> RotaryEmbedding:
    return next(m for m in engine.module.modules() if isinstance(m, RotaryEmbedding))


def check(world, zero_stage: int) -> dict:
    engine, ds_config = build(world, zero_stage)
    before = str(rope(engine).inv_freq.dtype)
    restored = restore_fp32_rope(engine.module)
    table = rope(engine)
    after = str(table.inv_freq.dtype)
    max_diff = (table.inv_freq.cpu().double() - table.compute_inv_freq().double()).abs().max().item()
    batch = torch.randint(0, 512, (1, 32), device=engine.device)
    loss = engine(input_ids=batch, labels=batch).loss
    engine.backward(loss)
    engine.step()
    return {
        "bf16": bool(ds_config.get("bf16", {}).get("enabled")),
        "stage": ds_config["zero_optimization"]["stage"],
        "restored": restored,
        "before": before,
        "after": after,
        "after_step": str(rope(engine).inv_freq.dtype),
        "max_diff": max_diff,
        "loss_finite": bool(torch.isfinite(loss.detach().float()).item()),
        "grad_accum_dtype": ds_config.get("data_types", {}).get("grad_accum_dtype"),
        "optimizer": type(engine.optimizer).__name__,
        "accum_buffer_dtype": accum_buffer_dtype(engine.optimizer),
        "memory": state_bytes.per_rank(engine, engine.optimizer),
    }


def accum_buffer_dtype(optimizer: object) -> str | None:
    """Where the engine sums micro-batch gradients: BF16_Optimizer's flat fp32 groups (stage 1), ZeRO-3's
    flat partition buffer; ZeRO-2 frees its partition buffers at the step, so its configured dtype."""
    for attr in ("fp32_groups_gradients_flat", "grad_partitions_flat_buffer", "averaged_gradients"):
        value = getattr(optimizer, attr, None)
        if isinstance(value, dict):
            value = next(iter(value.values()), None)
        if isinstance(value, list):
            value = next((v for v in value if v is not None), None)
            value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, torch.Tensor):
            return str(value.dtype)
    return str(getattr(optimizer, "gradient_accumulation_dtype", None))


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    world = init_distributed()
    result = {str(stage): check(world, stage) for stage in (3, 2, 1)}
    if world.rank == 0:
        with open(args[0], "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
