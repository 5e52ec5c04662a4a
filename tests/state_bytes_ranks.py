"""Launched by test_state_bytes.py on one rank: for each (precision, ZeRO stage) builds a tiny engine the way
the trainer does, trains two steps of two micro batches, stops after the third step's last backward (where
the gradients are at their peak) and writes every tensor DeepSpeed's optimizer, the parameters and their
gradients hold there, found by walking the optimizer's attributes (not the names state_bytes knows), beside
state_bytes.per_rank's figures at that point and after the step."""

from __future__ import annotations

import json
import sys
from typing import Any

import deepspeed
import torch

from bigtrain.config import Recipe
from bigtrain.model import BigTrainForCausalLM
from bigtrain.train import state_bytes
from bigtrain.train.build import weight_decay_groups
from bigtrain.train.distributed import init_distributed
from bigtrain.train.fast_path import plan_engine, prepare_model


def walk(obj: Any, seen: set[int], depth: int = 0) -> int:
    """Bytes of the tensors under `obj` (lists, tuples, dicts, four levels) not already in `seen`."""
    if isinstance(obj, torch.Tensor):
        if obj.numel() == 0 or obj.device.type == "meta":
            return 0
        key = obj.untyped_storage().data_ptr()
        if key in seen or obj.numel() == 1:  # scalars (norms, overflow flags) are not state
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if depth > 4:
        return 0
    if isinstance(obj, (list, tuple)):
        return sum(walk(v, seen, depth + 1) for v in obj)
    if isinstance(obj, dict):
        return sum(walk(v, seen, depth + 1) for v in obj.values())
    return 0


def held(engine: deepspeed.DeepSpeedEngine) -> dict[str, int]:
    """Everything held, by kind: parameters; gradients (p.grad, p.grad_accum and every optimizer attribute
    with "grad" in its name); optimizer state (the inner optimizer's state and every other attribute)."""
    opt, params = engine.optimizer, list(engine.module.parameters())
    seen: set[int] = set()
    weights = walk([getattr(p, "ds_tensor", p) for p in params], seen)
    attrs = sorted(vars(opt).items())
    grads = walk([p.grad for p in params], seen) + walk([getattr(p, "grad_accum", None) for p in params], seen)
    grads += sum(walk(v, seen) for k, v in attrs if "grad" in k.lower())
    inner = getattr(opt, "optimizer", opt)
    rest = walk([dict(s) for s in inner.state.values()], seen)
    rest += sum(walk(v, seen) for k, v in attrs if "grad" not in k.lower())
    return {"param_bytes": weights, "grad_bytes": grads, "optimizer_state_bytes": rest}


def check(world: Any, precision: str, stage: int) -> dict[str, Any]:
    recipe = Recipe.model_validate(
        {
            "model": {"hidden_size": 64, "num_layers": 2, "head_dim": 16, "num_heads": 4, "num_kv_heads": 2},
            "train": {"zero_stage": stage, "precision": precision, "micro_batch_size": 1, "global_batch_size": 2},
        }
    )
    model_cfg = recipe.model.build_config(512)
    ds_config, _ = plan_engine(recipe, world.size, model_cfg)
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=stage == 3):
        model = BigTrainForCausalLM(model_cfg)
    prepare_model(model, recipe, zero3=stage == 3)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=weight_decay_groups(model, 0.1), config=ds_config)
    accum = engine.gradient_accumulation_steps()
    gen = torch.Generator().manual_seed(0)
    for i in range(3 * accum):
        batch = torch.randint(0, 512, (1, 16), generator=gen)
        engine.backward(engine(input_ids=batch, labels=batch).loss)
        if i == 3 * accum - 1:
            peak, counted = held(engine), state_bytes.per_rank(engine, engine.optimizer)
        engine.step()
    params = list(engine.module.parameters())
    return {
        "optimizer": type(engine.optimizer).__name__,
        "accum": accum,
        "held": peak,
        "per_rank": counted,
        "per_rank_after_step": state_bytes.per_rank(engine, engine.optimizer),
        "numels": [getattr(p, "ds_numel", p.numel()) for p in params],
        "trainable": [p.requires_grad for p in params],
    }


def main() -> None:
    world = init_distributed()
    combos = [("fp32", s) for s in (0, 1, 2, 3)] + [("bf16", s) for s in (0, 1, 2, 3)]
    result = {f"{p}-{s}": check(world, p, s) for p, s in combos}
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
