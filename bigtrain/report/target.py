"""What it costs a run to reach a target loss: the G_stack paper's "speedup" read off an eval curve."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence


def cost_to_reach(costs: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """The cost (tokens, FLOPs, ...) at which the curve `(costs[i], losses[i])` first reaches `target`,
    interpolated linearly between the two eval points around the crossing; None when it never does.
    A curve already at or below `target` at its first point costs that point's value."""
    if len(costs) != len(losses):
        raise ValueError("costs and losses differ in length")
    for i, (cost, loss) in enumerate(zip(costs, losses)):
        if loss <= target:
            if i == 0:
                return float(cost)
            c0, l0 = costs[i - 1], losses[i - 1]
            return float(c0 + (l0 - target) / (l0 - loss) * (cost - c0))
    return None


def value_at(costs: Sequence[float], losses: Sequence[float], cost: float) -> float | None:
    """The curve's loss at `cost`, interpolated linearly between the eval points around it; None outside
    the curve (before its first point or after its last)."""
    if len(costs) != len(losses):
        raise ValueError("costs and losses differ in length")
    for i in range(1, len(costs)):
        c0, c1 = costs[i - 1], costs[i]
        if c0 <= cost <= c1:
            return (
                float(losses[i - 1] + (cost - c0) / (c1 - c0) * (losses[i] - losses[i - 1]))
                if c1 > c0
                else float(losses[i])
            )
    return float(losses[0]) if len(costs) == 1 and costs[0] == cost else None


def saving(run_cost: float | None, baseline_cost: float | None) -> float | None:
    """Percent of the baseline's cost a run saves (negative: it costs more); None when either is unknown."""
    if run_cost is None or not baseline_cost:
        return None
    return 100.0 * (1.0 - run_cost / baseline_cost)


def frontier_cost(points: Sequence[tuple[float, float]], target: float) -> float | None:
    """The cost a compute frontier needs to reach `target`: `points` are (cost, final loss) of baselines that
    each ran a complete schedule at its own budget; interpolated linearly in log cost between the two
    budgets whose losses bracket `target`. None outside the frontier (above its cheapest loss, or below
    its most expensive one): a saving read there would be an extrapolation."""
    pts = sorted(points)
    for (c0, l0), (c1, l1) in itertools.pairwise(pts):
        if min(l0, l1) <= target <= max(l0, l1) and c0 > 0 and c1 > 0:
            if l0 == l1:
                return float(c0)
            frac = (l0 - target) / (l0 - l1)
            return float(math.exp(math.log(c0) + frac * (math.log(c1) - math.log(c0))))
    return float(pts[0][0]) if len(pts) == 1 and pts[0][1] == target else None
