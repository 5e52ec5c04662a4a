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
  `split` (net2net and aki) says how a unit's replicas share what it passed on:
  - `even` (bert2BERT FPI): each of the n replicas passes on 1/n (the factors above).
  - `asymmetric` (LEMON; the default): replica i of a unit passes on a fraction w_i, sum over the
    unit's replicas = 1, w_i = u_i / sum_k u_k with u ~ Uniform(1 - s, 1 + s) per replica, seeded,
    s = `split_spread` (default 0.5: two replicas get alpha and 1 - alpha, alpha in [0.25, 0.75]).
    FFN units / heads: the down_proj / o_proj columns of replica i are multiplied by w_i instead of 1/n.
    Residual channels: the *reading* weights are split, the writers are not. Why the RMS is kept: the
    RMS of the residual stream depends only on its values h'_i, i.e. on the writers (embedding
    columns, o_proj/down_proj rows), and those stay c_j h_j for every replica of channel j, so
    sum_i h'_i^2 = sum_j n_j c_j^2 h_j^2 = (D/d) sum_j h_j^2 exactly as for `even`, and every RMSNorm
    divides by the same number as the source's. After the norm, replica i carries c_j g_j h_j / rms;
    a reader column of replica i multiplied by w_i / c_j (instead of 1/(n_j c_j)) contributes
    w_i W_j g_j h_j / rms, and sum_i w_i = 1 gives back W_j g_j h_j / rms. (Splitting the writers
    unevenly instead, h'_i = a_i h_j, would need sum_i a_i^2 = D/d for the RMS and sum_i a_i r_i = 1
    for the readers; possible, but it changes the stream itself and every writer of every layer
    would have to agree on a_i.) Tied embeddings: the LM head is the embedding, a writer, so the
    split goes onto the final norm's gain: g'_i = g_j w_i / c_j^2 (sum_i c_j^2 g'_i = g_j; for
    w_i = 1/n_j this is today's g_j d/D).
    Replicas then receive different gradients (the writers of channel j through their different
    readers; a unit's incoming weights through its different outgoing weights).
  - `noise` (Net2Net): `even`, then every entry on a new (replica) index is multiplied by
    (1 + sigma eps), eps ~ N(0, 1) seeded, sigma = `noise_std` (relative, default 0.01). Zero entries stay
    zero (identity blocks stay identities). Not exactly preserving: the logits move by O(sigma).
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
from bigtrain.growth.operator import Operator
from bigtrain.model.configuration import BigTrainConfig

SPLITS = ("asymmetric", "noise", "even")
DEFAULT_SPLIT = "asymmetric"
DEFAULT_SPLIT_SPREAD = 0.5  # u ~ U(0.5, 1.5): two replicas split alpha, 1 - alpha with alpha in [0.25, 0.75]
DEFAULT_NOISE_STD = 0.01
SPLIT_OPS = ("net2net", "aki")  # the operators that duplicate units, heads and residual channels


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


def split_fractions(m: AxisMap, g: torch.Generator, spread: float) -> torch.Tensor:
    """w per target index: replica i of source unit j passes on u_i / sum_{k in R_j} u_k,
    u ~ U(1 - spread, 1 + spread); a unit without replicas keeps exactly 1."""
    u = 1.0 + spread * (2.0 * torch.rand(len(m.src), generator=g) - 1.0)
    total = torch.zeros(m.n_source).index_add_(0, m.src, u)
    return torch.where(m.counts[m.src] > 1, u / total[m.src], torch.ones_like(u))


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
    q_split: torch.Tensor | None = None  # asymmetric: w per target query head
    ffn_split: torch.Tensor | None = None  # asymmetric: w per target FFN unit


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
    split: str = "even"
    split_spread: float = DEFAULT_SPLIT_SPREAD
    noise_std: float = DEFAULT_NOISE_STD
    hidden_split: torch.Tensor | None = None  # asymmetric: w per target hidden channel
    snr_db: float | None = None  # hypercloning: SNR of its +-noise (None: none)

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


def fpi_scale(role: str, m: AxisMap, ctx: WidthContext, maps: LayerMaps | None = None) -> torch.Tensor | None:
    """Net2Net's per-target-index factor on an axis of the given role (None: 1); with the asymmetric
    split the replicas' fractions w replace 1/n on the reading and consuming axes."""
    if role == "hw":
        return ctx.hidden_scale[m.src]
    if ctx.split == "asymmetric":
        if role == "hr":
            return ctx.hidden_split / ctx.hidden_scale[m.src]
        if role == "qc":
            return maps.q_split.repeat_interleave(ctx.cfg.head_dim)
        if role == "ffnc":
            return maps.ffn_split
    if role == "hr":
        return 1.0 / (ctx.hidden.counts * ctx.hidden_scale)[m.src]
    if role in ("qc", "ffnc"):
        return 1.0 / m.counts[m.src]
    return None


def with_noise(out: torch.Tensor, mask: torch.Tensor, ctx: WidthContext, key: str) -> torch.Tensor:
    """Net2Net's symmetry breaking: entries on a replica index times (1 + sigma eps); zeros stay zero."""
    eps = torch.randn(out.shape, generator=ctx.generator(f"{key}.noise"))
    return torch.where(mask, out * (1.0 + ctx.noise_std * eps), out)


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
        if op in SPLIT_OPS and name == "model.norm.weight" and ctx.cfg.tie_word_embeddings:
            if ctx.split == "asymmetric":  # the tied LM head cannot be split: the gain takes w_i / c_j^2
                out = out * ctx.hidden_split / ctx.hidden_scale[ctx.hidden.src] ** 2
            else:
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
            s = fpi_scale(r, a, ctx, maps)
            if s is not None:
                out.mul_(s[:, None] if k == 0 else s[None, :])
        if ctx.split == "noise":
            out = with_noise(out, entries_on(roles, axes, roles), ctx, key)
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
    cfg: BigTrainConfig,
    target: WidthTarget,
    i: int,
    generator: Callable[[str], torch.Generator],
    split: str = "even",
    spread: float = DEFAULT_SPLIT_SPREAD,
) -> LayerMaps:
    """The replica maps of source layer i (every depth copy of it shares them)."""
    g = generator(f"layer{i}.maps")
    q, kv = head_maps(
        cfg.layer_num_attention_heads[i],
        cfg.layer_num_key_value_heads[i],
        target.layer_heads[i],
        target.layer_kv_heads[i],
        g,
    )
    f = cfg.layer_intermediate_sizes[i]
    ffn = unit_map(f, target.layer_ffn[i], g) if f else None
    if split != "asymmetric":
        return LayerMaps(q, kv, ffn)
    gs = generator(f"layer{i}.split")  # its own stream: the maps are those of `even`
    q_split = split_fractions(q, gs, spread)
    return LayerMaps(q, kv, ffn, q_split, split_fractions(ffn, gs, spread) if ffn else None)


def check_split(split: str, spread: float, noise_std: float) -> None:
    if split not in SPLITS:
        raise BigtrainError(f"--split {split} is not one of {', '.join(SPLITS)}")
    if not 0 <= spread < 1:
        raise BigtrainError(f"--split-spread {spread}: must be in [0, 1) (u ~ U(1 - s, 1 + s) must stay positive)")
    if not noise_std >= 0:
        raise BigtrainError(f"--noise-std {noise_std}: must be >= 0")


def width_preserves_function(op: str, cfg: BigTrainConfig, target: WidthTarget, split: str = "even") -> bool:
    if op == "net2net":
        return split != "noise"
    return op == "zero-width" and target.hidden == cfg.hidden_size


SPLIT_OPTIONS = ("hidden", "ffn", "heads", "kv_heads", "split", "split_spread", "noise_std")
SIZES = ("hidden", "ffn", "heads", "kv_heads")
OPERATORS = (
    Operator(
        "net2net",
        "width",
        "bert2BERT FPI / LEMON: replicated units, RMSNorm-exact rescaling, --split asymmetric, noise or even",
        "Chen et al., ACL 2022 (bert2BERT, arXiv 2110.07143); Wang et al., ICLR 2024 (LEMON, arXiv 2310.07999)",
        None,
        SPLIT_OPTIONS,
        "yes (--split asymmetric or even; noise: O(sigma))",
        widen=widen,
    ),
    Operator(
        "aki",
        "width",
        "bert2BERT AKI: new FFN units / heads take their weights from the layer above",
        "Chen et al., ACL 2022 (bert2BERT, arXiv 2110.07143)",
        None,
        SPLIT_OPTIONS,
        "no",
        widen=widen,
    ),
    Operator(
        "zero-width",
        "width",
        "G_zero width: new entries zero where they write, random where they read",
        "Du et al., NeurIPS 2024, arXiv 2405.15319",
        "https://github.com/tongxuluo/prts",
        SIZES,
        "FFN / heads only (hidden growth: up to the norm's eps)",
        widen=widen,
    ),
    Operator(
        "random-width",
        "width",
        "new entries random (std initializer_range), old block unchanged",
        "Du et al., NeurIPS 2024, arXiv 2405.15319 (G_random without the MSG mask)",
        "https://github.com/tongxuluo/prts",
        SIZES,
        "no",
        widen=widen,
    ),
)
