"""Compose a depth and a width operator into one growth: (config, tensors) -> (config, tensors, record).

`op` is one operator name, or a depth and a width operator joined by "+" (or given as a list), e.g.
"stack+net2net": depth first, then width. The grown tensors are produced lazily, tensor by tensor in
model order (the embedding and LM head in blocks of vocabulary rows), so a caller that writes them as
they come holds about one tensor at a time. Everything here is pure: no files.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bigtrain.errors import BigtrainError
from bigtrain.growth.depth import (
    DEPTH_OPS,
    LayerPlan,
    depth_plan,
    depth_preserves_function,
    grown_layer_sizes,
    identity_plan,
    layer_builders,
)
from bigtrain.growth.mixture import template_combination
from bigtrain.growth.record import GrowthRecord, LayerRecord
from bigtrain.growth.width import (
    WIDTH_OPS,
    WidthContext,
    layer_maps,
    unit_map,
    widen,
    width_preserves_function,
    width_target,
)
from bigtrain.model.configuration import BigTrainConfig, architecture_problems
from bigtrain.model.param_shapes import expected_shapes, layer_shapes

NON_LAYER = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")


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


def parse_ops(op: str | Sequence[str]) -> tuple[str | None, str | None]:
    names = [p.strip() for p in (op.split("+") if isinstance(op, str) else op) if p.strip()]
    depth = [n for n in names if n in DEPTH_OPS]
    width = [n for n in names if n in WIDTH_OPS]
    unknown = [n for n in names if n not in DEPTH_OPS and n not in WIDTH_OPS]
    if unknown or not names:
        known = ", ".join(DEPTH_OPS + WIDTH_OPS)
        raise BigtrainError(f"unknown operator {(unknown or [op])[0]!r} (known: {known})")
    if len(depth) > 1 or len(width) > 1:
        raise BigtrainError(f"--op {op}: at most one depth and one width operator")
    return (depth[0] if depth else None), (width[0] if width else None)


def seeded(seed: int) -> Any:
    """A generator per key, so every random tensor is reproducible whatever order tensors are made in."""

    def generator(key: str) -> torch.Generator:
        return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))

    return generator


def config_summary(cfg: BigTrainConfig) -> dict[str, Any]:
    return {
        "num_hidden_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "layer_intermediate_sizes": list(cfg.layer_intermediate_sizes),
        "layer_num_attention_heads": list(cfg.layer_num_attention_heads),
        "layer_num_key_value_heads": list(cfg.layer_num_key_value_heads),
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }


def _resized(cfg: BigTrainConfig, **fields: Any) -> BigTrainConfig:
    out = copy.deepcopy(cfg)
    for k, v in fields.items():
        setattr(out, k, v)
    problems = architecture_problems(out)
    if problems:
        raise BigtrainError(f"grown architecture is invalid: {problems[0]}")
    return out


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
) -> Grown:
    depth_op, width_op = parse_ops(op)
    op_name = "+".join(x for x in (depth_op, width_op) if x)
    if depth_op is None and layers not in (None, cfg.num_hidden_layers):
        raise BigtrainError(f"--op {op_name}: --layers needs a depth operator ({', '.join(DEPTH_OPS)})")
    if width_op is None and any(x is not None for x in (hidden, ffn, heads, kv_heads)):
        raise BigtrainError(f"--op {op_name}: --hidden/--ffn/--heads/--kv-heads need a width operator")
    if init is not None and depth_op != "step" and width_op != "mixture":
        raise BigtrainError(f"--op {op_name}: --init applies to step and mixture only")
    generator = seeded(seed)

    plan = depth_plan(cfg, depth_op, layers, init) if depth_op else identity_plan(cfg.num_hidden_layers)
    ffn_sizes, q_heads, kv = grown_layer_sizes(cfg, plan)
    mid = _resized(
        cfg,
        num_hidden_layers=len(plan),
        layer_intermediate_sizes=ffn_sizes,
        layer_num_attention_heads=q_heads,
        layer_num_key_value_heads=kv,
    )
    ctx = None
    out_cfg = mid
    preserving = depth_preserves_function(plan)
    if width_op:
        target = width_target(mid, hidden, ffn, heads, kv_heads)
        out_cfg = _resized(
            mid,
            hidden_size=target.hidden,
            intermediate_size=target.ffn,
            num_attention_heads=target.heads,
            num_key_value_heads=target.kv_heads,
            layer_intermediate_sizes=target.layer_ffn,
            layer_num_attention_heads=target.layer_heads,
            layer_num_key_value_heads=target.layer_kv_heads,
        )
        ctx = WidthContext(
            width_op, mid, target, unit_map(cfg.hidden_size, target.hidden, generator("hidden")), generator
        )
        preserving = preserving and width_preserves_function(width_op, mid, target)
    # one --init flag: it belongs to step when step is the depth operator, else to mixture
    step_init = (init or "mean") if depth_op == "step" else None
    mixture_init = ((init if depth_op != "step" else None) or "orthogonal") if width_op == "mixture" else None

    record = GrowthRecord(
        op=op_name,
        operators=[x for x in (depth_op, width_op) if x],
        args={
            k: v
            for k, v in {
                "layers": layers,
                "hidden": hidden,
                "ffn": ffn,
                "heads": heads,
                "kv_heads": kv_heads,
                "init": step_init or mixture_init,
                "seed": seed,
            }.items()
            if v is not None
        },
        source={},
        source_config=config_summary(cfg),
        target_config=config_summary(out_cfg),
        function_preserving=preserving,
        layers=[_layer_record(p, out_cfg) for p in plan],
        non_layer_params={"inherited": [n for n in NON_LAYER if n in expected_shapes(out_cfg)], "new": []},
    )

    def widened(key: str, name: str, t: torch.Tensor, maps: Any = None, **kw: Any) -> torch.Tensor:
        return widen(name, key, t, ctx, maps, **kw) if ctx else t

    def vocab_rows(name: str) -> Iterator[torch.Tensor]:
        # embedding and LM head go in row blocks: their vocabulary axis never grows
        vocab = cfg.vocab_size
        for start in range(0, vocab, ROW_BLOCK):
            block = read_rows(tensors, name, start, min(vocab, start + ROW_BLOCK))
            yield widened(f"{name}@{start}", name, block)

    def produce() -> Iterator[tuple[str, Iterator[torch.Tensor]]]:
        yield "model.embed_tokens.weight", vocab_rows("model.embed_tokens.weight")
        builders = [layer_builders(p, cfg, tensors, generator) for p in plan]
        for i, p in enumerate(plan):
            maps = layer_maps(mid, ctx.target, i, generator) if ctx else None
            for name, make in builders[i].items():
                key = f"model.layers.{i}.{name}"
                kw: dict[str, Any] = {}
                if width_op == "aki" and i + 1 < len(plan) and name in builders[i + 1]:
                    kw["upper"] = builders[i + 1][name]()
                if width_op == "mixture" and name.endswith("proj.weight"):
                    kw["templates"] = template_combination(name, p, cfg, tensors, mixture_init, generator)
                yield key, iter([widened(key, name, make(), maps, **kw)])
        yield (
            "model.norm.weight",
            iter([widened("model.norm.weight", "model.norm.weight", tensors["model.norm.weight"])]),
        )
        if not cfg.tie_word_embeddings:
            yield "lm_head.weight", vocab_rows("lm_head.weight")

    return Grown(out_cfg, produce(), record, len(expected_shapes(out_cfg)))


def _layer_record(p: LayerPlan, cfg: BigTrainConfig) -> LayerRecord:
    names = list(layer_shapes(cfg, p.index, prefix=f"model.layers.{p.index}."))
    params = {"inherited": names, "new": []} if p.origin == "inherited" else {"inherited": [], "new": names}
    return LayerRecord(p.index, p.origin, p.source_layer, p.init, params)
