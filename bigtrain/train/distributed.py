"""Process-group start-up for every launcher: deepspeed (env + --local_rank), torchrun, srun, or none."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from bigtrain.train.cpu_info import remember_cpu_info


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill_env_from_slurm() -> None:
    """srun sets SLURM_* only; translate to the plain RANK/WORLD_SIZE/LOCAL_RANK the rest reads."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or "SLURM_NTASKS" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def quiet_libraries() -> None:
    """DeepSpeed logs every config key at INFO and torch warns on each collective DeepSpeed calls."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)


DEFAULT_TIMEOUT_MINUTES = 30.0  # train.dist_timeout_minutes' default (bigtrain/config/train.py)


def init_distributed(timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> World:
    """Join (or start) the process group; `timeout_minutes`: how long a collective may wait before the
    process group gives up (train.dist_timeout_minutes)."""
    fill_env_from_slurm()
    quiet_libraries()
    remember_cpu_info()  # before DeepSpeed builds (loads) its first op
    if "RANK" not in os.environ:  # plain `python bigtrain/train.py`: a group of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    import deepspeed

    if not dist.is_initialized():
        skip_shm_allreduce()
        deepspeed.init_distributed(
            dist_backend="nccl" if torch.cuda.is_available() else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return World(dist.get_rank(), local_rank, dist.get_world_size())


SHM_DIR = Path("/dev/shm")
SHM_BUFFER_PREFIX = "deepspeed_allreduce_buffer_"  # DeepSpeed's CPU shm all-reduce (ops/csrc/cpu/comm/shm.cpp)


def shm_buffer_path(rank: int) -> Path:
    """The shared-memory file DeepSpeed's CPU backend creates for `rank` when all ranks are on one host."""
    name = f"{SHM_BUFFER_PREFIX}{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_{os.environ.get('MASTER_PORT', '')}_{rank}"
    return SHM_DIR / name


def skip_shm_allreduce() -> None:
    """Keep DeepSpeed's CPU backend from building and mapping its shared-memory all-reduce. It serves only
    `inference_all_reduce` (DeepSpeed's inference tensor-parallel layers); training's collectives go through
    torch.distributed (gloo), so for a trainer the op is pure cost: a JIT build on a machine's first launch
    (~1 min on 2 cores, every rank waiting on its lock) and a 69 MB /dev/shm file per rank that DeepSpeed
    never removes. DeepSpeed builds it only where its op table says it is compatible; the table is made
    once per process and meant to be edited (deepspeed/ops/__init__.py)."""
    if torch.cuda.is_available():
        return  # the GPU backends have no such op
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def remove_stale_shm_buffers(directory: Path = SHM_DIR) -> list[Path]:
    """Delete DeepSpeed shm all-reduce files that no live process maps (left by processes that start
    DeepSpeed's CPU backend without skip_shm_allreduce, e.g. a peer benchmark's runners, and were killed);
    returns what it removed. Safe beside running jobs: their files are mapped."""
    candidates = sorted(directory.glob(SHM_BUFFER_PREFIX + "*"))
    if not candidates:
        return []
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(
                line.split(maxsplit=5)[-1].strip() for line in maps.read_text().splitlines() if str(directory) in line
            )
        except OSError:  # a process that exited or that we may not read
            continue
    removed = []
    for path in candidates:
        if str(path) not in mapped:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def shutdown_distributed() -> None:
    """Close this process's group before exiting (local, no collective: safe on an error path too). A process
    that exits with gloo's threads still alive can abort in their destructor ("terminate called without an
    active exception", exit -6), turning a clean error exit into a crash."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
