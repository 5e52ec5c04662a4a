"""Compose a depth and a width operator into one growth: (config, tensors) -> (config, tensors, record).

`op` is one operator name, or a depth and a width operator joined by "+" (or given as a list), e.g.
"stack+net2net". Width is applied first, then depth (bert2BERT): every source layer is widened
once with its own replica maps and the depth operator copies / averages / zeroes the widened layers,
so every copy of a source layer is the same tensor, AKI borrows from the layer above in the source
order, and zero blocks stay identity blocks. The grown tensors are produced lazily, tensor by tensor in
model order (the embedding and LM head in blocks of vocabulary rows), so a caller that writes them as
they come holds about one tensor at a time. Everything here is pure: no files.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from bigtrain.errors import BigtrainError
from bigtrain.growth.depth import (
    INSERT_OPS,
    PLACEMENTS,
    LayerPlan,
    depth_preserves_function,
    grown_layer_sizes,
    identity_plan,
    layer_builders,
)
from bigtrain.growth.mixture import template_combination
from bigtrain.growth.operator import DepthArgs
from bigtrain.growth.record import NON_LAYER, GrowthRecord, LayerRecord, config_summary
from bigtrain.growth.registry import DEPTH_OPS, MOE_OPS, REGISTRY, parse_ops, split_op, taking
from bigtrain.growth.upcycle import DEFAULT_ROUTER_INIT, upcycle, upcycle_record
from bigtrain.growth.width import (
    DEFAULT_NOISE_STD,
    DEFAULT_SPLIT,
    DEFAULT_SPLIT_SPREAD,
    SPLIT_OPS,
    WidthContext,
    check_split,
    layer_maps,
    split_fractions,
    unit_map,
    width_preserves_function,
    width_target,
)
from bigtrain.model.configuration import BigTrainConfig, architecture_problems
from bigtrain.model.param_shapes import expected_shapes, layer_shapes

ROW_BLOCK = 4096  # vocabulary rows of the embedding / LM head grown at a time


@dataclass
class Grown:
    config: BigTrainConfig
    # per tensor, in model order: its row blocks (float32; unchanged copies keep their stored dtype)
    blocks: Iterator[tuple[str, Iterator[torch.Tensor]]]
    record: GrowthRecord
    num_tensors: int

    @property
    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Whole tensors in model order, computed as iterated."""
        for name, blocks in self.blocks:
            parts = list(blocks)
            yield name, parts[0] if len(parts) == 1 else torch.cat(parts)


def read_rows(tensors: Mapping[str, torch.Tensor], name: str, start: int, stop: int) -> torch.Tensor:
    """Rows of a tensor; a mapping with a `rows` method (a checkpoint on disk) reads only those."""
    rows = getattr(tensors, "rows", None)
    return rows(name, start, stop) if rows is not None else tensors[name][start:stop]


def seeded(seed: int) -> Any:
    """A generator per key, so every random tensor is reproducible whatever order tensors are made in."""

    def generator(key: str) -> torch.Generator:
        return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))

    return generator


def _resized(cfg: BigTrainConfig, **fields: Any) -> BigTrainConfig:
    out = copy.deepcopy(cfg)
    for k, v in fields.items():
        setattr(out, k, v)
    problems = architecture_problems(out)
    if problems:
        raise BigtrainError(f"grown architecture is invalid: {problems[0]}")
    return out


@dataclass
class Plan:
    """What one grow will do, decided before any tensor is touched."""

    depth_op: str | None
    width_op: str | None
    layers: list[LayerPlan]  # over the widened source: target layer -> source layer and init
    wide: BigTrainConfig  # the source at the target width (widen first, then deepen: bert2BERT)
    out: BigTrainConfig
    ctx: WidthContext | None
    step_init: str | None
    mixture_init: str | None

    @property
    def name(self) -> str:
        return "+".join(x for x in (self.depth_op, self.width_op) if x)


