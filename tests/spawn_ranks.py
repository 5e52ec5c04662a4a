"""A single-host rank launcher for tests: `python tests/spawn_ranks.py N PORT SCRIPT ARGS...` starts N ranks of
SCRIPT with the environment and the `--local_rank=I` argument that `deepspeed --num_gpus N` gives them
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_SIZE, CROSS_RANK, CROSS_SIZE, MASTER_ADDR, MASTER_PORT), and behaves as
its launch.py does: when a rank fails the others are terminated, and the exit status is the failed rank's.
`python tests/spawn_ranks.py --plain SCRIPT ARGS...` is `python SCRIPT ARGS...` (a group of one, no rank
environment) started the same way.

Why not the real launcher in every test: it is two Python processes that each import deepspeed before the
first rank starts (~3.5 s of CPU per launch on the 2-core machine, ~50 launches per suite run). The ranks,
the trainer and DeepSpeed's engine are the same either way; tests of the launcher path itself
(signals forwarded, `deepspeed bigtrain/train.py` as the README says) keep using `deepspeed`.

Each rank is forked from the suite's preloaded server (tests/zygote.py) when there is one, else a fresh
`python -u`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from zygote import Forked, start


def start_rank(argv: list[str], env: dict[str, str]) -> Forked | subprocess.Popen:
    return start(argv, env, os.getcwd()) or subprocess.Popen([sys.executable, "-u", *argv], env=env)


def main() -> int:
    if sys.argv[1] == "--plain":
        exit_like(supervise([start_rank(sys.argv[2:], dict(os.environ))], plain=True))
    ranks, port, script, args = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
    base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "WORLD_SIZE": str(ranks),
        "LOCAL_SIZE": str(ranks),
        "CROSS_RANK": "0",
        "CROSS_SIZE": "1",
    }
    return supervise(
        [
            start_rank([script, f"--local_rank={r}", *args], {**base, "RANK": str(r), "LOCAL_RANK": str(r)})
            for r in range(ranks)
        ]
    )


def supervise(procs: list[Forked | subprocess.Popen], plain: bool = False) -> int:
    """Wait for the ranks; signals are forwarded, and a failed rank stops the others. On SIGTERM or SIGINT the
    exit status is the launcher's (128 + N), or with `plain` the process's own; SIGUSR1 is only passed on."""

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    def stop(signum: int, frame: object) -> None:
        forward(signum, frame)
        codes = [p.wait() for p in procs]
        if plain:
            exit_like(codes[0])
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Slurm's --signal=B:USR1 reaches srun's tasks, here this process: the ranks decide what it means
    signal.signal(signal.SIGUSR1, forward)
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            deadline = time.monotonic() + 10
            for p in procs:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            return failed[0]
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.1)


def exit_like(code: int) -> None:
    """Exit as the rank did: a rank killed by signal N (-N) ends this process by the same signal."""
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
