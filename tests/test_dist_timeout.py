"""train.dist_timeout_minutes reaches the process group (issue 21): a collective waits that long, then fails."""

from __future__ import annotations

import re

from bigtrain.config import TrainConfig
from tests.trainer_runs import start_ranks

RANK = """
import sys, time
import torch.distributed as dist
from bigtrain.train.distributed import init_distributed
init_distributed(float(sys.argv[1]))
if dist.get_rank() == 1:
    time.sleep(40)  # a rank busy with one-rank work (a conversion) while rank 0 waits in a collective
start = time.perf_counter()
try:
    dist.barrier()
except Exception as e:
    print(f"timed out after {time.perf_counter() - start:.1f}s: {type(e).__name__}", flush=True)
    sys.exit(3)
print("barrier passed", flush=True)
"""


def test_the_timeout_is_the_process_groups() -> None:
    assert TrainConfig().dist_timeout_minutes == 30.0
    procs = start_ranks(RANK, ["0.1"])  # 6 seconds
    try:
        out, _ = procs[0].communicate(timeout=180)
        assert procs[0].returncode == 3, out[-2000:]  # the default (30 min) would have waited out rank 1's 40 s
        waited = float(re.search(r"timed out after ([\d.]+)s", out).group(1))
        assert 4 < waited < 30, out[-2000:]
    finally:
        for p in procs:
            p.kill()
            p.wait()
