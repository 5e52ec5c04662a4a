"""Launched by test_optimizer.py on one rank: builds engines the way the trainer does (plan_engine's config,
zero.Init at ZeRO-3, weight-decay groups, the LambdaLR schedule), and per precision and ZeRO stage writes
Adam's step count after deepspeed.initialize, how far initialize moved the fp32 master weights from the init,
and how far one real step lands from torch.optim.AdamW's first step from the same init, gradients, LR,
betas, eps and weight-decay groups (relative to the size of that update)."""

from __future__ import annotations

import json
import sys
from typing import Any

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad
from torch.optim.lr_scheduler import LambdaLR

from bigtrain.config import Recipe
from bigtrain.model import BigTrainForCausalLM
from bigtrain.train.build import weight_decay_groups
from bigtrain.train.distributed import init_distributed
from bigtrain.train.fast_path import plan_engine, prepare_model
from bigtrain.train.optimizer import undo_initial_adam_step
from bigtrain.train.schedule import lr_multiplier
from bigtrain.train.weights import initialize_weights

# (precision, ZeRO stage, torch's AdamW instead of FusedAdam): stage 0 in bf16/fp16 is FP16_Optimizer
# (FusedAdam) or FP16_UnfusedOptimizer (any other Adam), the two that take a zero-gradient step
CASES = (
    ("fp32", 0, False),
    ("fp32", 3, False),
    ("bf16", 0, False),
    ("bf16", 0, True),
    ("bf16", 1, False),
    ("bf16", 3, False),
    ("fp16", 0, False),
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def recipe_for(precision: str, stage: int) -> Recipe:
    # a large LR and no clipping or warm-up, so that a stray weight decay or step count shows
    train = {"zero_stage": stage, "micro_batch_size": 2, "precision": precision, "lr": 1e-2, "weight_decay": 0.1}
    train |= {"warmup_steps": 0, "schedule": "constant", "grad_clip": 0.0}
    model = {"hidden_size": 64, "num_layers": 2, "head_dim": 16, "num_heads": 4, "num_kv_heads": 2}
    return Recipe.model_validate({"model": model, "train": train})


def full_weights(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The init as the engine trains it: rounded to its weight dtype (the fp32 master is made from that)."""
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return {n: p.detach().to(dtype).float().clone() for n, p in model.named_parameters()}


def master_weights(engine: Any) -> dict[str, torch.Tensor]:
    """The fp32 weights the optimizer updates: ZeRO's and BF16_Optimizer's partitions, FP16_Optimizer's and
    FP16_UnfusedOptimizer's master copies, or the parameters themselves (fp32 stage 0)."""
    opt = engine.optimizer
    named = list(engine.module.named_parameters())
    names = {id(p): n for n, p in named}
    out = {}
    if isinstance(opt, FP16_Optimizer):  # flat fp32 groups
        for flat, group in zip(opt.fp32_groups_flat, opt.fp16_groups, strict=True):
            offset = 0
            for p in group:
                out[names[id(p)]] = flat[offset : offset + p.numel()].view_as(p).detach().float().clone()
                offset += p.numel()
        return out
    if isinstance(opt, FP16_UnfusedOptimizer):  # one fp32 tensor per weight
        for g32, g16 in zip(opt.fp32_groups, opt.fp16_groups, strict=True):
            out |= {names[id(p)]: q.detach().float().clone() for q, p in zip(g32, g16, strict=True)}
        return out
    for n, p in named:
        hp = safe_get_full_fp32_param(p)
        out[n] = (hp if hp is not None else p).detach().float().clone()
    return out


def full_grads(engine: Any) -> dict[str, torch.Tensor]:
    """The unscaled gradients the step will use (fp16: divided by the loss scale)."""
    scale = engine.optimizer.loss_scale_config.cur_scale if engine.fp16_enabled() else 1.0
    return {n: safe_get_full_grad(p).detach().float() / scale for n, p in engine.module.named_parameters()}


def adam_steps(engine: Any) -> list[int]:
    """Adam's step count in every group and state (FusedAdam keeps it per state, torch's AdamW too)."""
    basic = engine.basic_optimizer
    steps = [int(g["step"]) for g in basic.param_groups if "step" in g]
    steps += [int(s["step"]) for s in basic.state.values() if "step" in s]
    return steps


def torch_adamw_step(init: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], recipe: Recipe, decay: set[str]):
    t = recipe.train
    params = {n: torch.nn.Parameter(w.clone()) for n, w in init.items()}
    groups = [
        {"params": [params[n] for n in params if n in decay], "weight_decay": t.weight_decay},
        {"params": [params[n] for n in params if n not in decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=t.lr * lr_multiplier(t, 10)(0), betas=t.betas, eps=t.eps, foreach=False)
    for n, p in params.items():
        p.grad = grads[n].clone()
    opt.step()
    return {n: p.detach() for n, p in params.items()}


def largest(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[n].cpu() - b[n].cpu()).abs().max().item() for n in a)


def check(world: Any, precision: str, stage: int, torch_adam: bool, fix: bool) -> dict[str, Any]:
    recipe = recipe_for(precision, stage)
    model_cfg = recipe.model.build_config(512)
    ds_config, _ = plan_engine(recipe, world.size, model_cfg)
    ds_config["optimizer"]["params"]["torch_adam"] = torch_adam
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=stage == 3):
        model = BigTrainForCausalLM(model_cfg)
    initialize_weights(model, 1234, world.rank)
    prepare_model(model, recipe, zero3=stage == 3)
    init = full_weights(model, DTYPES[precision])
    groups = weight_decay_groups(model, recipe.train.weight_decay)
    decay = {n for n, p in model.named_parameters() if any(p is q for q in groups[0]["params"])}
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        config=ds_config,
        lr_scheduler=lambda opt: LambdaLR(opt, lr_multiplier(recipe.train, 10)),
    )
    steps_at_init, moved_at_init = adam_steps(engine), largest(master_weights(engine), init)
    fixed = undo_initial_adam_step(engine) if fix else None
    steps_after_init = adam_steps(engine)
    moved_by_init = largest(master_weights(engine), init)
    torch.manual_seed(0)
    batch = torch.randint(0, 512, (2, 32), device=engine.device)
    engine.backward(engine(input_ids=batch, labels=batch).loss)
    grads = full_grads(engine)
    engine.step()
    after = master_weights(engine)
    reference = torch_adamw_step(init, grads, recipe, decay)
    update = largest(reference, init)
    return {
        "optimizer": type(engine.optimizer).__name__,
        "basic": f"{type(engine.basic_optimizer).__module__}.{type(engine.basic_optimizer).__name__}",
        "fixed": fixed,
        "skipped": bool(getattr(engine.optimizer, "overflow", False)),
        "steps_at_init": sorted(set(steps_at_init)),
        "moved_at_init": moved_at_init,
        "steps_after_init": sorted(set(steps_after_init)),
        "steps_after_step": sorted(set(adam_steps(engine))),
        "moved_by_init": moved_by_init,
        "update": update,
        "diff_from_adamw": largest(after, reference) / update,
    }


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    out, fix = args[0], "--no-fix" not in args
    world = init_distributed()
    # the CPU accelerator reports fp16 only with mkldnn fp16; torch runs this tiny model in fp16 on any CPU,
    # and FP16_Optimizer (the optimizer with the zero-gradient step) is the same code there as on CUDA
    get_accelerator().is_fp16_supported = lambda: True
    result = {}
    for precision, stage, torch_adam in CASES:
        name = f"{precision}-{stage}{'-torch' if torch_adam else ''}"
        try:
            result[name] = check(world, precision, stage, torch_adam, fix)
        except Exception as e:  # reported in the test's assertion, not a crash without the others
            result[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    if world.rank == 0:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
