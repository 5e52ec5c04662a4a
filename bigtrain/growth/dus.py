"""`dus`: SOLAR's depth up-scaling (Kim et al. 2023, arXiv 2312.15166).

Two copies of the n-layer model; the first loses its top m layers, the second its bottom m; the two are
concatenated: target = source layers [0, n-m) then [m, n), 2(n - m) layers (n = 32, m = 8 -> 48).
Embeddings, final norm and LM head are the source's. `--drop m`, or `--layers N` (then m = n - N/2);
m <= n/2 so that every source layer is kept. Origins: the first occurrence of each source layer is
"inherited" (layers [0, n-m) of the first copy and [n-m, n) of the second), the second occurrence of
layers [m, n-m) is "new" (a copy). Not function-preserving.
"""

from __future__ import annotations

from bigtrain.errors import BigtrainError
from bigtrain.growth.depth import LayerPlan
from bigtrain.growth.operator import DepthArgs, Operator
from bigtrain.model.configuration import BigTrainConfig


def dropped(L: int, layers: int | None, drop: int | None) -> int:
    """m, from --drop or from --layers (which must then agree)."""
    if drop is None:
        if layers is None:
            raise BigtrainError("--op dus needs --drop (layers dropped from each copy) or --layers")
        if layers % 2:
            raise BigtrainError(f"--op dus: --layers {layers} is odd; depth up-scaling gives 2 (L - drop) layers")
        drop = L - layers // 2
    if not 0 <= drop <= L // 2:
        raise BigtrainError(f"--op dus: --drop {drop} must be in [0, {L // 2}] for a {L}-layer source")
    if layers is not None and layers != 2 * (L - drop):
        raise BigtrainError(f"--op dus: --drop {drop} gives {2 * (L - drop)} layers, not --layers {layers}")
    return drop


def source_order(L: int, m: int) -> list[int]:
    return list(range(L - m)) + list(range(m, L))


def dus_layers(cfg: BigTrainConfig, a: DepthArgs) -> list[LayerPlan]:
    L = cfg.num_hidden_layers
    seen: set[int] = set()
    plan = []
    for i, j in enumerate(source_order(L, dropped(L, a.layers, a.drop))):
        plan.append(LayerPlan(i, "new", j, "copy") if j in seen else LayerPlan(i, "inherited", j, "inherited"))
        seen.add(j)
    return plan


OPERATOR = Operator(
    "dus",
    "depth",
    "SOLAR depth up-scaling: layers [0, L-m) then [m, L) of two copies",
    "Kim et al. 2023 (SOLAR 10.7B), arXiv 2312.15166",
    None,
    ("layers", "drop"),
    "no",
    plan=dus_layers,
)
