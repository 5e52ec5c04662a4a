"""Build a stage: its data, its model (initialised or loaded, STEP applied, the fast path prepared) and the
DeepSpeed engine with its optimizer and LR schedule."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deepspeed
import torch
from torch.optim.lr_scheduler import LambdaLR

from bigtrain.ckpt.source import open_checkpoint
from bigtrain.config import Recipe
from bigtrain.data.dataset import RunData, prepare_run_data
from bigtrain.data.prepare import check_vocab
from bigtrain.errors import BigtrainError
from bigtrain.model import BigTrainConfig, BigTrainForCausalLM
from bigtrain.train.checkpoint import TrainState
from bigtrain.train.distributed import World, broadcast_object
from bigtrain.train.fast_path import plan_engine, prepare_model, restore_fp32_rope, resumed_zero_stage
from bigtrain.train.model_config import resolve_model_config
from bigtrain.train.optimizer import undo_initial_adam_step
from bigtrain.train.schedule import lr_multiplier
from bigtrain.train.weights import initialize_weights, load_weights


@dataclass
class Built:
    """What a stage trains with."""

    data: RunData
    model_cfg: BigTrainConfig
    engine: Any
    optimizer: Any
    ds_config: dict[str, Any]
    zero_choice: dict[str, Any]
    fast_path: dict[str, Any]  # what prepare_model chose (run.json)
    global_batch: int
    accum: int
    step_flops: float  # STEP's change to the FLOPs per token (frozen weights, LoRA factors)
    block_transform: Callable[..., Any] | None  # STEP: folds LoRA into a block at export

    @property
    def zero3(self) -> bool:
        return self.ds_config.get("zero_optimization", {}).get("stage", 0) == 3


def on_main_first(world: World, work: Any) -> Any:
    """Run `work` on rank 0, then on the others (cached results); rank 0's error stops every rank."""
    error = None
    result = None
    if world.is_main:
        try:
            result = work()
        except BigtrainError as e:
            error = str(e)
    error = broadcast_object(error)
    if error:
        raise BigtrainError(error)
    return result if world.is_main else work()


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No decay on norms (1-D) and embeddings, the usual LLaMA practice."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_vector = len(getattr(p, "ds_shape", p.shape)) < 2
        (no_decay if is_vector or "embed_tokens" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def moe_leaf_modules(model: torch.nn.Module) -> None:
    """ZeRO-3 gathers a leaf module's parameters all at once, in its own forward hook, and none of its
    submodules' hooks fire: the MoE block's experts are fetched together whichever of them a rank's tokens
    reach, so ranks whose routing differs still run the same gathers (DeepSpeed's way for Mixtral)."""
    from deepspeed.utils import set_z3_leaf_modules

    from bigtrain.model.moe import MoEFeedForward

    set_z3_leaf_modules(model, [MoEFeedForward])


def build(recipe: Recipe, world: World, saved: TrainState | None, resuming: bool, total_steps: int) -> Built:
    out, t = Path(recipe.output_dir), recipe.train
    cache = Path(recipe.data.cache_dir or out / "data")
    data: RunData = on_main_first(world, lambda: prepare_run_data(recipe.data, cache, saved.data if saved else None))
    model_cfg = resolve_model_config(recipe, data.vocab_size)
    check_vocab(data.train.file, model_cfg.vocab_size)
    ds_config, zero_choice = plan_engine(recipe, world.size, model_cfg, resumed_zero_stage(out, resuming))
    zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=zero3):
        model = BigTrainForCausalLM(model_cfg)
    if recipe.init_from:
        load_weights(model, open_checkpoint(recipe.init_from), world.rank)
    else:
        initialize_weights(model, t.seed, world.rank)
    if t.activation_checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=t.checkpoint_every_n_layers
        )
    block_transform, step_flops = None, 0.0
    if recipe.step is not None:  # a STEP stage: inherited layers frozen + LoRA, folded back at export
        from bigtrain.train.step_lora import apply_step, merge_block, step_flops_change  # peft: STEP stages only

        model = apply_step(model, recipe.step, recipe.init_from)
        block_transform = functools.partial(merge_block, scale=recipe.step.scale)
        step_flops = step_flops_change(model)
    if zero3 and model_cfg.is_moe:
        moe_leaf_modules(model)
    fast_path = prepare_model(model, recipe, zero3)
    gbs, accum = recipe.global_batch(world.size)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=weight_decay_groups(model, t.weight_decay),
        config=ds_config,
        lr_scheduler=lambda opt: LambdaLR(opt, lr_multiplier(t, total_steps)),
    )
    restore_fp32_rope(engine.module)  # zero.Init made the RoPE frequencies bf16
    undone = undo_initial_adam_step(engine)  # stage 0 fp16/bf16: the first update as torch's AdamW's
    if undone:
        zero_choice["optimizer_reason"] += f"; undid {undone}"
    return Built(
        data, model_cfg, engine, optimizer, ds_config, zero_choice, fast_path, gbs, accum, step_flops, block_transform
    )
