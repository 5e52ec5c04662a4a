"""The global, seeded order of training sequences.

Global batch k holds the sequences at global positions S + k*G .. S + (k+1)*G - 1 of a per-epoch
permutation, S the run's `data.start_sequence` (a later stage continues where the one before it ended);
the world size only decides how a global batch is split (micro step, then rank), never which sequences it
holds. So a run resumed on a different number of ranks, or 2 ranks against 1, sees the same data in the
same steps. A run's `sequences` count (what the loop passes) is relative to S; data positions in the
checkpoint are absolute.

The per-epoch permutation is, by default, a keyed Feistel network over the position (`FeistelPermutation`):
the i-th index costs O(1) time and memory, where the first order (`permutation`, numpy's shuffle of
arange(n)) held n int64 per source and epoch (392 MB per rank at 49M sequences). The checkpoint records
the order (`data.order`); a run resumed from a checkpoint keeps the order it started with, and one saved
before orders were recorded is `permutation`. BIGTRAIN_DATA_ORDER=permutation starts a new run in the old
order (a later stage of a pipeline whose first stages ran in it).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np

from bigtrain.errors import BigtrainError

FEISTEL = "feistel"
PERMUTATION = "permutation"  # the first order: materialised, kept for runs that began with it
ORDERS = (FEISTEL, PERMUTATION)
ORDER_ENV = "BIGTRAIN_DATA_ORDER"

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a strong 64-bit mix, vectorised (uint64 arithmetic wraps)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class FeistelPermutation:
    """A seeded bijection of [0, n), computed per position: a balanced Feistel network on 2h >= log2(n) bits
    (a bijection of [0, 4^h) whatever the round function), restricted to [0, n) by cycle walking (apply it
    again while the result is >= n). 4^h < 4n, so a position takes under 4 applications on average."""

    ROUNDS = 6  # 4 already make a pseudo-random permutation (Luby-Rackoff); 2 more for mixing quality

    def __init__(self, n: int, key: list[int]) -> None:
        self.n = n
        self.half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = np.random.SeedSequence(key).generate_state(self.ROUNDS, dtype=np.uint64)

    def _once(self, x: np.ndarray) -> np.ndarray:
        h = np.uint64(self.half)
        left, right = x >> h, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << h) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        x = np.asarray(positions, dtype=np.uint64)
        if x.size and int(x.max()) >= self.n:
            raise ValueError(f"position {int(x.max())} outside [0, {self.n})")
        x = self._once(x)
        out = x >= np.uint64(self.n)
        while out.any():  # cycle walking: stays in the cycle of the input, so still a bijection of [0, n)
            x[out] = self._once(x[out])
            out[out] = x[out] >= np.uint64(self.n)
        return x.astype(np.int64)


def new_run_order() -> str:
    order = os.environ.get(ORDER_ENV) or FEISTEL
    if order not in ORDERS:
        raise BigtrainError(f"{ORDER_ENV}={order!r}: one of {', '.join(ORDERS)}")
    return order


def saved_order(saved: dict | None) -> str:
    """The order a run continues in: its checkpoint's (`permutation` for one saved before orders were
    recorded); a run without a checkpoint starts in `new_run_order()`."""
    if not saved or "sources" not in saved:
        return new_run_order()
    order = saved.get("order", PERMUTATION)
    if order not in ORDERS:
        raise BigtrainError(f"checkpoint data.order {order!r}: this version knows {', '.join(ORDERS)}")
    return order


class GlobalBatchSampler:
    def __init__(self, num_sequences: int, global_batch: int, seed: int, start: int = 0, order: str = FEISTEL) -> None:
        if num_sequences < global_batch:
            raise BigtrainError(
                f"the training data has {num_sequences} sequences, fewer than one global batch of {global_batch}"
            )
        self.n, self.global_batch, self.seed, self.start = num_sequences, global_batch, seed, start
        self.order = order

    def _shuffle(self, key: tuple[int, ...], n: int) -> Any:
        """The shuffle of [0, n) for `key` (seed, [source,] epoch): a function of the position. Kept for the
        two epochs a batch may span, per source (a `permutation` one is n int64)."""
        cache: OrderedDict = self.__dict__.setdefault("_shuffles", OrderedDict())
        if key not in cache:
            while len(cache) >= 2 * len(self.source_sizes()):
                cache.popitem(last=False)
            if self.order == PERMUTATION:
                cache[key] = np.random.default_rng(list(key)).permutation(n).__getitem__
            else:
                cache[key] = FeistelPermutation(n, list(key))
        cache.move_to_end(key)
        return cache[key]

    def indices(self, positions: np.ndarray) -> np.ndarray:
        """The sequence at each absolute global position."""
        out = np.empty(len(positions), dtype=np.int64)
        epochs = positions // self.n
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._shuffle((self.seed, int(epoch)), self.n)(positions[sel] % self.n)
        return out

    def global_batch_indices(self, batch: int) -> np.ndarray:
        start = self.start + batch * self.global_batch
        return self.indices(np.arange(start, start + self.global_batch, dtype=np.int64))

    def micro_batch_indices(self, batch: int, micro_step: int, rank: int, world: int, micro: int) -> np.ndarray:
        """This rank's share of one micro step of global batch `batch` (layout: [micro_step][rank][micro]);
        only its own positions are computed."""
        first = self.start + batch * self.global_batch + (micro_step * world + rank) * micro
        stop = min(first + micro, self.start + (batch + 1) * self.global_batch)
        return self.indices(np.arange(first, max(first, stop), dtype=np.int64))

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
        out: dict = {"sequences": sequences, "sources": sources, "order": self.order}
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
        self,
        counts: list[int],
        weights: list[float],
        names: list[str],
        global_batch: int,
        seed: int,
        start: int = 0,
        order: str = FEISTEL,
    ):
        if any(c == 0 for c in counts):
            raise BigtrainError(f"data.sources[{names[counts.index(0)]}]: no training sequences")
        self.counts, self.names = counts, names
        self.n, self.global_batch, self.seed, self.start = sum(counts), global_batch, seed, start
        self.order = order
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

    def draws_before(self, position: int) -> np.ndarray:
        """Per source: how many of positions [0, position) went to it."""
        full, rest = divmod(position, MIXTURE_BLOCK)
        return full * self.prefix[:, MIXTURE_BLOCK] + self.prefix[:, rest]

    def draws(self, position: int) -> dict[str, int]:
        return {name: int(d) for name, d in zip(self.names, self.draws_before(position), strict=True)}

    def source_sizes(self) -> dict[str, int]:
        return dict(zip(self.names, self.counts, strict=True))

    def indices(self, positions: np.ndarray) -> np.ndarray:
        sources = self.schedule[positions % MIXTURE_BLOCK]
        block_start = (positions // MIXTURE_BLOCK) * self.prefix[sources, MIXTURE_BLOCK]
        draws = block_start + self.prefix[sources, positions % MIXTURE_BLOCK]  # j: earlier draws of that source
        counts = np.asarray(self.counts)[sources]
        epochs = draws // counts
        out = np.empty(len(positions), dtype=np.int64)
        for s, e in {(int(a), int(b)) for a, b in zip(sources, epochs, strict=True)}:
            sel = (sources == s) & (epochs == e)
            out[sel] = self.offsets[s] + self._shuffle((self.seed, s, e), self.counts[s])(draws[sel] % self.counts[s])
        return out

    def new_epochs(self, batch: int) -> list[str]:
        start = self.start + batch * self.global_batch
        before, after = self.draws_before(start), self.draws_before(start + self.global_batch)
        return [
            f"data: source {name!r} starts epoch {e} (its {c} sequences repeat)"
            for name, a, b, c in zip(self.names, before, after, self.counts, strict=True)
            for e in _crossed(int(a), int(b), c)
        ]


class StreamSampler(GlobalBatchSampler):
    """Stream order (bigtrain/data/stream.py): global batch k is positions k*G .. k*G+G-1. `stream`: a
    TokenStream (anything with `count` and `position(sequences)`)."""

    def __init__(self, stream: Any, global_batch: int) -> None:
        self.stream, self.n, self.global_batch, self.seed, self.start = stream, stream.count, global_batch, 0, 0
        self.order = "stream"

    def indices(self, positions: np.ndarray) -> np.ndarray:
        return positions

    def position(self, sequences: int) -> dict:
        at = self.stream.position(sequences)
        return {"sequences": sequences, "sources": {"train": {"sequences": sequences, **at}}, "stream": at}

    def new_epochs(self, batch: int) -> list[str]:
        return []


def make_sampler(train, global_batch: int, seed: int, start: int = 0, resume: dict | None = None) -> GlobalBatchSampler:
    """One source: the plain global permutation; a mixture (`bigtrain.data.dataset.Mixture`): weighted.
    `start`: the global position the run begins at (`data.start_sequence`); `resume`: the checkpoint's data
    position, whose order the run keeps (`saved_order`)."""
    if getattr(train, "streaming", False):
        return StreamSampler(train, global_batch)  # a stream starts at its beginning (docs/data.md)
    order = saved_order(resume)
    parts = getattr(train, "parts", None)
    if parts is None:
        return GlobalBatchSampler(train.count, global_batch, seed, start, order)
    return MixtureSampler([p.count for p in parts], train.weights, train.names, global_batch, seed, start, order)


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
