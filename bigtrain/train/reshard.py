"""Resume on another number of ranks: convert a ZeRO-3 checkpoint once into a world-size-free form, then
load it into the partitions of an engine of any size.

A ZeRO-3 checkpoint is per rank: each `*_optim_states.pt` holds that rank's slice of every trainable
parameter's fp32 master and Adam moments, each `*_model_states.pt` its slice of the frozen parameters
(STEP stages). DeepSpeed loads it only on the world size that saved it. `convert_distributed` gathers
every parameter whole, in DeepSpeed's universal-checkpoint layout (`universal/zero/<name>/{fp32,exp_avg,
exp_avg_sq}.pt`, each `{"param": tensor}`), next to the original (`step_N/universal/`, written to a
hidden directory and renamed, so it is done once and atomically); `load_universal` cuts each rank's
partition out of it, as `DeepSpeedZeroOptimizer_Stage3.load_hp_checkpoint_state` does.

The conversion is spread over the ranks of the new run: each writes a disjoint share of the files,
balanced by bytes, so at 8B on 64 ranks no rank reads and writes ~96 GB while 63 wait in a collective
that can time out (issue 21); the files are the same whoever writes them.

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
import torch.distributed as dist

from bigtrain.ckpt.zero3 import FP32, MODEL_GLOB, Zero3Checkpoint, _load
from bigtrain.errors import BigtrainError
from bigtrain.train.distributed import World, barrier, broadcast_object

UNIVERSAL = "universal"
META = "universal.json"  # written last: a `universal/` directory without it is not complete
MOMENTS = ("exp_avg", "exp_avg_sq")
TMP = f".tmp-{UNIVERSAL}"  # every rank writes its share here; renamed to UNIVERSAL once complete


def universal_dir(ckpt: Path) -> Path:
    return ckpt / UNIVERSAL


def is_converted(ckpt: Path) -> bool:
    return (universal_dir(ckpt) / META).is_file()


PROGRESS_SECONDS = 30.0  # how often rank 0 logs how far its share of a conversion is


def convert(ckpt: Path) -> tuple[Path, float]:
    """Write `ckpt/universal/` in this process alone (once; reused when already there). Returns it and the
    seconds spent."""
    return convert_distributed(ckpt, World(0, 0, 1))


def tensor_bytes(src: Zero3Checkpoint, name: str) -> int:
    return 4 * math.prod(src.shapes[name])  # every tensor of the universal layout is fp32


def conversion_units(src: Zero3Checkpoint) -> list[tuple[str, str]]:
    """Every (parameter, key) file of the universal layout: each one tensor, written by one rank."""
    return [(name, key) for name in src.shapes for key in ((FP32,) if src.is_frozen(name) else (FP32, *MOMENTS))]


def shares(src: Zero3Checkpoint, size: int) -> list[list[tuple[str, str]]]:
    """The files each of `size` ranks writes, balanced by bytes: largest first onto the least loaded rank
    (ties: the lower rank). A pure function of the checkpoint, so every rank computes the same plan without
    a collective; one file per unit (not per parameter) so an embedding's three tensors land on three ranks."""
    load = [0] * size
    out: list[list[tuple[str, str]]] = [[] for _ in range(size)]
    for unit in sorted(conversion_units(src), key=lambda u: (-tensor_bytes(src, u[0]), u)):
        r = min(range(size), key=lambda i: (load[i], i))
        out[r].append(unit)
        load[r] += tensor_bytes(src, unit[0])
    return out


def convert_share(src: Zero3Checkpoint, units: list[tuple[str, str]], tmp: Path, log: bool = False) -> None:
    """Gather and write `units` (this rank's share) into the hidden directory `tmp`."""
    total = sum(tensor_bytes(src, name) for name, _ in units)
    done, last = 0, time.perf_counter()
    for name, key in units:
        (tmp / "zero" / name).mkdir(parents=True, exist_ok=True)  # a parameter's keys may be on other ranks
        torch.save({"param": src.read(name, key)}, tmp / "zero" / name / f"{key}.pt")
        done += tensor_bytes(src, name)
        if log and time.perf_counter() - last > PROGRESS_SECONDS:
            last = time.perf_counter()
            print(f"bigtrain: converting {src.dir.name}: rank 0 wrote {done >> 20} of {total >> 20} MiB", flush=True)


def _begin(ckpt: Path, world: World, batch: int | None) -> bool:
    """Rank 0, before anything is written: check the global batch; False when already converted, else clear
    the debris of a conversion that crashed."""
    if batch is not None:
        check_global_batch(ckpt, batch, world)
    if is_converted(ckpt):
        return False
    shutil.rmtree(ckpt / TMP, ignore_errors=True)
    (ckpt / TMP / "zero").mkdir(parents=True)
    return True


