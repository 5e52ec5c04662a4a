"""Width growth: hidden size, per-layer FFN width and attention heads, tensor by tensor.

Every grown axis has an `AxisMap`: for each target index, the source index it replicates and
whether it is new. Old units keep their place; new ones replicate a random source unit (Net2Net's
random mapping, seeded). Heads are mapped in kv groups so a query head keeps attending with a copy
of its own kv head (grouped-query attention stays intact).

Operators (docs/growth.md has the derivations):
- `net2net` (bert2BERT FPI): exactly function-preserving, RMSNorm included. The residual stream is
  widened as h'_i = c_j h_j with j = src(i), n_j the replica count of j and c_j = sqrt(D / (d n_j)):
  then mean(h'^2) = mean(h^2), so every RMSNorm sees the same scale. Residual writers (embedding
  columns, o_proj/down_proj rows) are scaled by c_j, readers of a normalised input (q/k/v/gate/up,
  lm_head columns) divided by n_j c_j, and consumers of duplicated FFN units / heads (down_proj,
  o_proj columns) divided by the unit's replica count. With tied embeddings the LM head sees c_j
  instead of 1/(n_j c_j), a uniform factor D/d, which the final norm's gain absorbs.
- `aki` (bert2BERT AKI): as net2net, but new FFN units and heads take their incoming and outgoing
  weights from the layer above (the top layer uses its own): breaks symmetry, not preserving.
- `zero-width`: new entries are random where they read and zero where they write into the residual
  stream or out of a new unit; RMSNorm gains are scaled by sqrt(d/D) for the zero channels. Exact
  when the hidden size is unchanged, equal up to the norm's eps otherwise.
- `random-width`: new entries random (std = initializer_range), old ones unchanged; not preserving.
- `mixture`: bigtrain/growth/mixture.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bigtrain.errors import BigtrainError
from bigtrain.model.configuration import BigTrainConfig

WIDTH_OPS = ("net2net", "aki", "zero-width", "random-width", "mixture")


@dataclass(frozen=True)
class AxisMap:
    src: torch.Tensor  # long, one source index per target index
    new: torch.Tensor  # bool, True where the target index is not an original unit
    n_source: int

    @property
    def counts(self) -> torch.Tensor:
        """How many target indices replicate each source index (float, length n_source)."""
        return torch.bincount(self.src, minlength=self.n_source).float()

    @property
    def grows(self) -> bool:
        return len(self.src) != self.n_source

    def rows(self, block: int) -> AxisMap:
        """The map of a head axis expanded to the head_dim rows of a projection."""
        src = (self.src[:, None] * block + torch.arange(block)).flatten()
        return AxisMap(src, self.new.repeat_interleave(block), self.n_source * block)


def identity_map(n: int) -> AxisMap:
    return AxisMap(torch.arange(n), torch.zeros(n, dtype=torch.bool), n)


def unit_map(n_src: int, n_tgt: int, g: torch.Generator) -> AxisMap:
    extra = torch.randint(n_src, (n_tgt - n_src,), generator=g) if n_tgt > n_src else torch.empty(0, dtype=torch.long)
    return AxisMap(torch.cat([torch.arange(n_src), extra]), torch.arange(n_tgt) >= n_src, n_src)


def head_maps(q_s: int, kv_s: int, q_t: int, kv_t: int, g: torch.Generator) -> tuple[AxisMap, AxisMap]:
    """(query-head map, kv-head map): target kv head k' copies source kv head src(k'); its query slots
    copy the source group's slots, extra slots replicate a random slot of that group."""
    kv = unit_map(kv_s, kv_t, g)
    r_s, r_t = q_s // kv_s, q_t // kv_t
    src, new = [], []
    for k in range(kv_t):
        base = int(kv.src[k]) * r_s
        extra = torch.randint(r_s, (r_t - r_s,), generator=g).tolist()
        for m in range(r_t):
            src.append(base + (m if m < r_s else extra[m - r_s]))
            new.append(bool(kv.new[k]) or m >= r_s)
    return AxisMap(torch.tensor(src, dtype=torch.long), torch.tensor(new), q_s), kv


@dataclass(frozen=True)
class WidthTarget:
    hidden: int
    ffn: int  # reference (scalar) sizes of the grown config
    heads: int
    kv_heads: int
    layer_ffn: list[int]
    layer_heads: list[int]
    layer_kv_heads: list[int]


