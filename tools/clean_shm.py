"""Remove DeepSpeed CPU shm all-reduce files in /dev/shm that no live process maps.

Ranks unlink their own file once the group is up (bigtrain.train.distributed.unlink_shm_buffer); a rank
killed before that leaves 69 MB of RAM behind until reboot. tools/test.sh runs this before and after the suite.
"""

from __future__ import annotations

from bigtrain.train.distributed import remove_stale_shm_buffers


def main() -> None:
    removed = remove_stale_shm_buffers()
    if removed:
        print(f"clean_shm: removed {len(removed)} stale DeepSpeed shm buffer(s) from /dev/shm")


if __name__ == "__main__":
    main()
