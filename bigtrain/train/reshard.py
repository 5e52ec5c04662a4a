"""Resume on another number of ranks: convert a ZeRO-3 checkpoint once into a world-size-free form, then
load it into the partitions of an engine of any size.

A ZeRO-3 checkpoint is per rank: each `*_optim_states.pt` holds that rank's slice of every trainable
parameter's fp32 master and Adam moments, each `*_model_states.pt` its slice of the frozen parameters
(STEP stages). DeepSpeed loads it only on the world size that saved it. `convert` gathers every
parameter whole, in DeepSpeed's universal-checkpoint layout (`universal/zero/<name>/{fp32,exp_avg,
exp_avg_sq}.pt`, each `{"param": tensor}`), next to the original (`step_N/universal/`, written to a
hidden directory and renamed, so it is done once and atomically); `load_universal` cuts each rank's
partition out of it, as `DeepSpeedZeroOptimizer_Stage3.load_hp_checkpoint_state` does.

Why not DeepSpeed's own `ds_to_universal` + `load_universal`: its ZeRO-3 loader restores only the
trainable groups (STEP's frozen base weights and their partitions are not in it) and copies the
hyper-parameters of the first parameter group onto every group, so the no-weight-decay group would
decay after a resume (DeepSpeed 0.19.8). Reading the shards is bigtrain's own `ckpt/zero3.py`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from bigtrain.ckpt.zero3 import FP32, MODEL_GLOB, Zero3Checkpoint, _load
from bigtrain.errors import BigtrainError
from bigtrain.train.distributed import World, barrier, broadcast_object

UNIVERSAL = "universal"
META = "universal.json"  # written last: a `universal/` directory without it is not complete
MOMENTS = ("exp_avg", "exp_avg_sq")


def universal_dir(ckpt: Path) -> Path:
    return ckpt / UNIVERSAL


def is_converted(ckpt: Path) -> bool:
    return (universal_dir(ckpt) / META).is_file()


def convert(ckpt: Path) -> tuple[Path, float]:
    """Write `ckpt/universal/` (once; reused when already there). Returns it and the seconds spent."""
    out = universal_dir(ckpt)
    if is_converted(ckpt):
        return out, 0.0
    start = time.perf_counter()
    src = Zero3Checkpoint(ckpt)
    osd = _load(src.optim_files[0])["optimizer_state_dict"]
    base = osd["optimizer_state_dict"]
    if not base.get("state"):
        raise BigtrainError(f"{ckpt}: the checkpoint holds no optimizer state (saved before the first step)")
    step = base["state"][0]["step"]
    groups = [{k: v for k, v in g.items() if k != "params"} for g in base["param_groups"]]
    model_states = _load(sorted(ckpt.glob(MODEL_GLOB))[0])
    tmp = ckpt / f".tmp-{UNIVERSAL}"
    shutil.rmtree(tmp, ignore_errors=True)  # debris of a conversion that crashed
    params: dict[str, dict[str, Any]] = {}
    for name in src.shapes:
        keys = (FP32,) if src.is_frozen(name) else (FP32, *MOMENTS)
        (tmp / "zero" / name).mkdir(parents=True)
        for key in keys:
            torch.save({"param": src.read(name, key)}, tmp / "zero" / name / f"{key}.pt")
        params[name] = {"shape": list(src.shapes[name]), "frozen": src.is_frozen(name)}
    torch.save(
        {"step": step, "param_groups": groups, "lr_scheduler": model_states.get("lr_scheduler")},
        tmp / "optimizer_state.pt",
    )
    meta = {
        "source": str(ckpt),
        "source_world_size": src.world_size,
        "global_steps": model_states.get("global_steps"),
        "global_samples": model_states.get("global_samples"),
        "skipped_steps": model_states.get("skipped_steps"),
        "params": params,
    }
    (tmp / META).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)  # an incomplete one (no META): the rename below replaces it
    os.replace(tmp, out)
    return out, time.perf_counter() - start


def check_global_batch(ckpt: Path, batch: int, world: World) -> None:
    """The data position is step x global batch: resuming with another global batch would skip or repeat data."""
    files = sorted(ckpt.glob(MODEL_GLOB))
    saved = (_load(files[0]).get("ds_config") or {}).get("train_batch_size") if files else None
    if saved and saved != batch:
        raise BigtrainError(
            f"train.global_batch_size: {ckpt} was trained with a global batch of {saved}, this start on "
            f"{world.size} ranks gives {batch}; set train.global_batch_size={saved} to resume"
        )


def convert_on_main(ckpt: Path, world: World, batch: int) -> tuple[Path, float]:
    """Rank 0 checks the global batch (before writing anything) and converts, the others wait; a failure on
    rank 0 (bad input, a full disk) stops every rank with its message instead of leaving them waiting."""
    result: Any = None
    if world.is_main:
        try:
            check_global_batch(ckpt, batch, world)
            result = convert(ckpt)
        except BigtrainError as e:
            result = str(e)
        except OSError as e:  # the original is untouched; the partial `.tmp-universal` is redone next time
            result = f"{ckpt}: converting for {world.size} ranks failed ({e})"
    result = broadcast_object(result)
    if isinstance(result, str):
        raise BigtrainError(result)
    return Path(result[0]), float(result[1])


def rank_partition(full: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's ZeRO-3 slice of a flattened tensor: ceil(numel / world) elements, the last zero-padded."""
    flat = full.reshape(-1)  # a memory map: only this rank's slice is read
    per_rank = math.ceil(flat.numel() / world_size)
    lo, hi = rank * per_rank, min((rank + 1) * per_rank, flat.numel())
    part = torch.zeros(per_rank, dtype=flat.dtype)
    if lo < hi:
        part[: hi - lo] = flat[lo:hi]
    return part


