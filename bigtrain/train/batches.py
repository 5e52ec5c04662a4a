"""Training micro-batches on the device, one ahead: the next batch is read and its host-to-device copy
started before the current one is used, so the loop never waits on the host. On CUDA the copy comes from
pinned memory and is non-blocking (PyTorch's pinned allocator keeps the buffer until the copy is done)."""

from __future__ import annotations

import torch

from bigtrain.data.dataset import SequenceRange
from bigtrain.data.sampler import GlobalBatchSampler
from bigtrain.train.distributed import World


class DeviceBatches:
    def __init__(
        self,
        data: SequenceRange,
        sampler: GlobalBatchSampler,
        world: World,
        micro_batch_size: int,
        accum: int,
        total_steps: int,
        device: torch.device,
    ) -> None:
        self.data, self.sampler, self.world = data, sampler, world
        self.micro_batch_size, self.accum, self.total_steps = micro_batch_size, accum, total_steps
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"
        self._ahead: tuple[tuple[int, int], torch.Tensor] | None = None

    def _load(self, step: int, micro_step: int) -> torch.Tensor:
        idx = self.sampler.micro_batch_indices(
            step, micro_step, self.world.rank, self.world.size, self.micro_batch_size
        )
        batch = self.data.batch(idx)
        if self.pinned:
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def get(self, step: int, micro_step: int) -> torch.Tensor:
        """The micro-batch (step, micro_step) of this rank; starts loading the one after it."""
        key = (step, micro_step)
        batch = self._ahead[1] if self._ahead and self._ahead[0] == key else self._load(step, micro_step)
        nxt = (step, micro_step + 1) if micro_step + 1 < self.accum else (step + 1, 0)
        self._ahead = (nxt, self._load(*nxt)) if nxt[0] < self.total_steps else None
        return batch
