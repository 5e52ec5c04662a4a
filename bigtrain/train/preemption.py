"""Save-and-exit on a signal: Slurm sends SIGUSR1 (`--signal`) before a time limit or preemption, and
schedulers send SIGTERM. The loop finishes its current step, checkpoints, and exits with code 3."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

EXIT_PREEMPTED = 3


class PreemptionFlag:
    """Install early (cheap: no torch import), so a signal during start-up is not lost."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM)) -> None:
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received = signum

    def any_rank_received(self, device: torch.device) -> bool:
        """Collective: a signal to any rank stops every rank at the same step."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if self.received is not None else 0], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
