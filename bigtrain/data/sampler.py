"""The global, seeded order of training sequences.

Global batch k holds the sequences at global positions S + k*G .. S + (k+1)*G - 1 of a per-epoch
permutation, S the run's `data.start_sequence` (a later stage continues where the one before it ended);
the world size only decides how a global batch is split (micro step, then rank), never which sequences it
holds. So a run resumed on a different number of ranks, or 2 ranks against 1, sees the same data in the
same steps. A run's `sequences` count (what the loop passes) is relative to S; data positions in the
checkpoint are absolute.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from bigtrain.errors import BigtrainError


class GlobalBatchSampler:
    def __init__(self, num_sequences: int, global_batch: int, seed: int, start: int = 0) -> None:
        if num_sequences < global_batch:
            raise BigtrainError(
                f"the training data has {num_sequences} sequences, fewer than one global batch of {global_batch}"
            )
        self.n, self.global_batch, self.seed, self.start = num_sequences, global_batch, seed, start

    @lru_cache(maxsize=2)  # noqa: B019 - one sampler per run; holds at most two epochs' permutations
    def _epoch(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def global_batch_indices(self, batch: int) -> np.ndarray:
        start = self.start + batch * self.global_batch
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

    def draws(self, position: int) -> dict[str, int]:
        """Per source: how many of the global positions [0, position) went to it."""
        return {"train": position}

    def source_sizes(self) -> dict[str, int]:
        return {"train": self.n}

    def position(self, sequences: int) -> dict:
        """The data position after this run's first `sequences` global sequences: what the checkpoint
        records (per source absolute, including what earlier stages read)."""
        sizes = self.source_sizes()
        sources = {k: {"sequences": d, "epoch": d // sizes[k]} for k, d in self.draws(self.start + sequences).items()}
        out: dict = {"sequences": sequences, "sources": sources}
        if self.start:
            out["start_sequence"] = self.start
        return out

    def run_draws(self, sequences: int) -> dict[str, int]:
        """Per source: sequences of it among this run's first `sequences` (`tokens/<source>` in the metrics)."""
        before, after = self.draws(self.start), self.draws(self.start + sequences)
        return {k: after[k] - before[k] for k in after}

    def new_epochs(self, batch: int) -> list[str]:
        """Log lines for the epochs that start inside global batch `batch`."""
        start = self.start + batch * self.global_batch
        stop = start + self.global_batch
        return [
            f"data: epoch {e} of the training data begins (its sequences repeat)" for e in _crossed(start, stop, self.n)
        ]


