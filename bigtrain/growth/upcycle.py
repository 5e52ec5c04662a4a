"""`upcycle`: sparse upcycling of a dense model into a Mixture-of-Experts (bigtrain/model/moe.py).

Sparse upcycling (Komatsuzaki et al., ICLR 2023, arXiv 2212.05055): every FFN is copied into E experts and a
router is added; attention, norms and embeddings are kept. `--experts E --top-k K`.

Fine-grained upcycling (`--granularity G`, He et al. 2024 "Upcycling LLMs into MoE", arXiv 2410.07524): each
FFN's intermediate dimension is cut into G shards of width d_f / G, each shard an expert, and the E copies give
E·G experts, top-k K·G. Expert c·G + g is shard g of copy c; its down projection is multiplied by G, so that
K·G experts with weight 1/(K·G) each that hold every shard K times sum to the dense FFN.

Drop-Upcycling (`--drop-ratio r`, Nakamura et al., ICLR 2025, arXiv 2502.19261): in each expert a seeded
random fraction r of its intermediate dimensions is re-initialised — the same indices in the rows of
gate_proj and up_proj and the columns of down_proj — from a normal distribution with the mean and standard
deviation of the source matrix (per matrix, per layer: the paper's statistics), so experts start diverse.

Router (`--router-init`): `normal` (the default: N(0, initializer_range), as Komatsuzaki et al.) or `zeros`
(uniform routing). What is exact (the record's function_preserving, `--verify` measures it), with the top-k
weights renormalised (normalize_top_k, which upcycling sets) and no drop:
- G = 1: every expert is the dense FFN and the k weights sum to 1, so the output is the dense FFN's with any
  router (up to float rounding of the weighted sum).
- G > 1: with `--router-init zeros`: all scores tie and top-k picks K·G consecutive experts, which hold
  every shard exactly K times (torch's top-k picks a consecutive run among equal values; tested on CPU); a
  `normal` router picks shards unevenly: not preserving.
- r > 0: not preserving (by design).
Attention-only layers (FFN 0) stay as they are. The source must be dense.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from bigtrain.errors import BigtrainError
from bigtrain.growth.operator import Operator
from bigtrain.growth.record import NON_LAYER, GrowthRecord, LayerRecord, config_summary
from bigtrain.model.configuration import MOE_DEFAULTS, BigTrainConfig, architecture_problems
from bigtrain.model.param_shapes import expected_shapes, layer_shapes

ROUTER_INITS = ("normal", "zeros")
DEFAULT_ROUTER_INIT = "normal"
PROJ = ("gate_proj", "up_proj", "down_proj")


def upcycle_config(cfg: BigTrainConfig, experts: int | None, top_k: int | None, granularity: int) -> BigTrainConfig:
    """The MoE config: E·G experts of width d_f / G per FFN layer, top-k K·G; one error line on bad input."""
    if cfg.moe is not None:
        raise BigtrainError(
            f"--op upcycle: the source is already an MoE model ({cfg.moe['num_experts']} experts); upcycle a dense one"
        )
    if experts is None or top_k is None:
        raise BigtrainError("--op upcycle: give --experts E and --top-k K")
    if experts < 1 or not 1 <= top_k <= experts:
        raise BigtrainError(f"--op upcycle: --top-k {top_k} must be in [1, --experts {experts}]")
    if granularity < 1:
        raise BigtrainError(f"--op upcycle: --granularity {granularity} must be >= 1")
    if not any(cfg.layer_intermediate_sizes):
        raise BigtrainError("--op upcycle: the source has no FFN layer to upcycle")
    for i, f in enumerate(cfg.layer_intermediate_sizes):
        if f % granularity:
            raise BigtrainError(f"--op upcycle: --granularity {granularity} does not divide layer {i}'s FFN size {f}")
    out = copy.deepcopy(cfg)
    out.moe = {**MOE_DEFAULTS, "num_experts": experts * granularity, "top_k": top_k * granularity}
    out.layer_intermediate_sizes = [f // granularity for f in cfg.layer_intermediate_sizes]
    out.intermediate_size = cfg.intermediate_size // granularity  # the reference: each expert's width
    problems = architecture_problems(out)
    if problems:
        raise BigtrainError(f"--op upcycle: {problems[0]}")
    return out


def drop_indices(width: int, ratio: float, g: torch.Generator) -> torch.Tensor:
    """A seeded random round(ratio · width) of an expert's intermediate dimensions."""
    return torch.randperm(width, generator=g)[: round(ratio * width)]


