"""STEP's stage-size search (Yano et al., NAACL 2025, section 3): the new-layer counts per stage that minimise
the largest stage's cost (peak memory, or the paper's layers-only model)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable


def compositions(total: int, parts: int) -> Iterable[tuple[int, ...]]:
    """Every way to write `total` as an ordered sum of `parts` positive integers."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(b - a for a, b in itertools.pairwise(bounds))


def search_stage_sizes(
    total_layers: int, parts: int, stage_cost: Callable[[int, int], float]
) -> tuple[tuple[int, ...], list[float]]:
    """Brute force over compositions: the new-layer counts (n_1..n_K) minimising max_i cost(N_{i-1}, n_i).

    Ties go to the composition found first (itertools order), i.e. the one with the smallest first stages.
    """
    best: tuple[tuple[int, ...], list[float]] | None = None
    cache: dict[tuple[int, int], float] = {}
    for comp in compositions(total_layers, parts):
        costs, done = [], 0
        for n in comp:
            key = (done, n)
            if key not in cache:
                cache[key] = stage_cost(done, n)
            costs.append(cache[key])
            done += n
        if best is None or max(costs) < max(best[1]):
            best = (comp, costs)
    if best is None:
        raise ValueError(f"cannot split {total_layers} layers into {parts} stages")
    return best


def paper_stage_cost(lora_ratio: float) -> Callable[[int, int], float]:
    """The paper's layers-only model in units of P_layer: 16 n_i + 2 N_{i-1} + 16 N_{i-1} E/P_layer."""
    return lambda inherited, new: 16 * new + 2 * inherited + 16 * inherited * lora_ratio
