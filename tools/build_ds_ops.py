"""Build (JIT-compile) the DeepSpeed ops a CPU run loads, once, before anything waits on them.

On a machine without CUDA every rank loads DeepSpeed's shm all-reduce and FusedAdam; the first load on a
machine (or after the venv moved: the build is keyed by its include paths) compiles them, 45 + 85 s one
after the other on 2 cores, while every other rank waits on the build's lock. The two build side by side
here, one process each. `tools/test.sh` runs this in the background next to the Slurm cluster's start-up
so the suite's first launches find the ops built. With CUDA it does nothing: the GPU builders are another
set (tools/gpu/run_gpu_checks.sh builds those)."""

from __future__ import annotations

import os
import sys
import time
import traceback


def main() -> None:
    import torch

    if torch.cuda.is_available():
        print("build_ds_ops: CUDA present; nothing to do for the CPU ops")
        return
    from deepspeed.ops.op_builder.cpu import FusedAdamBuilder, ShareMemCommBuilder

    from bigtrain.train.cpu_info import remember_cpu_info

    remember_cpu_info()
    # one process per op, side by side: each build is one compiler process, and there are 2 cores
    start, children = time.perf_counter(), []
    for builder in (ShareMemCommBuilder(), FusedAdamBuilder()):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                builder.load(verbose=False)
                print(f"build_ds_ops: {builder.name} ready in {time.perf_counter() - start:.1f} s", flush=True)
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        children.append(pid)
    failed = [pid for pid in children if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
    if failed:
        raise SystemExit(f"build_ds_ops: {len(failed)} of the ops failed to build (tracebacks above)")


if __name__ == "__main__":
    main()
