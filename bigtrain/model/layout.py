"""Layout schemes: per-layer FFN width and head counts derived from the isotropic reference.

The recipe's `model:` section describes an isotropic reference (`intermediate_size`, `num_heads`,
`num_kv_heads`, the same in every layer); `model.layout` says how the layers depart from it.
hidden_size and head_dim never change across layers; a scheme only sets each layer's FFN width
(0 = attention-only layer) and its query / kv head counts.

- `uniform`: every layer is the reference.
- `ffn-concentrate` (Ikeda et al. 2025): `n_e = floor(ratio * L + 0.5)` consecutive layers keep an FFN
  (`position` first | middle | final), the others have none; the kept FFNs are widened so the
  non-embedding parameter count matches the reference (see `concentrate_ffn`).
- `lws` / `framed` / `reverse` / `crown` (OpenELM layer-wise scaling and the Baroian & Notebomer variants):
  per-layer multipliers beta (FFN) and alpha (attention) interpolated through the knots in
  `ffn_mult` / `attn_mult`, rounded to 2 decimals; FFN width = beta * d and query width = alpha * d,
  each made divisible OpenELM's way (`make_divisible`); kv heads = query heads / queries-per-kv.
- `frame: true` (any scheme; always on for `framed`) pins the first and last layers to the reference
  (or to `frame_ffn_mult` / `frame_attn_mult` x d), after the scheme laid out all layers.
- `match_params: true` (scaling schemes) multiplies the knots by one common factor, found by bisection,
  so the non-embedding parameter count is the closest attainable to the reference.

Every bad layout raises ValueError with a one-line message; the recipe loader turns it into an error
naming the recipe file, so it fails at load, before any process group starts.
Parameter counts come from `bigtrain.model.counting`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.counting import non_embedding_params


class LayoutOptions(Protocol):
    """How the per-layer sizes derive from the reference (the recipe's `model.layout`, as plain values)."""

    scheme: str
    ratio: float | None
    position: str
    ffn_rounding: str
    ffn_mult: list[float] | None
    attn_mult: list[float] | None
    frame: bool
    frame_ffn_mult: float | None
    frame_attn_mult: float | None
    match_params: bool
    match_scale: str
    ffn_multiple: int


class Architecture(Protocol):
    """The isotropic reference architecture and its layout: what this module reads (the recipe's `model:`
    section is one; the model layer does not depend on the recipe schema)."""

    num_layers: int
    hidden_size: int
    head_dim: int
    num_heads: int
    num_kv_heads: int | None
    intermediate_size: int
    vocab_size: int | None
    tie_embeddings: bool
    layout: LayoutOptions


SCALING_SCHEMES = ("lws", "framed", "reverse", "crown")
# OpenELM's multipliers (beta 0.5 -> 4.0, alpha 0.5 -> 1.0); reverse runs them backwards, crown peaks mid-depth.
DEFAULT_MULTS: dict[str, tuple[list[float], list[float]]] = {
    "lws": ([0.5, 4.0], [0.5, 1.0]),
    "framed": ([0.5, 4.0], [0.5, 1.0]),
    "reverse": ([4.0, 0.5], [1.0, 0.5]),
    "crown": ([0.5, 4.0, 0.5], [0.5, 1.0, 0.5]),
}
# ffn-concentrate must land this close to the reference (non-embedding parameters, hence the total too).
CONCENTRATE_TOLERANCE = 0.005


@dataclass(frozen=True)
class LayerPlan:
    """Per-layer sizes, plus what produced them (for `bigtrain-layout`)."""

    ffn: list[int]
    q_heads: list[int]
    kv_heads: list[int]
    ffn_mult: list[float] | None = None  # scaling schemes: beta per layer after scaling and rounding
    attn_mult: list[float] | None = None  # alpha per layer
    pinned: tuple[int, ...] = ()  # layers held at the frame size
    scale: float | None = None  # match_params: the common factor applied to the knots


def derive_layers(spec: Architecture) -> tuple[list[int], list[int], list[int]]:
    """(FFN sizes, query heads, kv heads), one entry per layer."""
    plan = plan_layers(spec)
    return plan.ffn, plan.q_heads, plan.kv_heads


def plan_layers(spec: Architecture) -> LayerPlan:
    check_layout_options(spec)
    scheme = spec.layout.scheme
    if scheme in SCALING_SCHEMES:
        plan = scaling_plan(spec)
    elif scheme == "ffn-concentrate":
        plan = concentrate_plan(spec)
    else:
        plan = pin_frame(spec, reference_plan(spec))
    check_heads(spec, plan)
    return plan


# --- shared pieces -----------------------------------------------------------------------------


def make_divisible(value: float, divisor: int) -> int:
    """OpenELM's rounding (MobileNet's `make_divisible`): the nearest multiple of `divisor` (halves up),
    one multiple higher if that lost more than 10% of `value`. Unlike OpenELM there is no floor of one
    divisor, so a zero multiplier gives zero (and zero heads is reported as an error)."""
    rounded = int(value + divisor / 2) // divisor * divisor
    if rounded < 0.9 * value:
        rounded += divisor
    return max(rounded, 0)


def kv_heads_of(spec: Architecture) -> int:
    return spec.num_kv_heads or spec.num_heads


def queries_per_kv(spec: Architecture) -> int:
    return spec.num_heads // kv_heads_of(spec)


def frame_layers(spec: Architecture) -> tuple[int, ...]:
    if not (spec.layout.frame or spec.layout.scheme == "framed"):
        return ()
    return tuple(sorted({0, spec.num_layers - 1}))


def frame_size(spec: Architecture) -> tuple[int, int, int]:
    """(FFN width, query heads, kv heads) of a pinned layer: the reference unless frame_*_mult say otherwise."""
    lay = spec.layout
    ffn = spec.intermediate_size
    q, kv = spec.num_heads, kv_heads_of(spec)
    if lay.frame_ffn_mult is not None:
        ffn = make_divisible(lay.frame_ffn_mult * spec.hidden_size, lay.ffn_multiple)
    if lay.frame_attn_mult is not None:
        q = query_heads(spec, lay.frame_attn_mult)
        kv = q // queries_per_kv(spec)
    return ffn, q, kv


def query_heads(spec: Architecture, alpha: float) -> int:
    """Query width alpha * d made divisible by head_dim x queries-per-kv, in heads."""
    divisor = spec.head_dim * queries_per_kv(spec)
    return make_divisible(alpha * spec.hidden_size, divisor) // spec.head_dim


def reference_plan(spec: Architecture) -> LayerPlan:
    n = spec.num_layers
    return LayerPlan([spec.intermediate_size] * n, [spec.num_heads] * n, [kv_heads_of(spec)] * n)


def pin_frame(spec: Architecture, plan: LayerPlan) -> LayerPlan:
    pinned = frame_layers(spec)
    if not pinned:
        return plan
    ffn, q, kv = list(plan.ffn), list(plan.q_heads), list(plan.kv_heads)
    for i in pinned:
        ffn[i], q[i], kv[i] = frame_size(spec)
    return LayerPlan(ffn, q, kv, plan.ffn_mult, plan.attn_mult, pinned, plan.scale)


def layers_params(spec: Architecture, ffn: list[int], q: list[int], kv: list[int]) -> int:
    """Non-embedding parameters of these per-layer sizes (counted by bigtrain.model.counting)."""
    cfg = BigTrainConfig(
        vocab_size=spec.vocab_size or 32000,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        head_dim=spec.head_dim,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=kv_heads_of(spec),
        intermediate_size=spec.intermediate_size,
        layer_intermediate_sizes=ffn,
        layer_num_attention_heads=q,
        layer_num_key_value_heads=kv,
        tie_word_embeddings=spec.tie_embeddings,
    )
    return non_embedding_params(cfg)


def reference_params(spec: Architecture) -> int:
    ref = reference_plan(spec)
    return layers_params(spec, ref.ffn, ref.q_heads, ref.kv_heads)


# --- checks ------------------------------------------------------------------------------------


def check_layout_options(spec: Architecture) -> None:
    """Options that contradict the scheme or the reference, as one-line ValueErrors."""
    lay, scheme = spec.layout, spec.layout.scheme
    kv = kv_heads_of(spec)
    if kv < 1 or spec.num_heads % kv:
        raise ValueError(f"num_heads {spec.num_heads} is not divisible by num_kv_heads {kv}")
    if lay.ffn_multiple < 1:
        raise ValueError(f"layout.ffn_multiple must be >= 1, got {lay.ffn_multiple}")
    if scheme == "ffn-concentrate":
        if lay.ratio is None:
            raise ValueError("layout.ratio is required for scheme ffn-concentrate (share of layers with an FFN)")
        if not 0.0 < lay.ratio <= 1.0:
            raise ValueError(f"layout.ratio must be in (0, 1], got {lay.ratio}")
        if math.floor(lay.ratio * spec.num_layers + 0.5) < 1:
            raise ValueError(
                f"layout.ratio {lay.ratio} keeps an FFN in no layer of {spec.num_layers} "
                f"(floor({lay.ratio} x {spec.num_layers} + 0.5) = 0)"
            )
    elif lay.ratio is not None:
        raise ValueError(f"layout.ratio only applies to scheme ffn-concentrate, not {scheme}")
    if scheme in SCALING_SCHEMES:
        want = 3 if scheme == "crown" else 2
        shape = "[edge, peak, edge]" if scheme == "crown" else "[first layer, last layer]"
        for name in ("ffn_mult", "attn_mult"):
            mults = getattr(lay, name)
            if mults is None:
                continue
            if len(mults) != want:
                raise ValueError(f"layout.{name} needs {want} values {shape} for {scheme}, got {len(mults)}")
            if any(m < 0 or not math.isfinite(m) for m in mults):
                raise ValueError(f"layout.{name} values must be >= 0, got {mults}")
            check_direction(scheme, name, mults)
    else:
        for name in ("ffn_mult", "attn_mult"):
            if getattr(lay, name) is not None:
                raise ValueError(f"layout.{name} only applies to schemes {', '.join(SCALING_SCHEMES)}")
    if scheme == "crown" and spec.num_layers < 3:
        raise ValueError(f"scheme crown needs at least 3 layers, got {spec.num_layers}")
    if not (lay.frame or scheme == "framed"):
        for name in ("frame_ffn_mult", "frame_attn_mult"):
            if getattr(lay, name) is not None:
                raise ValueError(f"layout.{name} needs frame: true (or scheme framed)")


def check_direction(scheme: str, name: str, mults: Sequence[float]) -> None:
    """A scheme's name says which way its sizes go; a contradicting list is a mistake, not a wish."""
    if scheme in ("lws", "framed") and mults[0] > mults[1]:
        raise ValueError(f"layout.{name} {list(mults)} shrinks with depth; scheme {scheme} grows (use reverse)")
    if scheme == "reverse" and mults[0] < mults[1]:
        raise ValueError(f"layout.{name} {list(mults)} grows with depth; scheme reverse shrinks (use lws)")
    if scheme == "crown" and mults[1] < max(mults[0], mults[2]):
        raise ValueError(f"layout.{name} {list(mults)}: the crown's middle value must be its peak")


def check_heads(spec: Architecture, plan: LayerPlan) -> None:
    d = spec.hidden_size
    for i, (q, kv) in enumerate(zip(plan.q_heads, plan.kv_heads)):
        if q < 1 or kv < 1:
            if i in plan.pinned:
                cause = f"layout.frame_attn_mult {spec.layout.frame_attn_mult} x hidden {d}"
            elif plan.attn_mult is not None:
                cause = f"attn multiplier {plan.attn_mult[i]:.2f} x hidden {d}"
            else:
                cause = "the layout"
            divisor = spec.head_dim * queries_per_kv(spec)
            raise ValueError(
                f"layer {i}: {cause} gives {q} query heads (query width is a multiple of "
                f"head_dim x queries-per-kv = {divisor})"
            )
        if q % kv:
            raise ValueError(f"layer {i}: {q} query heads are not divisible by {kv} kv heads")


# --- ffn-concentrate ---------------------------------------------------------------------------


def kept_layers(num_layers: int, ratio: float, position: str) -> list[int]:
    """The `n_e = floor(ratio * L + 0.5)` consecutive layers that keep an FFN. For `middle` the FFN-less
    layers are split between bottom and top; an odd one out goes to the top (`(L - n_e) // 2` below)."""
    n_e = math.floor(ratio * num_layers + 0.5)
    start = {"first": 0, "final": num_layers - n_e, "middle": (num_layers - n_e) // 2}[position]
    return list(range(start, start + n_e))


def concentrate_plan(spec: Architecture) -> LayerPlan:
    lay, n = spec.layout, spec.num_layers
    assert lay.ratio is not None  # check_layout_options
    ref = reference_plan(spec)
    kept = kept_layers(n, lay.ratio, lay.position)
    pinned = frame_layers(spec)
    if len(kept) == n and not pinned:
        return ref  # r = 100% is the uniform baseline itself
    free = [i for i in kept if i not in pinned]
    if not free:
        raise ValueError(f"ffn-concentrate: the frame pins every layer that keeps an FFN ({kept})")
    base = pin_frame(spec, LayerPlan([0] * n, ref.q_heads, ref.kv_heads))
    widths = concentrate_ffn(spec, base, free)
    ffn = list(base.ffn)
    for i, w in zip(free, widths):
        ffn[i] = w
    return LayerPlan(ffn, base.q_heads, base.kv_heads, pinned=pinned)


def concentrate_ffn(spec: Architecture, base: LayerPlan, free: list[int]) -> list[int]:
    """FFN widths of the kept (non-pinned) layers, multiples of `ffn_multiple` (m), matching the reference.

    `common` (the paper's rule, d_f' = d_f * L / n_e rounded): one width k * m for every kept layer, k chosen
    so the non-embedding count is the closest to the reference. `spread`: k units of m over the kept layers,
    as evenly as possible (lower layers take the extra units), k again the closest; this is always within
    half a unit of the reference. Either way the result must be within CONCENTRATE_TOLERANCE (0.5%).
    """
    lay, m = spec.layout, spec.layout.ffn_multiple

    def widths(k: int) -> list[int]:
        if lay.ffn_rounding == "common":
            return [k * m] * len(free)
        each, extra = divmod(k, len(free))
        return [(each + (j < extra)) * m for j in range(len(free))]

    def total(k: int) -> int:
        ffn = list(base.ffn)
        for i, w in zip(free, widths(k)):
            ffn[i] = w
        return layers_params(spec, ffn, base.q_heads, base.kv_heads)

    target = reference_params(spec)
    lowest = 1 if lay.ffn_rounding == "common" else len(free)
    k = closest_int(total, target, lowest)
    got = total(k)
    off = (got - target) / target
    if abs(off) > CONCENTRATE_TOLERANCE:
        raise ValueError(
            f"ffn-concentrate: kept FFN widths {sorted(set(widths(k)))} (multiples of {m}) give {got:,} "
            f"non-embedding parameters, {off:+.2%} off the uniform {target:,} (limit "
            f"{CONCENTRATE_TOLERANCE:.1%}); use a smaller layout.ffn_multiple or layout.ffn_rounding: spread"
        )
    return widths(k)


def closest_int(total: Callable[[int], int], target: int, lowest: int) -> int:
    """The k >= lowest whose non-decreasing `total(k)` is closest to target (ties: the smaller k)."""
    if total(lowest) >= target:
        return lowest
    lo, hi = lowest, lowest * 2
    while total(hi) < target:  # total(lo) < target throughout
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(mid) < target else (lo, mid)
    return lo if target - total(lo) <= total(hi) - target else hi


# --- layer-wise scaling (OpenELM) and its variants ---------------------------------------------


def interpolate(knots: Sequence[float], num_layers: int, scheme: str) -> list[float]:
    """Raw per-layer multipliers. Two knots: linear from the first layer to the last (OpenELM uses
    numpy.linspace). Crown, three knots [edge, peak, edge]: knots at layers 0, ceil(N/2)-1, [ceil(N/2),] N-1;
    for even N the two middle layers are both at the peak, for odd N the single middle layer is."""
    if scheme != "crown":
        return [float(v) for v in np.linspace(knots[0], knots[1], num=num_layers)]
    half = math.ceil(num_layers / 2)
    rise = np.linspace(knots[0], knots[1], num=half)
    fall = np.linspace(knots[1], knots[2], num=half)
    if num_layers % 2:
        fall = fall[1:]  # odd N: the peak layer is shared by both halves
    return [float(v) for v in (*rise, *fall)]


def scaled_layers(
    spec: Architecture, betas: list[float], alphas: list[float], ffn_scale: float, attn_scale: float
) -> LayerPlan:
    """Sizes for raw multipliers times the scales: round to 2 decimals, then make divisible (OpenELM)."""
    beta = [round(b * ffn_scale, 2) for b in betas]
    alpha = [round(a * attn_scale, 2) for a in alphas]
    ffn = [make_divisible(b * spec.hidden_size, spec.layout.ffn_multiple) for b in beta]
    q = [query_heads(spec, a) for a in alpha]
    kv = [h // queries_per_kv(spec) for h in q]
    return pin_frame(spec, LayerPlan(ffn, q, kv, beta, alpha))


def scaling_plan(spec: Architecture) -> LayerPlan:
    lay, n, scheme = spec.layout, spec.num_layers, spec.layout.scheme
    default_ffn, default_attn = DEFAULT_MULTS[scheme]
    betas = interpolate(lay.ffn_mult or default_ffn, n, scheme)
    alphas = interpolate(lay.attn_mult or default_attn, n, scheme)
    if not lay.match_params:
        return scaled_layers(spec, betas, alphas, 1.0, 1.0)
    scale = match_scale(spec, betas, alphas)
    plan = scaled_layers(spec, betas, alphas, *scales_for(spec, scale))
    return LayerPlan(plan.ffn, plan.q_heads, plan.kv_heads, plan.ffn_mult, plan.attn_mult, plan.pinned, scale)


def scales_for(spec: Architecture, s: float) -> tuple[float, float]:
    """(FFN scale, attention scale) for a common factor s, by `layout.match_scale`."""
    which = spec.layout.match_scale
    return (s if which in ("both", "ffn") else 1.0, s if which in ("both", "attn") else 1.0)


def match_scale(spec: Architecture, betas: list[float], alphas: list[float], steps: int = 60) -> float:
    """The common factor s on the multipliers that brings the non-embedding count closest to the reference.

    The count is a non-decreasing step function of s (rounding), so: double an upper bound until it
    reaches the target, bisect the crossing (60 halvings), and take the closer side. Pinned (frame)
    layers are not scaled.
    """
    target = reference_params(spec)

    def total(s: float) -> int:
        p = scaled_layers(spec, betas, alphas, *scales_for(spec, s))
        return layers_params(spec, p.ffn, p.q_heads, p.kv_heads)

    if total(0.0) > target:
        raise ValueError(
            f"match_params: the fixed part of the layout ({total(0.0):,} parameters) already exceeds the "
            f"reference {target:,}"
        )
    lo, hi = 0.0, 1.0
    while total(hi) < target:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError(f"match_params: no scale of the multipliers reaches the reference {target:,}")
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < target else (lo, mid)
    return lo if target - total(lo) <= total(hi) - target else hi
