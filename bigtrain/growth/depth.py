"""Depth growth: which source layer(s) each target layer is built from, and how.

A depth operator is a *plan*: one `LayerPlan` per target layer. The tensor work happens per layer
(`build_layer`), so growing streams layer by layer. Conventions (documented in docs/growth.md):

- `stack` (G_stack): target i <- source i mod L. The first copy (i < L) is "inherited", later ones "new".
- `interleave`: each source layer repeated in place, repeats spread evenly; the first of each run is
  "inherited".
- `step`, `zero-depth`, `random-depth` insert new layers into the gaps between the *upper* source
  layers: with n new layers and n <= L-1, one into each of the n topmost gaps (between layers L-n-1|L-n,
  ..., L-2|L-1), so the top source layer stays on top; with more, every gap gets floor(n/(L-1)) and the
  upper gaps one more. A one-layer source gets them on top. A new layer takes the sizes of its lower
  neighbour. Inits: `mean` (of the two neighbours; the lower neighbour's copy where their shapes
  differ), `copy` (of the lower neighbour), `zero` (copy with o_proj and down_proj zeroed: identity
  through the residual), `identity` (zero-depth: fresh random q/k/v/gate/up, zero o_proj/down_proj),
  `random` (random-depth: a fresh block).
- `placement: after-each` (the insert operators): the new layers go right after every source layer,
  n // L after each and the upper layers one more for the remainder; with `zero-depth` each new layer
  is then a zeroed copy of the layer below it (init `zero`: its q/k/v/gate/up and norms copied,
  o_proj/down_proj zero), the G_zero depth of the G_stack authors' code (tongxuluo/prts,
  G_zero_depthwise.py, `lemon` branch: target layer i <- source layer i // (L'/L), every copy after the
  first with o_proj and down_proj zeroed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import torch

from bigtrain.errors import BigtrainError
from bigtrain.growth.operator import DepthArgs, LayerPlan, Operator
from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.param_shapes import layer_shapes

STEP_INITS = ("mean", "copy", "zero")
PLACEMENTS = ("upper", "after-each")  # where the insert operators (step, zero-depth, random-depth) put new layers
INSERT_OPS = ("step", "zero-depth", "random-depth")
OUTPUT_PROJECTIONS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")  # write into the residual stream


def identity_plan(num_layers: int) -> list[LayerPlan]:
    return [LayerPlan(i, "inherited", i, "inherited") for i in range(num_layers)]


def _check_target(L: int, n: int, op: str) -> None:
    if n < L:
        raise BigtrainError(f"--op {op}: target of {n} layers is smaller than the source's {L}")


def stack_plan(L: int, n: int) -> list[LayerPlan]:
    _check_target(L, n, "stack")
    return [
        LayerPlan(i, "inherited", i, "inherited") if i < L else LayerPlan(i, "new", i % L, "copy") for i in range(n)
    ]


def interleave_plan(L: int, n: int) -> list[LayerPlan]:
    _check_target(L, n, "interleave")
    repeats = [n // L + (1 if j < n % L else 0) for j in range(L)]
    plan: list[LayerPlan] = []
    for j, r in enumerate(repeats):
        for k in range(r):
            i = len(plan)
            plan.append(LayerPlan(i, "inherited", j, "inherited") if k == 0 else LayerPlan(i, "new", j, "copy"))
    return plan


def upper_gap_counts(L: int, n_new: int) -> list[int]:
    """How many new layers go *above* each source layer j (the gap j|j+1; for L == 1 above the top)."""
    counts = [0] * L
    if L == 1:
        counts[0] = n_new
        return counts
    gaps = L - 1
    base, extra = divmod(n_new, gaps)
    for g in range(gaps):  # gap g sits between layers g and g+1; the upper gaps take the remainder
        counts[g] = base + (1 if g >= gaps - extra else 0)
    return counts


def after_each_counts(L: int, n_new: int) -> list[int]:
    """How many new layers go right after each source layer j: n // L each, the upper layers the rest."""
    base, extra = divmod(n_new, L)
    return [base + (1 if j >= L - extra else 0) for j in range(L)]


def insert_plan(cfg: BigTrainConfig, n: int, op: str, init: str, placement: str = "upper") -> list[LayerPlan]:
    L = cfg.num_hidden_layers
    _check_target(L, n, op)
    counts = after_each_counts(L, n - L) if placement == "after-each" else upper_gap_counts(L, n - L)
    plan: list[LayerPlan] = []
    for j, count in enumerate(counts):
        plan.append(LayerPlan(len(plan), "inherited", j, "inherited"))
        for _ in range(count):
            upper = j + 1 if j + 1 < L else None
            how = init
            if init == "mean" and (upper is None or _sizes(cfg, j) != _sizes(cfg, upper)):
                how = "copy"  # no upper neighbour, or one of another shape: the lower neighbour alone
            plan.append(LayerPlan(len(plan), "new", j, how, upper if how == "mean" else None))
    return plan


def _sizes(cfg: BigTrainConfig, j: int) -> tuple[int, int, int]:
    return (
        cfg.layer_intermediate_sizes[j],
        cfg.layer_num_attention_heads[j],
        cfg.layer_num_key_value_heads[j],
    )


