"""The global, seeded order of training sequences.

Global batch k holds sequences perm[k*G : (k+1)*G] of a per-epoch permutation; the world size only
decides how a global batch is split (micro step, then rank), never which sequences it holds. So a run
resumed on a different number of ranks, or 2 ranks against 1, sees the same data in the same steps.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from bigtrain.errors import BigtrainError


class GlobalBatchSampler:
    def __init__(self, num_sequences: int, global_batch: int, seed: int) -> None:
        if num_sequences < global_batch:
            raise BigtrainError(
                f"the training data has {num_sequences} sequences, fewer than one global batch of {global_batch}"
            )
        self.n, self.global_batch, self.seed = num_sequences, global_batch, seed

    @lru_cache(maxsize=2)  # noqa: B019 - one sampler per run; holds at most two epochs' permutations
    def _epoch(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def global_batch_indices(self, batch: int) -> np.ndarray:
        start = batch * self.global_batch
        positions = np.arange(start, start + self.global_batch)
        out = np.empty(self.global_batch, dtype=np.int64)
        for epoch in np.unique(positions // self.n):
            sel = positions // self.n == epoch
            out[sel] = self._epoch(int(epoch))[positions[sel] % self.n]
        return out

    def micro_batch_indices(self, batch: int, micro_step: int, rank: int, world: int, micro: int) -> np.ndarray:
        """This rank's share of one micro step of global batch `batch` (layout: [micro_step][rank][micro])."""
        start = (micro_step * world + rank) * micro
        return self.global_batch_indices(batch)[start : start + micro]
