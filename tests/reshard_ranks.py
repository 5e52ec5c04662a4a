"""Launched by test_reshard.py on N ranks: convert a ZeRO-3 checkpoint to the universal layout spread over
the ranks, as a resume on another world size does. Each rank writes `rank_<r>.txt` into the output
directory: `ok <seconds>` or the error every rank stopped with. `BIGTRAIN_TEST_FAIL_RANK=r` makes rank r's
first tensor write fail as a full disk does."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from bigtrain.errors import BigtrainError
from bigtrain.train import reshard
from bigtrain.train.distributed import init_distributed


def fail_writes() -> None:
    def save(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    reshard.torch.save = save  # type: ignore[assignment]  # only this process, only the shares' writes


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    ckpt, out = Path(args[0]), Path(args[1])
    world = init_distributed()
    real_save = torch.save
    if os.environ.get("BIGTRAIN_TEST_FAIL_RANK") == str(world.rank):
        fail_writes()
    try:
        _, seconds = reshard.convert_distributed(ckpt, world)
        line = f"ok {seconds}"
    except BigtrainError as e:
        line = str(e)
    finally:
        reshard.torch.save = real_save  # type: ignore[assignment]
    (out / f"rank_{world.rank}.txt").write_text(line)
    # leave together and close the group: a rank exiting with gloo's threads alive can abort
    # ("terminate called without an active exception", seen once in the full suite)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