class WidenedSource(Mapping[str, torch.Tensor]):
    """The source layers at the target width, computed on lookup: what the depth operator copies.

    Source layer j is widened with the replica maps of j (one map per source layer, so every depth
    copy of j is the same tensor); AKI borrows from layer j + 1 in the source order."""

    def __init__(self, cfg: BigTrainConfig, tensors: Mapping[str, torch.Tensor], plan: Plan, generator: Any):
        self.cfg, self.tensors, self.plan, self.generator = cfg, tensors, plan, generator
        self.maps: dict[int, Any] = {}

    def layer_maps(self, j: int) -> Any:
        ctx = self.plan.ctx
        if j not in self.maps:
            self.maps[j] = layer_maps(self.cfg, ctx.target, j, self.generator, ctx.split, ctx.split_spread)
        return self.maps[j]

    def __getitem__(self, key: str) -> torch.Tensor:
        j_text, name = key.removeprefix("model.layers.").split(".", 1)
        j, ctx = int(j_text), self.plan.ctx
        kw: dict[str, Any] = {}
        upper = f"model.layers.{j + 1}.{name}"
        if ctx.op == "aki" and j + 1 < self.cfg.num_hidden_layers and name in layer_shapes(self.cfg, j + 1):
            kw["upper"] = self.tensors[upper]
        if ctx.op == "mixture" and name.endswith("proj.weight"):
            own = LayerPlan(j, "inherited", j, "inherited")
            kw["templates"] = template_combination(
                name, own, self.cfg, self.tensors, self.plan.mixture_init, self.generator
            )
        op = REGISTRY[ctx.op]
        return op.widen(name, key, self.tensors[key], ctx, self.layer_maps(j) if op.replica_maps else None, **kw)

    def __iter__(self) -> Iterator[str]:
        return (k for k in self.tensors if k.startswith("model.layers."))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def grow(
    cfg: BigTrainConfig,
    tensors: Mapping[str, torch.Tensor],
    op: str | Sequence[str],
    *,
    layers: int | None = None,
    hidden: int | None = None,
    ffn: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    init: str | None = None,
    seed: int = 0,
    split: str | None = None,
    split_spread: float | None = None,
    noise_std: float | None = None,
    placement: str | None = None,
    drop: int | None = None,
    block: int | None = None,
    snr_db: float | None = None,
    experts: int | None = None,
    top_k: int | None = None,
    granularity: int | None = None,
    drop_ratio: float | None = None,
    router_init: str | None = None,
) -> Grown:
    """Phases: plan (operators, target config), record, produce (lazily, tensor by tensor)."""
    generator = seeded(seed)
    moe_args = {
        "experts": experts,
        "top_k": top_k,
        "granularity": granularity,
        "drop_ratio": drop_ratio,
        "router_init": router_init,
    }
    ops = split_op(op)
    if len(ops) == 1 and ops[0] in MOE_OPS:
        others = {
            "layers": layers,
            "hidden": hidden,
            "ffn": ffn,
            "heads": heads,
            "kv_heads": kv_heads,
            "init": init,
            "split": split,
            "split_spread": split_spread,
            "noise_std": noise_std,
            "placement": placement,
            "drop": drop,
            "block": block,
            "snr_db": snr_db,
        }
        return grow_moe(cfg, tensors, seed, moe_args, others)
    if cfg.moe is not None:
        raise BigtrainError(f"--op {op}: the source is an MoE model; depth and width operators grow dense ones only")
    plan = make_plan(
        cfg,
        op,
        generator,
        layers,
        hidden,
        ffn,
        heads,
        kv_heads,
        init,
        split,
        split_spread,
        noise_std,
        placement,
        {"drop": drop, "block": block, "snr_db": snr_db, **moe_args},
    )
    args = {
        "layers": layers,
        "hidden": hidden,
        "ffn": ffn,
        "heads": heads,
        "kv_heads": kv_heads,
        "init": plan.step_init or plan.mixture_init,
        "seed": seed,
        "placement": placement,
        "drop": drop,
        "block": block,
        "snr_db": snr_db,
    }
    if plan.ctx is not None and plan.width_op in SPLIT_OPS:
        args["split"] = plan.ctx.split
        args["split_spread" if plan.ctx.split == "asymmetric" else "noise_std"] = (
            plan.ctx.split_spread if plan.ctx.split == "asymmetric" else plan.ctx.noise_std
        )
        if plan.ctx.split == "even":
            args.pop("noise_std")
    record = make_record(cfg, plan, {k: v for k, v in args.items() if v is not None})
    source = WidenedSource(cfg, tensors, plan, generator) if plan.ctx else tensors
    return Grown(plan.out, produce(cfg, tensors, source, plan, generator), record, len(expected_shapes(plan.out)))