def width_target(
    cfg: BigTrainConfig,
    hidden: int | None = None,
    ffn: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
) -> WidthTarget:
    """Per-layer target sizes: each layer's FFN and head counts scale by target/source reference
    (FFN rounded, 0 stays 0: attention-only layers stay attention-only; heads must scale exactly)."""
    d, F, H, K = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads
    D = hidden or d
    F2 = ffn or F
    H2 = heads or H
    if kv_heads is None:
        if (K * H2) % H:
            raise BigtrainError(f"--heads {H2}: cannot keep {H}/{K} query/kv heads; give --kv-heads")
        kv_heads = K * H2 // H
    K2 = kv_heads
    if ffn is not None and F == 0:
        raise BigtrainError("--ffn: the source's reference FFN size is 0, there is no FFN width to scale")
    for what, new, old in (("hidden", D, d), ("ffn", F2, F), ("heads", H2, H), ("kv-heads", K2, K)):
        if new < old:
            raise BigtrainError(f"--{what} {new} is smaller than the source's {old}")
    layer_ffn = [f if F2 == F else round(f * F2 / F) for f in cfg.layer_intermediate_sizes]
    layer_q, layer_kv = [], []
    for i, (q, kv) in enumerate(zip(cfg.layer_num_attention_heads, cfg.layer_num_key_value_heads, strict=True)):
        if (q * H2) % H or (kv * K2) % K:
            raise BigtrainError(
                f"layer {i}: {q} query / {kv} kv heads do not scale to whole numbers by {H2}/{H} and {K2}/{K}"
            )
        q2, kv2 = q * H2 // H, kv * K2 // K
        if q2 % kv2 or q2 // kv2 < q // kv:
            raise BigtrainError(
                f"layer {i}: {q2} query heads over {kv2} kv heads cannot keep each of the {q // kv} query heads "
                f"of a kv group together (need a whole number >= {q // kv} of query heads per kv head)"
            )
        layer_q.append(q2)
        layer_kv.append(kv2)
    return WidthTarget(D, F2, H2, K2, layer_ffn, layer_q, layer_kv)


@dataclass(frozen=True)
class LayerMaps:
    q: AxisMap  # over heads
    kv: AxisMap
    ffn: AxisMap | None


# role of each axis: hw = hidden, written into the residual stream; hr = hidden, read after a norm;
# q/kv/ffn = units produced; qc/ffnc = units consumed; v = vocabulary (never grows)
ROLES: dict[str, tuple[str, ...]] = {
    "model.embed_tokens.weight": ("v", "hw"),
    "lm_head.weight": ("v", "hr"),
    "model.norm.weight": ("g",),
    "input_layernorm.weight": ("g",),
    "post_attention_layernorm.weight": ("g",),
    "self_attn.q_proj.weight": ("q", "hr"),
    "self_attn.k_proj.weight": ("kv", "hr"),
    "self_attn.v_proj.weight": ("kv", "hr"),
    "self_attn.o_proj.weight": ("hw", "qc"),
    "mlp.gate_proj.weight": ("ffn", "hr"),
    "mlp.up_proj.weight": ("ffn", "hr"),
    "mlp.down_proj.weight": ("hw", "ffnc"),
}
UNIT_ROLES = ("q", "kv", "ffn", "qc", "ffnc")
# a new entry on such an axis would change the function (it writes into the residual stream or
# passes a new unit on): zero-width zeroes it
ZERO_ROLES = ("hw", "qc", "ffnc")


@dataclass
class WidthContext:
    """What a width operator needs beyond the tensor itself."""

    op: str
    cfg: BigTrainConfig  # source width (after depth)
    target: WidthTarget
    hidden: AxisMap
    generator: Callable[[str], torch.Generator]

    @property
    def hidden_scale(self) -> torch.Tensor:
        """c_j = sqrt(D / (d n_j)) per source hidden channel (net2net, aki)."""
        return torch.sqrt(len(self.hidden.src) / (self.hidden.n_source * self.hidden.counts))


def axis_map(role: str, ctx: WidthContext, maps: LayerMaps | None, size: int) -> AxisMap:
    if role in ("hw", "hr", "g"):
        return ctx.hidden
    if role in ("q", "qc"):
        return maps.q.rows(ctx.cfg.head_dim)
    if role == "kv":
        return maps.kv.rows(ctx.cfg.head_dim)
    if role in ("ffn", "ffnc"):
        return maps.ffn
    return identity_map(size)


