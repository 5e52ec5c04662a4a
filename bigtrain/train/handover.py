"""Start a grown stage with the whole training state its checkpoint carries.

`load_weights` fills the module before `deepspeed.initialize`; under bf16 ZeRO-3 the module holds bf16
weights, and DeepSpeed builds the fp32 masters from them, rounding every grown weight. This copies the
grown checkpoint's fp32 tensors straight into the fp32 partitions instead, and, when the checkpoint carries
an optimizer state (`grow.optimizer: carry`, written by `bigtrain.growth.api.write_moments`), Adam's
moments and step count too; parameters without a carried state (LoRA factors) start at zero moments.
The partitions are cut as `reshard.load_universal` cuts them, so any world size reads the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from bigtrain.ckpt.source import open_checkpoint
from bigtrain.errors import BigtrainError
from bigtrain.growth.api import MOMENTS, OPTIMIZER_DIR, OPTIMIZER_STATE
from bigtrain.train.distributed import World, barrier
from bigtrain.train.reshard import rank_partition, sync_partitions


def carried_optimizer(init_dir: str | Path) -> Path | None:
    """The optimizer state a grown checkpoint carries, if any."""
    d = Path(init_dir) / OPTIMIZER_DIR
    return d if (d / OPTIMIZER_STATE).is_file() else None


def checkpoint_name(name: str) -> str:
    """A parameter's name in the grown checkpoint: peft's wrapping (a STEP stage) taken off."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def load_handover(engine: Any, init_dir: str | Path, world: World) -> dict[str, Any]:
    """Fill a fresh ZeRO-3 engine's fp32 masters (and carried Adam state) from `init_dir`; returns what
    run.json records. Engines of stages 0-2 keep DeepSpeed's masters (a carried state needs stage 3)."""
    carried = carried_optimizer(init_dir)
    opt = engine.optimizer
    if not hasattr(opt, "fp32_partitioned_groups_flat"):
        if carried is not None:
            raise BigtrainError(
                f"{init_dir}: a carried optimizer state (grow.optimizer: carry) needs train.zero_stage=3"
            )
        return {"masters": "from the module weights", "optimizer": "fresh"}
    weights = open_checkpoint(init_dir)
    moments = {key: open_checkpoint(carried / key) for key in MOMENTS} if carried else {}
    step = json.loads((carried / OPTIMIZER_STATE).read_text())["step"] if carried else None
    names = {p: checkpoint_name(n) for n, p in engine.module.named_parameters()}

    def part(source: Any, name: str, n: int) -> torch.Tensor:
        return rank_partition(source[name].float(), world.rank, world.size)[:n]

    opt.checkpoint_event_prologue()  # every parameter back to its partition, as DeepSpeed's own load does
    for gid, group in enumerate(opt.fp16_groups):
        flat = opt.fp32_partitioned_groups_flat[gid]
        state = {key: torch.zeros_like(flat) for key in moments}
        offset = 0
        for p in group:
            n, name = p.ds_tensor.ds_numel, names[p]
            if name in weights:  # not a LoRA factor: those keep their own init
                flat.data.narrow(0, offset, n).copy_(part(weights, name, n))
                for key, source in moments.items():
                    state[key].narrow(0, offset, n).copy_(part(source, name, n))
            offset += n
        if moments:
            opt.optimizer.state[flat] = {"step": _like(opt.optimizer.state.get(flat, {}).get("step"), step), **state}
            if "step" in opt.optimizer.param_groups[gid]:  # FusedAdam counts per group
                opt.optimizer.param_groups[gid]["step"] = step
        sync_partitions(opt, gid)
    opt.checkpoint_event_epilogue()
    barrier()
    return {"masters": "fp32 from init_from", "optimizer": "carried" if carried else "fresh", "adam_step": step}


def _like(current: Any, step: int) -> Any:
    """The step count in the optimizer's own type (torch's AdamW keeps a float tensor, FusedAdam an int)."""
    return torch.tensor(float(step)) if torch.is_tensor(current) or current is None else type(current)(step)