def grow_config(cfg: BigTrainConfig, op: str | Sequence[str], **args: Any) -> GrowthRecord:
    """The record of growing a model of config `cfg` (its target config, which layers are inherited and
    which new), from the plan alone: no tensor is read or made."""
    return grow(cfg, {}, op, **args).record


def grow_moe(
    cfg: BigTrainConfig,
    tensors: Mapping[str, torch.Tensor],
    seed: int,
    moe_args: dict[str, Any],
    others: dict[str, Any],
    moments: bool = False,
) -> Grown:
    """`upcycle` (upcycle.py): used alone; the options of other operators are errors."""
    given = [k for k, v in others.items() if v is not None]
    if given:
        raise BigtrainError(f"--op upcycle: --{given[0].replace('_', '-')} does not apply to upcycle")
    args = {
        "experts": moe_args["experts"],
        "top_k": moe_args["top_k"],
        "granularity": moe_args["granularity"] or 1,
        "drop_ratio": moe_args["drop_ratio"] or 0.0,
        "router_init": moe_args["router_init"] or DEFAULT_ROUTER_INIT,
        "seed": seed,
    }
    out, tensors_out = upcycle(
        cfg,
        tensors,
        seeded(seed),
        args["experts"],
        args["top_k"],
        args["granularity"],
        args["drop_ratio"],
        args["router_init"],
        moments=moments,
    )
    record = upcycle_record(cfg, out, args)
    blocks = ((name, iter([t])) for name, t in tensors_out)
    return Grown(out, blocks, record, len(expected_shapes(out)))


def grow_optimizer_state(
    cfg: BigTrainConfig, state: Mapping[str, torch.Tensor], op: str | Sequence[str], **op_args: Any
) -> Grown:
    """An optimizer state (Adam's `exp_avg`, or the square root of `exp_avg_sq`) grown through the operator
    that grew the weights, with the same seed: the same replica maps, split fractions and layer copies, so
    a copied weight gets a copy of its state and a scaled one the state scaled alike (Adam's update is
    invariant to that scale: every copy's first update is its source's). New parameters, random or zero,
    start at zero state (the random init is scaled to zero); Net2Net's and HyperCloning's noise are left out."""
    if split_op(op) == ["upcycle"]:  # copies carry their state; the router and re-initialised entries start at 0
        moe = {k: op_args.pop(k, None) for k in ("experts", "top_k", "granularity", "drop_ratio", "router_init")}
        seed = op_args.pop("seed", 0)
        return grow_moe(cfg, state, seed, moe, {k: v for k, v in op_args.items() if v is not None}, moments=True)
    _, width_op = parse_ops(op)
    if width_op == "mixture":
        raise BigtrainError("grow.optimizer: carry: mixture builds new weights from templates; use optimizer: fresh")
    quiet = copy.deepcopy(cfg)
    quiet.initializer_range = 0.0
    if op_args.get("split") == "noise":
        op_args = {**op_args, "noise_std": 0.0}
    if op_args.get("snr_db") is not None:  # hypercloning's +-noise: the clones' states stay plain copies
        op_args = {**op_args, "snr_db": None}
    return grow(quiet, state, op, **op_args)