def load_universal(engine: Any, udir: Path, world: World) -> None:
    """Fill `engine` (ZeRO-3, any world size) from a converted checkpoint: fp32 masters, Adam moments and
    step, parameter-group hyper-parameters, the LR scheduler, the partitions of frozen parameters."""
    opt = engine.optimizer
    if not hasattr(opt, "fp32_partitioned_groups_flat"):
        raise BigtrainError(f"{udir}: resuming on another world size needs ZeRO stage 3 (train.ds_config)")
    meta = json.loads((udir / META).read_text())
    state = torch.load(udir / "optimizer_state.pt", map_location="cpu", weights_only=False)
    names = {p: n for n, p in engine.module.named_parameters()}
    missing = sorted(set(names.values()) - set(meta["params"]))
    if missing:
        raise BigtrainError(f"{udir}: the checkpoint has no parameter {missing[0]} (a different model?)")

    def read(name: str, key: str) -> torch.Tensor:
        t = torch.load(udir / "zero" / name / f"{key}.pt", map_location="cpu", mmap=True, weights_only=False)["param"]
        return rank_partition(t, world.rank, world.size)

    opt.checkpoint_event_prologue()  # every parameter back to its partition, as DeepSpeed's own load does
    for gid, group in enumerate(opt.fp16_groups):
        flat = opt.fp32_partitioned_groups_flat[gid]
        values = {key: torch.zeros_like(flat) for key in (FP32, *MOMENTS)}
        offset = 0
        for p in group:
            n = p.ds_tensor.ds_numel
            for key, buf in values.items():
                buf.narrow(0, offset, n).copy_(read(names[p], key)[:n])
            offset += n
        flat.data.copy_(values[FP32])
        opt.optimizer.state[flat] = {
            "step": state["step"].clone() if torch.is_tensor(state["step"]) else state["step"],
            **{key: values[key] for key in MOMENTS},
        }
        opt.fp16_partitioned_groups_flat[gid].data.copy_(flat.data)
        for part, q in zip(
            opt.fp16_partitioned_groups[gid],
            opt.unflatten(opt.fp16_partitioned_groups_flat[gid], opt.fp16_partitioned_groups[gid]),
            strict=True,
        ):
            part.data = q.data
    for p, name in names.items():
        if not p.requires_grad:  # frozen: only the model partition, no optimizer state
            p.ds_tensor.data.copy_(read(name, FP32)[: p.ds_tensor.ds_numel].to(p.ds_tensor.dtype))
    groups = state["param_groups"]
    if len(groups) != len(opt.optimizer.param_groups):
        raise BigtrainError(
            f"{udir}: {len(groups)} parameter groups saved, the engine has {len(opt.optimizer.param_groups)}"
        )
    for live, saved in zip(opt.optimizer.param_groups, groups, strict=True):
        live.update({k: v for k, v in saved.items() if k != "params"})
    if state["lr_scheduler"] is not None and engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
    engine.global_steps = meta["global_steps"] or 0
    engine.global_samples = meta["global_samples"] or 0
    engine.skipped_steps = meta["skipped_steps"] or 0
    opt.checkpoint_event_epilogue()
    barrier()
