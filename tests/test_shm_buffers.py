"""DeepSpeed's CPU shm all-reduce is neither built nor mapped by the trainer (it serves only DeepSpeed's
inference layers; each rank's file is 69 MB of RAM in /dev/shm), and files left by other DeepSpeed processes
are cleaned without touching live ones."""

from __future__ import annotations

import mmap
from pathlib import Path

from bigtrain.train.distributed import SHM_BUFFER_PREFIX, SHM_DIR, free_port, remove_stale_shm_buffers
from tests.trainer_runs import start_ranks

RANK = """
import torch, torch.distributed as dist
from bigtrain.train.distributed import init_distributed, shm_buffer_path, shutdown_distributed
from deepspeed.comm import comm as ds_comm
world = init_distributed()
assert ds_comm.cdb.shm_comm_op is None, "DeepSpeed built its shm all-reduce"
t = torch.ones(4)
dist.all_reduce(t)
assert t.tolist() == [2.0] * 4, t
assert not shm_buffer_path(world.rank).exists(), "this rank's shm file is still there"
print("ok", flush=True)
shutdown_distributed()  # gloo's threads alive at exit can abort the process (-6)
"""


def test_a_single_host_cpu_launch_makes_no_shm_file() -> None:
    # LOCAL_SIZE == WORLD_SIZE is what makes DeepSpeed create its shm buffers (the deepspeed launcher sets it)
    port = str(free_port())
    procs = start_ranks(RANK, [], MASTER_PORT=port, LOCAL_SIZE="2")
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "ok" in out, out[-3000:]
    assert not list(SHM_DIR.glob(f"{SHM_BUFFER_PREFIX}*_127.0.0.1_{port}_*"))


def test_stale_buffers_go_and_mapped_ones_stay(tmp_path: Path) -> None:
    stale = tmp_path / f"{SHM_BUFFER_PREFIX}0_127.0.0.1_1_0"
    live = tmp_path / f"{SHM_BUFFER_PREFIX}0_127.0.0.1_1_1"
    other = tmp_path / "someone_elses_segment"
    for f in (stale, live, other):
        f.write_bytes(b"\0" * 4096)
    with live.open("r+b") as fh, mmap.mmap(fh.fileno(), 4096):  # a running rank maps its buffer
        assert remove_stale_shm_buffers(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