def expert_tensor(
    source: torch.Tensor,
    proj: str,
    shard: int,
    width: int,
    granularity: int,
    drop: torch.Tensor | None,
    g: torch.Generator | None,
    moments: bool,
) -> torch.Tensor:
    """One expert's gate/up (rows) or down (columns) projection: shard `shard` of the dense matrix, the down
    projection times G, its `drop` dimensions re-initialised from N(mean, std of the source matrix) (zero for
    an optimizer moment: a new parameter starts with no state)."""
    full = source.float()
    if proj == "down_proj":
        full = full * granularity
        w = full[:, shard * width : (shard + 1) * width].clone()
    else:
        w = full[shard * width : (shard + 1) * width].clone()
    if drop is None or not len(drop):
        return w
    shape = (len(drop), w.shape[1]) if proj != "down_proj" else (w.shape[0], len(drop))
    fresh = torch.zeros(shape) if moments else torch.randn(shape, generator=g) * full.std() + full.mean()
    if proj == "down_proj":
        w[:, drop] = fresh
    else:
        w[drop] = fresh
    return w


def upcycle(
    cfg: BigTrainConfig,
    tensors: Mapping[str, torch.Tensor],
    generator: Any,
    experts: int | None,
    top_k: int | None,
    granularity: int = 1,
    drop_ratio: float = 0.0,
    router_init: str = DEFAULT_ROUTER_INIT,
    moments: bool = False,
) -> tuple[BigTrainConfig, Iterator[tuple[str, torch.Tensor]]]:
    """(the MoE config, its tensors in model order, computed as iterated). `moments`: the tensors are an
    optimizer state (router and re-initialised entries zero)."""
    if router_init not in ROUTER_INITS:
        raise BigtrainError(f"--router-init {router_init}: one of {', '.join(ROUTER_INITS)}")
    if not 0.0 <= drop_ratio <= 1.0:
        raise BigtrainError(f"--drop-ratio {drop_ratio} must be in [0, 1]")
    out = upcycle_config(cfg, experts, top_k, granularity)

    def produce() -> Iterator[tuple[str, torch.Tensor]]:
        for key, shape in expected_shapes(out).items():
            if ".mlp.router." in key:
                if moments or router_init == "zeros":
                    yield key, torch.zeros(shape)
                else:
                    yield key, torch.randn(shape, generator=generator(key)) * cfg.initializer_range
            elif ".mlp.experts." in key:
                layer, rest = key.removeprefix("model.layers.").split(".mlp.experts.")
                e_text, proj, _ = rest.split(".")
                e, width = int(e_text), out.layer_intermediate_sizes[int(layer)]
                drop = None
                if drop_ratio > 0:  # one index set per expert, for all three projections
                    drop = drop_indices(width, drop_ratio, generator(f"layer{layer}.expert{e}.drop"))
                g = generator(f"{key}.drop") if drop is not None else None
                source = tensors[f"model.layers.{layer}.mlp.{proj}.weight"]
                yield key, expert_tensor(source, proj, e % granularity, width, granularity, drop, g, moments)
            else:
                yield key, tensors[key]

    return out, produce()


def upcycle_record(cfg: BigTrainConfig, out: BigTrainConfig, args: dict[str, Any]) -> GrowthRecord:
    g = args.get("granularity", 1)
    preserving = args.get("drop_ratio", 0.0) == 0 and (g == 1 or args.get("router_init") == "zeros")
    layers = []
    for i in range(out.num_hidden_layers):
        names = list(layer_shapes(out, i, prefix=f"model.layers.{i}."))
        new = [n for n in names if ".mlp.router." in n]
        if args.get("drop_ratio", 0.0) > 0:
            new += [n for n in names if ".mlp.experts." in n]  # partly re-initialised
        inherited = [n for n in names if n not in new]
        init = "upcycle" if out.layer_is_moe(i) else "inherited"
        layers.append(LayerRecord(i, "inherited", i, init, {"inherited": inherited, "new": new}))
    target = {**config_summary(out), "moe": dict(out.moe or {})}
    return GrowthRecord(
        op="upcycle",
        operators=["upcycle"],
        args=args,
        source={},
        source_config=config_summary(cfg),
        target_config=target,
        function_preserving=preserving,
        layers=layers,
        non_layer_params={"inherited": [n for n in NON_LAYER if n in expected_shapes(out)], "new": []},
    )


OPERATOR = Operator(
    "upcycle",
    "moe",
    "sparse upcycling: each FFN copied into E experts (or G shards each) + a router; Drop-Upcycling re-init",
    "Komatsuzaki et al., ICLR 2023, arXiv 2212.05055; He et al. 2024, arXiv 2410.07524; "
    "Nakamura et al., ICLR 2025, arXiv 2502.19261",
    None,
    ("experts", "top_k", "granularity", "drop_ratio", "router_init"),
    "with --drop-ratio 0 (G > 1: and --router-init zeros)",
)
