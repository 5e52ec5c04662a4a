"""Launched by test_fast_path.py under `deepspeed --num_gpus 2`: one batch through two engines built from the
same weights, ZeRO-3 with the fast path (leaf decoder layers, chunked loss reading the tied head as an external
parameter) and stage 0 with the plain loss; rank 0 writes both losses and the largest gradient difference."""

from __future__ import annotations

import json
import sys

import deepspeed
import torch
from deepspeed.utils import safe_get_full_grad
from deepspeed.utils.z3_leaf_module import z3_leaf_module

from bigtrain.config import Recipe
from bigtrain.model import BigTrainForCausalLM
from bigtrain.train.build import weight_decay_groups
from bigtrain.train.distributed import init_distributed
from bigtrain.train.fast_path import decoder_layers, plan_engine, prepare_model
from bigtrain.train.weights import initialize_weights


def one_step(world, tokens: torch.Tensor, zero_stage: int, loss: str, template: str) -> dict:
    recipe = Recipe.model_validate(
        {
            "model": {"hidden_size": 64, "num_layers": 2, "head_dim": 16, "num_heads": 4, "num_kv_heads": 2},
            "train": {
                "zero_stage": zero_stage,
                "loss": loss,
                "micro_batch_size": 1,
                "precision": "fp32",
                "ds_config": template,
            },
        }
    )
    recipe.model.tie_embeddings = True
    model_cfg = recipe.model.build_config(32000)
    ds_config, _ = plan_engine(recipe, world.size, model_cfg)
    stage = ds_config["zero_optimization"]["stage"]
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=stage == 3):
        model = BigTrainForCausalLM(model_cfg)
    initialize_weights(model, 1234, world.rank)
    prepare_model(model, recipe, zero3=stage == 3)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=weight_decay_groups(model, 0.1), config=ds_config)
    batch = tokens[world.rank : world.rank + 1].to(engine.device)
    out = engine(input_ids=batch, labels=batch).loss
    engine.backward(out)
    grads = {n: safe_get_full_grad(p) for n, p in engine.module.named_parameters()}
    loss = out.detach().clone()
    torch.distributed.all_reduce(loss)
    return {
        "stage": stage,
        "loss": loss.item() / world.size,
        "grads": grads,
        "leaf_layers": sum(z3_leaf_module(layer) for layer in decoder_layers(engine.module)),
    }


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    tokens_file, out_file = args[0], args[1]
    template = args[2] if len(args) > 2 else "zero3"  # a DeepSpeed JSON template (default: the built-in)
    world = init_distributed()
    tokens = torch.load(tokens_file)
    fast = one_step(world, tokens, 3, "chunked", template)
    plain = one_step(world, tokens, 0, "plain", template)
    diffs = [
        (fast["grads"][n] - plain["grads"][n]).abs().max().item()
        for n in plain["grads"]
        if fast["grads"].get(n) is not None and plain["grads"][n] is not None
    ]
    if world.rank == 0:
        result = {
            "zero3_stage": fast["stage"],
            "stage0_stage": plain["stage"],
            "zero3_loss": fast["loss"],
            "stage0_loss": plain["loss"],
            "leaf_layers": fast["leaf_layers"],
            "params": len(plain["grads"]),
            "grads_compared": len(diffs),
            "max_grad_diff": max(diffs),
        }
        with open(out_file, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
