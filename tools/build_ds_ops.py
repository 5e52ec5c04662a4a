"""Build (JIT-compile) the DeepSpeed op a CPU run loads, once, before anything waits on it.

On a machine without CUDA every rank loads DeepSpeed's FusedAdam (the shm all-reduce is skipped:
bigtrain.train.distributed.skip_shm_allreduce); the first load on a machine (or after the venv moved: the
build is keyed by its include paths) compiles it, 1-2 minutes on 2 cores, while every other rank waits on
the build's lock. `tools/setup.sh` runs this in the background while pip installs the rest, so the first
launches find it built. With CUDA it does nothing: the GPU builders are another set
(tools/gpu/run_gpu_checks.sh builds those).
"""

from __future__ import annotations

import time


def main() -> None:
    import torch

    if torch.cuda.is_available():
        print("build_ds_ops: CUDA present; nothing to do for the CPU ops")
        return
    from deepspeed.ops.op_builder.cpu import FusedAdamBuilder

    from bigtrain.train.cpu_info import remember_cpu_info

    remember_cpu_info()
    builder = FusedAdamBuilder()
    start = time.perf_counter()
    builder.load(verbose=False)
    print(f"build_ds_ops: {builder.name} ready in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