def needs_layers(a: DepthArgs) -> int:
    if a.layers is None:
        raise BigtrainError(f"--op {a.op} needs --layers (the target number of layers)")
    return a.layers


def step_layers(cfg: BigTrainConfig, a: DepthArgs) -> list[LayerPlan]:
    init = a.init or "mean"
    if init not in STEP_INITS:
        raise BigtrainError(f"--op step: --init {init} is not one of {', '.join(STEP_INITS)}")
    return insert_plan(cfg, needs_layers(a), a.op, init, a.placement)


def zero_depth_layers(cfg: BigTrainConfig, a: DepthArgs) -> list[LayerPlan]:
    # after-each: the authors' G_zero, a zeroed copy of the layer below
    init = "zero" if a.placement == "after-each" else "identity"
    return insert_plan(cfg, needs_layers(a), a.op, init, a.placement)


def depth_preserves_function(plan: list[LayerPlan]) -> bool:
    """Exactly function-preserving: every new layer adds zero to the residual stream."""
    return all(p.origin == "inherited" or p.init in ("zero", "identity") for p in plan)


def grown_layer_sizes(cfg: BigTrainConfig, plan: list[LayerPlan]) -> tuple[list[int], list[int], list[int]]:
    sizes = [_sizes(cfg, p.source_layer) for p in plan]
    return [s[0] for s in sizes], [s[1] for s in sizes], [s[2] for s in sizes]


def layer_builders(
    plan: LayerPlan,
    cfg: BigTrainConfig,
    tensors: Mapping[str, torch.Tensor],
    generator: Callable[[str], torch.Generator],
) -> dict[str, Callable[[], torch.Tensor]]:
    """One target layer at the source's width: name inside the layer -> a function computing that
    tensor when called (float32; copies in their stored dtype), so a layer is never held whole."""
    j = plan.source_layer
    return {
        name: partial(_build, plan, name, shape, cfg, tensors, generator)
        for name, shape in layer_shapes(cfg, j).items()
    }


def build_layer(
    plan: LayerPlan,
    cfg: BigTrainConfig,
    tensors: Mapping[str, torch.Tensor],
    generator: Callable[[str], torch.Generator],
) -> dict[str, torch.Tensor]:
    """The whole layer at once (tests, small models)."""
    return {name: make() for name, make in layer_builders(plan, cfg, tensors, generator).items()}


def _build(
    plan: LayerPlan,
    name: str,
    shape: tuple[int, ...],
    cfg: BigTrainConfig,
    tensors: Mapping[str, torch.Tensor],
    generator: Callable[[str], torch.Generator],
) -> torch.Tensor:
    if plan.init in ("identity", "random"):
        if name.endswith("layernorm.weight"):
            return torch.ones(shape)
        if plan.init == "identity" and name in OUTPUT_PROJECTIONS:
            return torch.zeros(shape)
        return torch.randn(shape, generator=generator(f"layer{plan.index}.{name}")) * cfg.initializer_range
    if plan.init == "zero" and name in OUTPUT_PROJECTIONS:
        return torch.zeros(shape)
    own = tensors[f"model.layers.{plan.source_layer}.{name}"]
    if plan.init == "mean":
        return (own.float() + tensors[f"model.layers.{plan.mean_with}.{name}"].float()) / 2
    return own  # a copy keeps its stored dtype: nothing to compute


G_STACK = "Du et al., NeurIPS 2024, arXiv 2405.15319"
PRTS = "https://github.com/tongxuluo/prts"
OPERATORS = (
    Operator(
        "stack",
        "depth",
        "G_stack: target layer i is source layer i mod L (whole-model repetition)",
        G_STACK,
        PRTS,
        ("layers",),
        "no",
        plan=lambda cfg, a: stack_plan(cfg.num_hidden_layers, needs_layers(a)),
    ),
    Operator(
        "interleave",
        "depth",
        "each source layer repeated in place, repeats spread evenly",
        "bigtrain's in-place variant of stacking (no paper)",
        None,
        ("layers",),
        "no",
        plan=lambda cfg, a: interleave_plan(cfg.num_hidden_layers, needs_layers(a)),
    ),
    Operator(
        "step",
        "depth",
        "STEP: new layers inserted among the upper layers, init mean, copy or zero",
        "Yano, Ito, Suzuki, NAACL 2025, arXiv 2504.04151",
        None,
        ("layers", "init", "placement"),
        "with --init zero",
        plan=step_layers,
    ),
    Operator(
        "zero-depth",
        "depth",
        "G_zero / Net2Deeper: inserted blocks with o_proj and down_proj zero (identities)",
        G_STACK,
        PRTS,
        ("layers", "placement"),
        "yes",
        plan=zero_depth_layers,
    ),
    Operator(
        "random-depth",
        "depth",
        "G_random without the MSG mask: inserted fresh random blocks",
        G_STACK,
        PRTS,
        ("layers", "placement"),
        "no",
        plan=lambda cfg, a: insert_plan(cfg, needs_layers(a), a.op, "random", a.placement),
    ),
)