def make_plan(
    cfg: BigTrainConfig,
    op: str | Sequence[str],
    generator: Any,
    layers: int | None,
    hidden: int | None,
    ffn: int | None,
    heads: int | None,
    kv_heads: int | None,
    init: str | None,
    split: str | None,
    split_spread: float | None,
    noise_std: float | None,
    placement: str | None,
    extra: dict[str, Any] | None = None,
) -> Plan:
    depth_op, width_op = parse_ops(op)
    op_name = "+".join(x for x in (depth_op, width_op) if x)
    if depth_op is None and layers not in (None, cfg.num_hidden_layers):
        raise BigtrainError(f"--op {op_name}: --layers needs a depth operator ({', '.join(DEPTH_OPS)})")
    if width_op is None and any(x is not None for x in (hidden, ffn, heads, kv_heads)):
        raise BigtrainError(f"--op {op_name}: --hidden/--ffn/--heads/--kv-heads need a width operator")
    if init is not None and depth_op != "step" and width_op != "mixture":
        raise BigtrainError(f"--op {op_name}: --init applies to step and mixture only")
    if width_op not in SPLIT_OPS and any(x is not None for x in (split, split_spread, noise_std)):
        raise BigtrainError(f"--op {op_name}: --split/--split-spread/--noise-std apply to {', '.join(SPLIT_OPS)} only")
    if placement is not None and depth_op is None:
        raise BigtrainError(f"--op {op_name}: --placement needs a depth operator")
    if depth_op is not None:
        check_placement(depth_op, placement)
    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    check_options(op_name, (depth_op, width_op), extra)
    # one --init flag: it belongs to step when step is the depth operator, else to mixture
    step_init = (init or "mean") if depth_op == "step" else None
    mixture_init = ((init if depth_op != "step" else None) or "orthogonal") if width_op == "mixture" else None

    ctx = None
    wide = cfg
    if width_op:
        split = split or DEFAULT_SPLIT
        spread = DEFAULT_SPLIT_SPREAD if split_spread is None else split_spread
        sigma = DEFAULT_NOISE_STD if noise_std is None else noise_std
        check_split(split, spread, sigma)
        sizes = REGISTRY[width_op].sizes
        if sizes is not None:  # the operator's own defaults and constraints (hypercloning: whole multiples)
            hidden, ffn, heads, kv_heads = sizes(cfg, hidden, ffn, heads, kv_heads)
        target = width_target(cfg, hidden, ffn, heads, kv_heads)
        wide = _resized(
            cfg,
            hidden_size=target.hidden,
            intermediate_size=target.ffn,
            num_attention_heads=target.heads,
            num_key_value_heads=target.kv_heads,
            layer_intermediate_sizes=target.layer_ffn,
            layer_num_attention_heads=target.layer_heads,
            layer_num_key_value_heads=target.layer_kv_heads,
        )
        ctx = WidthContext(
            width_op, cfg, target, unit_map(cfg.hidden_size, target.hidden, generator("hidden")), generator
        )
        ctx.snr_db = extra.get("snr_db")
        if width_op in SPLIT_OPS:
            ctx.split, ctx.split_spread, ctx.noise_std = split, spread, sigma
            if split == "asymmetric":
                ctx.hidden_split = split_fractions(ctx.hidden, generator("hidden.split"), spread)
    plan = (
        depth_layers(
            wide, DepthArgs(depth_op, layers, init, placement or "upper", extra.get("drop"), extra.get("block"))
        )
        if depth_op
        else None
    )
    plan = plan or identity_plan(cfg.num_hidden_layers)
    ffn_sizes, q_heads, kv = grown_layer_sizes(wide, plan)
    out = _resized(
        wide,
        num_hidden_layers=len(plan),
        layer_intermediate_sizes=ffn_sizes,
        layer_num_attention_heads=q_heads,
        layer_num_key_value_heads=kv,
    )
    return Plan(depth_op, width_op, plan, wide, out, ctx, step_init, mixture_init)