def _crossed(start: int, stop: int, n: int) -> range:
    """Epochs e >= 1 whose first sequence e*n lies in [start, stop)."""
    return range(max(1, -(-start // n)), -(-stop // n)) if n else range(0)


MIXTURE_BLOCK = 4096  # positions per repeating schedule block: proportions are exact to 1/4096


class MixtureSampler(GlobalBatchSampler):
    """Weighted sampling from several sources, the same for any world size.

    Global position p (batch k holds positions k*G .. k*G+G-1) goes to a source by a fixed schedule: one
    block of MIXTURE_BLOCK positions, assigned greedily to the source furthest below its share (as
    Megatron's blended datasets do), repeated. Source s's j-th draw is sequence perm_{s,e}[j mod n_s] of
    that source, e = j // n_s its epoch: a source that runs out repeats, reshuffled. Everything is a pure
    function of p, so a resumed run, or one on another number of ranks, reads exactly the same batches.
    """

    def __init__(
        self, counts: list[int], weights: list[float], names: list[str], global_batch: int, seed: int, start: int = 0
    ):
        if any(c == 0 for c in counts):
            raise BigtrainError(f"data.sources[{names[counts.index(0)]}]: no training sequences")
        self.counts, self.names = counts, names
        self.n, self.global_batch, self.seed, self.start = sum(counts), global_batch, seed, start
        self.offsets = np.cumsum([0, *counts])[:-1]
        w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.weights = w
        schedule = np.empty(MIXTURE_BLOCK, dtype=np.int64)
        taken = np.zeros(len(counts))
        for i in range(MIXTURE_BLOCK):
            s = int(np.argmax(w * (i + 1) - taken))
            schedule[i] = s
            taken[s] += 1
        self.schedule = schedule
        # prefix[s, j]: draws of source s among the first j positions of a block
        onehot = schedule[None, :] == np.arange(len(counts))[:, None]
        self.prefix = np.concatenate([np.zeros((len(counts), 1), np.int64), np.cumsum(onehot, axis=1)], axis=1)

    @lru_cache(maxsize=8)  # noqa: B019 - one sampler per run
    def _source_epoch(self, source: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, source, epoch]).permutation(self.counts[source])

    def draws_before(self, position: int) -> np.ndarray:
        """Per source: how many of positions [0, position) went to it."""
        full, rest = divmod(position, MIXTURE_BLOCK)
        return full * self.prefix[:, MIXTURE_BLOCK] + self.prefix[:, rest]

    def draws(self, position: int) -> dict[str, int]:
        return {name: int(d) for name, d in zip(self.names, self.draws_before(position), strict=True)}

    def source_sizes(self) -> dict[str, int]:
        return dict(zip(self.names, self.counts, strict=True))

    def global_batch_indices(self, batch: int) -> np.ndarray:
        start = self.start + batch * self.global_batch
        positions = np.arange(start, start + self.global_batch)
        sources = self.schedule[positions % MIXTURE_BLOCK]
        block_start = (positions // MIXTURE_BLOCK) * self.prefix[sources, MIXTURE_BLOCK]
        draws = block_start + self.prefix[sources, positions % MIXTURE_BLOCK]  # j: earlier draws of that source
        counts = np.asarray(self.counts)[sources]
        epochs = draws // counts
        out = np.empty(self.global_batch, dtype=np.int64)
        for s, e in {(int(a), int(b)) for a, b in zip(sources, epochs, strict=True)}:
            sel = (sources == s) & (epochs == e)
            out[sel] = self.offsets[s] + self._source_epoch(s, e)[draws[sel] % self.counts[s]]
        return out

    def new_epochs(self, batch: int) -> list[str]:
        start = self.start + batch * self.global_batch
        before, after = self.draws_before(start), self.draws_before(start + self.global_batch)
        return [
            f"data: source {name!r} starts epoch {e} (its {c} sequences repeat)"
            for name, a, b, c in zip(self.names, before, after, self.counts, strict=True)
            for e in _crossed(int(a), int(b), c)
        ]


def make_sampler(train, global_batch: int, seed: int, start: int = 0) -> GlobalBatchSampler:
    """One source: the plain global permutation; a mixture (`bigtrain.data.dataset.Mixture`): weighted.
    `start`: the global position the run begins at (`data.start_sequence`)."""
    if getattr(train, "streaming", False):
        from bigtrain.data.stream import StreamSampler

        return StreamSampler(train, global_batch)  # a stream starts at its beginning (docs/data.md)
    parts = getattr(train, "parts", None)
    if parts is None:
        return GlobalBatchSampler(train.count, global_batch, seed, start)
    return MixtureSampler([p.count for p in parts], train.weights, train.names, global_batch, seed, start)


def tokens_by_source(sampler: GlobalBatchSampler, sequences: int, seq_len: int) -> dict[str, int]:
    """metrics.jsonl's `tokens/<source>`: tokens this run trained on from each source so far."""
    return {f"tokens/{k}": n * seq_len for k, n in sampler.run_draws(sequences).items()}


def resume_notes(saved: dict, sampler: GlobalBatchSampler, sequences: int) -> list[str]:
    """A warning when the checkpoint's data position is not where the recipe's data now puts it (sources
    renamed, re-weighted or changed in size): training goes on, from the recipe's data."""
    if not saved or "sources" not in saved:
        return []
    now = sampler.position(sequences)
    if saved["sources"] == now["sources"]:
        return []
    return [
        f"data: warning: the checkpoint's data position {saved['sources']} differs from {now['sources']} (data changed)"
    ]
