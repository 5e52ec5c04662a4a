"""`block-expand`: LLaMA Pro's block expansion (Wu et al., ACL 2024, arXiv 2401.02415; TencentARC/LLaMA-Pro).

`--layers N` from L source layers: P = N - L new blocks, each a copy of the source layer before it
with `o_proj` and `down_proj` zeroed, so it adds nothing to the residual stream: exactly
function-preserving. Placement, as the authors' scripts/block_expansion.py does it: with
split = L // P a new block goes after every source layer i with (i + 1) % split == 0 (32 -> 40: after
layers 3, 7, ..., 31). Where that rule would not give exactly P blocks (their script asserts then),
the L layers form P groups as even as possible, the larger groups at the bottom, and a block follows
each group. P <= L. Source layers are "inherited", the new blocks "new" (init `zero`); LLaMA Pro trains
only the new blocks (a stage's `train.freeze_inherited`).
"""

from __future__ import annotations

from bigtrain.errors import BigtrainError
from bigtrain.growth.depth import LayerPlan, needs_layers
from bigtrain.growth.operator import DepthArgs, Operator
from bigtrain.model.configuration import BigTrainConfig


def expansion_points(L: int, P: int) -> list[int]:
    """The source layers a new block follows."""
    if P == 0:
        return []
    split = L // P
    points = [i for i in range(L) if (i + 1) % split == 0]
    if len(points) == P:
        return points
    sizes = [L // P + (1 if g < L % P else 0) for g in range(P)]
    return [sum(sizes[: g + 1]) - 1 for g in range(P)]


def block_expand_layers(cfg: BigTrainConfig, a: DepthArgs) -> list[LayerPlan]:
    L, n = cfg.num_hidden_layers, needs_layers(a)
    if not L <= n <= 2 * L:
        raise BigtrainError(f"--op block-expand: --layers {n} must be in [{L}, {2 * L}] (at most one block per layer)")
    points = set(expansion_points(L, n - L))
    plan: list[LayerPlan] = []
    for j in range(L):
        plan.append(LayerPlan(len(plan), "inherited", j, "inherited"))
        if j in points:
            plan.append(LayerPlan(len(plan), "new", j, "zero"))
    return plan


OPERATOR = Operator(
    "block-expand",
    "depth",
    "LLaMA Pro block expansion: a zeroed copy (o_proj, down_proj = 0) after every L/P-th layer",
    "Wu et al., ACL 2024, arXiv 2401.02415",
    "https://github.com/TencentARC/LLaMA-Pro",
    ("layers",),
    "yes",
    plan=block_expand_layers,
)