def depth_layers(cfg: BigTrainConfig, args: DepthArgs) -> list[LayerPlan]:
    """The depth operator's plan over the (widened) source."""
    return REGISTRY[args.op].plan(cfg, args)


def check_options(op_name: str, ops: tuple[str | None, str | None], given: dict[str, Any]) -> None:
    """An option none of the chosen operators takes is an error (the registry says who takes what)."""
    for option in given:
        if not any(o and option in REGISTRY[o].options for o in ops):
            flag = option.replace("_", "-")
            raise BigtrainError(f"--op {op_name}: --{flag} applies to {', '.join(taking(option))} only")


def check_placement(depth_op: str, placement: str | None) -> None:
    if placement is not None and placement not in PLACEMENTS:
        raise BigtrainError(f"--placement {placement} is not one of {', '.join(PLACEMENTS)}")
    if placement is not None and depth_op not in INSERT_OPS:
        raise BigtrainError(f"--op {depth_op}: --placement applies to {', '.join(INSERT_OPS)} only")


def make_record(cfg: BigTrainConfig, plan: Plan, args: dict[str, Any]) -> GrowthRecord:
    preserving = depth_preserves_function(plan.layers)
    if plan.ctx is not None:
        rule = REGISTRY[plan.width_op].preserving or partial(width_preserves_function, plan.width_op)
        preserving = preserving and rule(cfg, plan.ctx.target, plan.ctx.split)
    return GrowthRecord(
        op=plan.name,
        operators=[x for x in (plan.depth_op, plan.width_op) if x],
        args=args,
        source={},
        source_config=config_summary(cfg),
        target_config=config_summary(plan.out),
        function_preserving=preserving,
        layers=[_layer_record(p, plan.out) for p in plan.layers],
        non_layer_params={"inherited": [n for n in NON_LAYER if n in expected_shapes(plan.out)], "new": []},
    )


def produce(
    cfg: BigTrainConfig,
    tensors: Mapping[str, torch.Tensor],
    source: Mapping[str, torch.Tensor],
    plan: Plan,
    generator: Any,
) -> Iterator[tuple[str, Iterator[torch.Tensor]]]:
    """The grown tensors in model order: non-layer tensors widened here, layers built by the depth
    operator from the widened source layers."""
    ctx = plan.ctx

    def widened(key: str, name: str, t: torch.Tensor) -> torch.Tensor:
        return REGISTRY[ctx.op].widen(name, key, t, ctx, None) if ctx else t

    def vocab_rows(name: str) -> Iterator[torch.Tensor]:
        # embedding and LM head go in row blocks: their vocabulary axis never grows
        vocab = cfg.vocab_size
        for start in range(0, vocab, ROW_BLOCK):
            block = read_rows(tensors, name, start, min(vocab, start + ROW_BLOCK))
            yield widened(f"{name}@{start}", name, block)

    yield "model.embed_tokens.weight", vocab_rows("model.embed_tokens.weight")
    for p in plan.layers:
        for name, make in layer_builders(p, plan.wide, source, generator).items():
            yield f"model.layers.{p.index}.{name}", iter([make()])
    norm = "model.norm.weight"
    yield norm, iter([widened(norm, norm, tensors[norm])])
    if not cfg.tie_word_embeddings:
        yield "lm_head.weight", vocab_rows("lm_head.weight")


def _layer_record(p: LayerPlan, cfg: BigTrainConfig) -> LayerRecord:
    names = list(layer_shapes(cfg, p.index, prefix=f"model.layers.{p.index}."))
    params = {"inherited": names, "new": []} if p.origin == "inherited" else {"inherited": [], "new": names}
    return LayerRecord(p.index, p.origin, p.source_layer, p.init, params)
