"""Remove DeepSpeed CPU shm all-reduce files in /dev/shm that no live process maps.

bigtrain's ranks make none (bigtrain.train.distributed.skip_shm_allreduce); other DeepSpeed processes, e.g. the
peer benchmark's HF Trainer runner, make one per rank and never remove it: 69 MB of RAM until reboot.
tools/test.sh runs this before and after the suite.
"""

from __future__ import annotations

from bigtrain.train.distributed import remove_stale_shm_buffers


def main() -> None:
    removed = remove_stale_shm_buffers()
    if removed:
        print(f"clean_shm: removed {len(removed)} stale DeepSpeed shm buffer(s) from /dev/shm")


if __name__ == "__main__":
    main()