def _finish(ckpt: Path, src: Zero3Checkpoint) -> None:
    """Rank 0, once every rank's share is written: the optimizer state, then `META` (last) and the rename."""
    tmp, out = ckpt / TMP, universal_dir(ckpt)
    osd = _load(src.optim_files[0])["optimizer_state_dict"]
    base = osd["optimizer_state_dict"]
    step = base["state"][0]["step"]
    groups = [{k: v for k, v in g.items() if k != "params"} for g in base["param_groups"]]
    model_states = _load(src.model_files[0])
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
        "params": {name: {"shape": list(src.shapes[name]), "frozen": src.is_frozen(name)} for name in src.shapes},
    }
    (tmp / META).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)  # an incomplete one (no META): the rename below replaces it
    os.replace(tmp, out)


def _open(ckpt: Path) -> Zero3Checkpoint:
    src = Zero3Checkpoint(ckpt)
    src.adam_step()  # "holds no optimizer state (saved before the first step)" before anything is written
    return src


def _failure(ckpt: Path, world: World, e: Exception) -> str:
    if isinstance(e, BigtrainError):
        return str(e)
    return f"{ckpt}: converting for {world.size} ranks failed on rank {world.rank} ({e})"


def _from_main(world: World, value: Any) -> Any:
    return broadcast_object(value) if dist.is_initialized() and world.size > 1 else value


def _first_error(world: World, error: str | None) -> str | None:
    """The first rank's failure, on every rank (the all-gather is also the barrier after the shares)."""
    if not (dist.is_initialized() and world.size > 1):
        return error
    errors: list[str | None] = [None] * world.size
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e), None)


def check_global_batch(ckpt: Path, batch: int, world: World) -> None:
    """The data position is step x global batch: resuming with another global batch would skip or repeat data."""
    files = sorted(ckpt.glob(MODEL_GLOB))
    saved = (_load(files[0]).get("ds_config") or {}).get("train_batch_size") if files else None
    if saved and saved != batch:
        raise BigtrainError(
            f"train.global_batch_size: {ckpt} was trained with a global batch of {saved}, this start on "
            f"{world.size} ranks gives {batch}; set train.global_batch_size={saved} to resume"
        )


def convert_distributed(ckpt: Path, world: World, batch: int | None = None) -> tuple[Path, float]:
    """Convert `ckpt` once, spread over every rank of `world`: rank 0 checks the global batch (`batch`;
    before anything is written) and clears the hidden `.tmp-universal`, each rank writes its share of the
    tensors into it (`shares`), and once all have, rank 0 writes the metadata and renames it into place.
    A failure on any rank (bad input, a full disk) stops every rank with its message and removes the
    hidden copy; the original is untouched, nothing half-written is ever renamed, and the next start
    converts again. Returns the directory and the seconds spent."""
    start = time.perf_counter()
    begun: tuple[bool, str | None] = (False, None)
    if world.is_main:
        try:
            begun = (_begin(ckpt, world, batch), None)
        except (BigtrainError, OSError) as e:
            begun = (False, _failure(ckpt, world, e))
    go, error = _from_main(world, begun)
    if error:
        raise BigtrainError(error)
    if not go:
        return universal_dir(ckpt), 0.0
    try:
        src = _open(ckpt)
        convert_share(src, shares(src, world.size)[world.rank], ckpt / TMP, log=world.is_main)
    except (BigtrainError, OSError, RuntimeError) as e:  # torch reports a failed write as RuntimeError
        error = _failure(ckpt, world, e)
    error = _first_error(world, error)
    if world.is_main:
        if error is None:
            try:
                _finish(ckpt, src)
            except (BigtrainError, OSError, RuntimeError) as e:
                error = _failure(ckpt, world, e)
        if error:
            shutil.rmtree(ckpt / TMP, ignore_errors=True)  # free the space; a later start converts again
    error = _from_main(world, error)
    if error:
        raise BigtrainError(error)
    return universal_dir(ckpt), time.perf_counter() - start


def rank_partition(full: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's ZeRO-3 slice of a flattened tensor: ceil(numel / world) elements, the last zero-padded."""
    flat = full.reshape(-1)  # a memory map: only this rank's slice is read
    per_rank = math.ceil(flat.numel() / world_size)
    lo, hi = rank * per_rank, min((rank + 1) * per_rank, flat.numel())
    part = torch.zeros(per_rank, dtype=flat.dtype)
    if lo < hi:
        part[: hi - lo] = flat[lo:hi]
    return part


def sync_partitions(opt: Any, gid: int) -> None:
    """After group `gid`'s fp32 partition changed: its low-precision flat copy and the per-parameter views."""
    flat = opt.fp32_partitioned_groups_flat[gid]
    opt.fp16_partitioned_groups_flat[gid].data.copy_(flat.data)
    for part, q in zip(
        opt.fp16_partitioned_groups[gid],
        opt.unflatten(opt.fp16_partitioned_groups_flat[gid], opt.fp16_partitioned_groups[gid]),
        strict=True,
    ):
        part.data = q.data


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
        sync_partitions(opt, gid)
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