def fpi_scale(role: str, m: AxisMap, ctx: WidthContext) -> torch.Tensor | None:
    """Net2Net's per-target-index factor on an axis of the given role (None: 1)."""
    if role == "hw":
        return ctx.hidden_scale[m.src]
    if role == "hr":
        return 1.0 / (ctx.hidden.counts * ctx.hidden_scale)[m.src]
    if role in ("qc", "ffnc"):
        return 1.0 / m.counts[m.src]
    return None


def gather(w: torch.Tensor, maps: list[AxisMap]) -> torch.Tensor:
    return w.index_select(0, maps[0].src).index_select(1, maps[1].src)


def widen(
    name: str,
    key: str,
    w: torch.Tensor,
    ctx: WidthContext,
    maps: LayerMaps | None,
    upper: torch.Tensor | None = None,
    templates: torch.Tensor | None = None,
) -> torch.Tensor:
    """One tensor at target width. `name` is its role key (see ROLES), `key` its full name (seeds),
    `upper` the same tensor of the layer above (aki), `templates` the recombined template (mixture)."""
    roles = ROLES[name]
    axes = [axis_map(r, ctx, maps, w.shape[k]) for k, r in enumerate(roles)]
    w = w.float()
    op = ctx.op
    if roles == ("g",):
        out = w[ctx.hidden.src]
        if op in ("net2net", "aki") and name == "model.norm.weight" and ctx.cfg.tie_word_embeddings:
            out = out * (ctx.hidden.n_source / len(ctx.hidden.src))
        elif op == "zero-width":
            out = out * math.sqrt(ctx.hidden.n_source / len(ctx.hidden.src))
        elif op == "random-width":
            out = torch.where(ctx.hidden.new, torch.ones_like(out), out)
        return out
    if not any(a.grows for a in axes):
        return w
    out = gather(w, axes)
    if op in ("net2net", "aki"):
        if op == "aki" and upper is not None and upper.shape == w.shape:
            # new units take their weights from the layer above (bert2BERT AKI); replica counts as FPI
            out = torch.where(entries_on(roles, axes, UNIT_ROLES), gather(upper.float(), axes), out)
        for k, (r, a) in enumerate(zip(roles, axes, strict=True)):
            s = fpi_scale(r, a, ctx)
            if s is not None:
                out.mul_(s[:, None] if k == 0 else s[None, :])
        return out
    fresh = axes[0].new[:, None] | axes[1].new[None, :]
    if op == "mixture":
        if templates is None:
            return out  # embeddings / LM head: new channels replicate existing ones
        return torch.where(fresh, gather(templates.float(), axes), out)
    noise = torch.randn(out.shape, generator=ctx.generator(key)) * ctx.cfg.initializer_range
    if op == "zero-width":
        noise = noise.masked_fill(entries_on(roles, axes, ZERO_ROLES), 0.0)
    return torch.where(fresh, noise, out)


def entries_on(roles: tuple[str, ...], axes: list[AxisMap], which: tuple[str, ...]) -> torch.Tensor:
    """Mask of a 2-D tensor's entries that lie on a new index of an axis whose role is in `which`."""
    mask = torch.zeros(len(axes[0].src), len(axes[1].src), dtype=torch.bool)
    for k, (r, a) in enumerate(zip(roles, axes, strict=True)):
        if r in which:
            mask |= a.new[:, None] if k == 0 else a.new[None, :]
    return mask


def layer_maps(
    cfg: BigTrainConfig, target: WidthTarget, i: int, generator: Callable[[str], torch.Generator]
) -> LayerMaps:
    g = generator(f"layer{i}.maps")
    q, kv = head_maps(
        cfg.layer_num_attention_heads[i],
        cfg.layer_num_key_value_heads[i],
        target.layer_heads[i],
        target.layer_kv_heads[i],
        g,
    )
    f = cfg.layer_intermediate_sizes[i]
    return LayerMaps(q, kv, unit_map(f, target.layer_ffn[i], g) if f else None)


def width_preserves_function(op: str, cfg: BigTrainConfig, target: WidthTarget) -> bool:
    if op == "net2net":
        return True
    return op == "zero-width" and target.hidden == cfg.hidden_size
