"""The memory planner: per-rank bytes of one training stage under DeepSpeed ZeRO-3, and STEP's search
for the stage sizes that minimise the largest stage peak (Yano et al., NAACL 2025, section 3).

What ZeRO-3 holds per rank (DeepSpeed 0.19, `runtime/zero/stage3.py`; every tensor is split into
`ceil(numel / world)` elements per rank, the last rank's share padded):
- every parameter's partition in the weight dtype (bf16: 2 B), trainable or frozen;
- trainable parameters only: the gradient partition (`grad_accum_dtype`: bigtrain sets fp32 under bf16,
  so 4 B, see train/ds_config.py), an fp32 master copy (4 B) and Adam's two fp32 moments (8 B);
  18 B in all for bf16 (the paper's model has 16, with bf16 gradient partitions);
- working buffers: the gathered (full) weights of the module in use plus the prefetch bucket, small
  parameters kept gathered (`stage3_param_persistence_threshold`), the reduce bucket
  (`reduce_bucket_size` elements of the weight dtype), and the full gradients of the module in backward
  (weight dtype, before they are reduced into the partitions);
- at `deepspeed.initialize` a transient fp32 buffer as large as the largest sub-group of this rank's
  trainable partitions (`initialize_optimizer_states`, at most `sub_group_size`), freed before training.
Activations are an estimate (see `activation_bytes`); they are the same for STEP and vanilla training of
the same model, since the backward pass still runs through the frozen layers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from bigtrain.config import Recipe, StepConfig
from bigtrain.errors import BigtrainError
from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.param_shapes import expected_shapes, layer_shapes
from bigtrain.train.step_lora import lora_shapes, trainable_in_step

GIB = 1024**3


@dataclass(frozen=True)
class ZeroSettings:
    """What decides the bytes: world size, dtypes and DeepSpeed's ZeRO-3 bucket sizes (in elements)."""

    world_size: int = 1
    weight_bytes: int = 2  # bf16
    grad_bytes: int = 4  # the partitions' grad_accum_dtype: fp32 (bigtrain sets it under bf16)
    master_bytes: int = 4  # fp32 master copy of the trainable partition
    adam_bytes: int = 8  # fp32 exp_avg + exp_avg_sq
    reduce_bucket_size: int = 500_000_000
    prefetch_bucket_size: int = 50_000_000
    persistence_threshold: int = 100_000
    sub_group_size: int = 1_000_000_000
    activation_bytes: int = 2

    @classmethod
    def from_recipe(cls, recipe: Recipe, world_size: int, precision: str | None = None) -> ZeroSettings:
        """Read the recipe's DeepSpeed config; precision `auto` is planned as bf16 (the GPU case)."""
        from bigtrain.train.ds_config import build_ds_config

        precision = precision or (recipe.train.precision if recipe.train.precision != "auto" else "bf16")
        planned = recipe.model_copy(update={"train": recipe.train.model_copy(update={"precision": precision})})
        ds = build_ds_config(planned, world_size, recipe.model.hidden_size)
        zero = ds.get("zero_optimization", {})
        width = {"bf16": 2, "fp16": 2, "fp32": 4}[precision]
        accum = ds.get("data_types", {}).get("grad_accum_dtype")
        grad = {"fp32": 4, "bf16": 2, "fp16": 2}.get(accum or "", width)
        return cls(
            world_size=world_size,
            weight_bytes=width,
            grad_bytes=grad,
            activation_bytes=width,
            reduce_bucket_size=int(zero.get("reduce_bucket_size", cls.reduce_bucket_size)),
            prefetch_bucket_size=int(zero.get("stage3_prefetch_bucket_size", cls.prefetch_bucket_size)),
            persistence_threshold=int(zero.get("stage3_param_persistence_threshold", cls.persistence_threshold)),
            sub_group_size=int(zero.get("sub_group_size", cls.sub_group_size)),
        )


@dataclass(frozen=True)
class Tensor:
    name: str
    numel: int
    trainable: bool
    module: str  # the module whose forward gathers it


@dataclass
class StageMemory:
    """Per-rank bytes of one stage. State bytes are exact; working buffers and activations estimates."""

    layers: int
    new_layers: int
    params_total: int
    params_trainable: int
    lora_params: int
    param_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int  # fp32 master + Adam moments
    working_bytes: int
    activation_bytes: int
    init_transient_bytes: int
    name: str = ""
    details: dict[str, int] = field(default_factory=dict)

    @property
    def state_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_state_bytes

    @property
    def peak_bytes(self) -> int:
        train = self.state_bytes + self.working_bytes + self.activation_bytes
        return max(train, self.state_bytes + self.init_transient_bytes)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state_bytes": self.state_bytes, "peak_bytes": self.peak_bytes}


# --- what the model holds -----------------------------------------------------------------------


def layer_linears(cfg: BigTrainConfig) -> list[tuple[int, str, int, int]]:
    """(layer, module name, in features, out features) of every projection, LLaMA names."""
    return [
        (i, f"model.layers.{i}.{name.removesuffix('.weight')}", fan_in, fan_out)
        for i in range(cfg.num_hidden_layers)
        for name, (fan_out, *rest) in layer_shapes(cfg, i).items()
        if name.endswith("proj.weight")
        for fan_in in rest
    ]


def model_tensors(
    cfg: BigTrainConfig,
    inherited: frozenset[int] | set[int] = frozenset(),
    step: StepConfig | None = None,
) -> list[Tensor]:
    """Every parameter tensor (LoRA ones included for a STEP stage), with whether it trains."""
    inherited = set(inherited)
    tensors = [
        Tensor(name, math.prod(shape), step is None or trainable_in_step(name, inherited, step), name.removesuffix(".weight"))
        for name, shape in expected_shapes(cfg).items()
    ]
    if step is not None:
        for name, (a, b) in lora_shapes(layer_linears(cfg), inherited, step):
            tensors.append(Tensor(name, a * b, True, name.rsplit(".", 2)[0]))
    return tensors


# --- bytes ----------------------------------------------------------------------------------------


def share(numel: int, world: int) -> int:
    """Elements of one tensor held by each rank (ZeRO-3 pads to a multiple of the world size)."""
    return math.ceil(numel / world)


def activation_bytes(cfg: BigTrainConfig, micro_batch: int, seq_len: int, checkpointing: bool, width: int) -> int:
    """Saved activations of one micro-batch (estimate, per rank).

    Per token and layer (SDPA/flash attention, no s^2 term): attention block 2 norm in/out (plus the fp32
    copy RMSNorm makes), q, k, v, attention output and its contiguous copy; FFN block 2 norm in/out, gate,
    up, silu(gate) and the product. With checkpointing only each layer's input stays, plus one layer
    recomputed. The loss adds bf16 logits, their fp32 copy and the fp32 log-softmax (10 B per logit).
    """
    tokens = micro_batch * seq_len
    d, hd = cfg.hidden_size, cfg.head_dim

    def layer(i: int) -> int:
        q, kv, f = (
            cfg.layer_num_attention_heads[i],
            cfg.layer_num_key_value_heads[i],
            cfg.layer_intermediate_sizes[i],
        )
        attn = width * (2 * d + 2 * q * hd + 2 * kv * hd) + 4 * d
        ffn = width * (2 * d + 4 * f) + 4 * d if f else 0
        return tokens * (attn + ffn)

    per_layer = [layer(i) for i in range(cfg.num_hidden_layers)]
    body = tokens * width * d * len(per_layer) + max(per_layer) if checkpointing else sum(per_layer)
    logits = tokens * cfg.vocab_size * (width + 4 + 4)
    return body + logits


def stage_memory(
    cfg: BigTrainConfig,
    zero: ZeroSettings,
    micro_batch: int,
    seq_len: int,
    checkpointing: bool,
    inherited: frozenset[int] | set[int] = frozenset(),
    step: StepConfig | None = None,
    name: str = "",
) -> StageMemory:
    """Per-rank memory of training `cfg` (vanilla when `step` is None, else STEP with `inherited` frozen)."""
    w = zero.world_size
    tensors = model_tensors(cfg, inherited, step)
    trainable = [t for t in tensors if t.trainable]
    part_all = sum(share(t.numel, w) for t in tensors)
    part_train = sum(share(t.numel, w) for t in trainable)
    modules: dict[str, int] = {}
    train_modules: dict[str, int] = {}
    for t in tensors:
        modules[t.module] = modules.get(t.module, 0) + t.numel
        if t.trainable:
            train_modules[t.module] = train_modules.get(t.module, 0) + t.numel
    persistent = sum(t.numel for t in tensors if t.numel < zero.persistence_threshold)
    total = sum(t.numel for t in tensors)
    largest = max(modules.values())
    gathered = largest + min(zero.prefetch_bucket_size, total)
    grads_in_flight = max(train_modules.values(), default=0)
    # the reduce bucket is allocated whole at initialize (contiguous_gradients), however few grads there are
    # reduce bucket and backward's full gradients are in the weight dtype, whatever the partitions' dtype
    working = zero.weight_bytes * (gathered + persistent + zero.reduce_bucket_size + grads_in_flight)
    transient = 4 * min(part_train, zero.sub_group_size)
    return StageMemory(
        name=name,
        layers=cfg.num_hidden_layers,
        new_layers=cfg.num_hidden_layers - len(inherited),
        params_total=total,
        params_trainable=sum(t.numel for t in trainable),
        lora_params=sum(t.numel for t in tensors if ".lora_" in t.name),
        param_bytes=zero.weight_bytes * part_all,
        grad_bytes=zero.grad_bytes * part_train,
        optimizer_state_bytes=(zero.master_bytes + zero.adam_bytes) * part_train,
        working_bytes=working,
        activation_bytes=activation_bytes(cfg, micro_batch, seq_len, checkpointing, zero.activation_bytes),
        init_transient_bytes=transient,
        details={
            "gathered_params": gathered,
            "persistent_params": persistent,
            **state_breakdown(tensors, zero),
        },
    )


def state_breakdown(tensors: list[Tensor], zero: ZeroSettings) -> dict[str, int]:
    """Per-rank state bytes split by kind: trainable / frozen weights, LoRA, embeddings + LM head."""
    w = zero.world_size
    per_trainable = zero.weight_bytes + zero.grad_bytes + zero.master_bytes + zero.adam_bytes

    def state(t: Tensor) -> int:
        return share(t.numel, w) * (per_trainable if t.trainable else zero.weight_bytes)

    lora = [t for t in tensors if ".lora_" in t.name]
    outer = [t for t in tensors if not t.name.startswith("model.layers.")]
    body = [t for t in tensors if t.name.startswith("model.layers.") and ".lora_" not in t.name]
    return {
        "trainable_layer_state_bytes": sum(state(t) for t in body if t.trainable),
        "frozen_layer_state_bytes": sum(state(t) for t in body if not t.trainable),
        "lora_state_bytes": sum(state(t) for t in lora),
        "embeddings_and_head_state_bytes": sum(state(t) for t in outer),
    }


# --- STEP's stage-size search --------------------------------------------------------------------


def compositions(total: int, parts: int) -> Iterable[tuple[int, ...]]:
    """Every way to write `total` as an ordered sum of `parts` positive integers."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(b - a for a, b in itertools.pairwise(bounds))


def search_stage_sizes(
    total_layers: int, parts: int, stage_cost: Callable[[int, int], float]
) -> tuple[tuple[int, ...], list[float]]:
    """Brute force over compositions: the new-layer counts (n_1..n_K) minimising max_i cost(N_{i-1}, n_i).

    Ties go to the composition found first (itertools order), i.e. the one with the smallest first stages.
    """
    best: tuple[tuple[int, ...], list[float]] | None = None
    cache: dict[tuple[int, int], float] = {}
    for comp in compositions(total_layers, parts):
        costs, done = [], 0
        for n in comp:
            key = (done, n)
            if key not in cache:
                cache[key] = stage_cost(done, n)
            costs.append(cache[key])
            done += n
        if best is None or max(costs) < max(best[1]):
            best = (comp, costs)
    if best is None:
        raise ValueError(f"cannot split {total_layers} layers into {parts} stages")
    return best


def paper_stage_cost(lora_ratio: float) -> Callable[[int, int], float]:
    """The paper's layers-only model in units of P_layer: 16 n_i + 2 N_{i-1} + 16 N_{i-1} E/P_layer."""
    return lambda inherited, new: 16 * new + 2 * inherited + 16 * inherited * lora_ratio


# --- a recipe's plan --------------------------------------------------------------------------------


@dataclass
class Plan:
    stages: list[StageMemory]
    vanilla: StageMemory
    search: dict[str, Any]
    budget_bytes: int | None
    world_size: int

    def as_json(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "budget_bytes": self.budget_bytes,
            "stages": [s.as_dict() for s in self.stages],
            "vanilla_peak_bytes": self.vanilla.peak_bytes,
            "vanilla": self.vanilla.as_dict(),
            "search": self.search,
        }


def plan_recipe(
    recipe: Recipe,
    world_size: int = 1,
    budget_bytes: int | None = None,
    parts: int | None = None,
    precision: str | None = None,
    source: str = "recipe",
) -> Plan:
    """Every stage's memory, vanilla training of the final model, and the best STEP split into `parts`
    stages (default: as many as the recipe has)."""
    from bigtrain.pipeline.stages import resolve_stages
    from bigtrain.train.step_lora import read_inherited_layers

    stages = resolve_stages(recipe, source=source)
    out: list[StageMemory] = []
    for st in stages:
        r = st.recipe
        cfg = r.model.build_config()
        inherited: set[int] = set()
        if r.step is not None:
            if st.inherited_layers:
                inherited = set(range(st.inherited_layers))
            else:  # a flat STEP recipe: its init_from says which layers are inherited
                inherited = read_inherited_layers(r.init_from or "")
        zero = ZeroSettings.from_recipe(r, world_size, precision)
        out.append(stage_memory(cfg, zero, *_batch(r), inherited, r.step, name=st.name))
    final = stages[-1].recipe
    zero = ZeroSettings.from_recipe(final, world_size, precision)
    vanilla = stage_memory(final.model.build_config(), zero, *_batch(final), name="vanilla")
    step_cfg = next((st.recipe.step for st in stages if st.recipe.step is not None), None) or StepConfig()
    k = parts or len(stages)
    if not 1 <= k <= final.model.num_layers:
        raise BigtrainError(f"{k} STEP stages: must be between 1 and the final model's {final.model.num_layers} layers")

    def cost(done: int, new: int) -> float:
        spec = final.model.model_copy(update={"num_layers": done + new})
        return stage_memory(
            spec.build_config(), zero, *_batch(final), set(range(done)), step_cfg if done else None
        ).peak_bytes

    comp, costs = search_stage_sizes(final.model.num_layers, k, cost)
    layers = list(itertools.accumulate(comp))
    search = {
        "parts": k,
        "stages": [
            {"layers": n, "new_layers": c, "peak_bytes": int(p)} for n, c, p in zip(layers, comp, costs, strict=True)
        ],
        "max_peak_bytes": int(max(costs)),
        "reduction_vs_vanilla": 1 - max(costs) / vanilla.peak_bytes,
        "fits_budget": None if budget_bytes is None else max(costs) <= budget_bytes,
        "lora_rank": step_cfg.lora_rank,
    }
    return Plan(out, vanilla, search, budget_bytes, world_size)


def _batch(recipe: Recipe) -> tuple[int, int, bool]:
    return recipe.train.micro_batch_size, recipe.data.seq_len, recipe.train.activation_checkpointing


def format_plan(plan: Plan) -> str:
    """The human table: recipe stages, the searched split, vanilla training of the final model."""

    def gib(b: float) -> str:
        return f"{b / GIB:8.2f}"

    budget = plan.budget_bytes
    head = (
        f"{'stage':<10} {'layers':>6} {'new':>4} {'trainable':>13} {'LoRA':>11} {'weights':>8} {'grads':>8} "
        f"{'optim':>8} {'working':>8} {'activ.':>8} {'peak GiB':>8} {'vs van.':>8}"
    )
    lines = [f"per-rank memory, ZeRO-3 over {plan.world_size} rank(s), GiB", head, "-" * len(head)]
    rows = [*plan.stages, plan.vanilla]
    for s in rows:
        over = "  over budget" if budget is not None and s.peak_bytes > budget else ""
        versus = s.peak_bytes / plan.vanilla.peak_bytes - 1
        lines.append(
            f"{s.name[:10]:<10} {s.layers:>6} {s.new_layers:>4} "
            f"{s.params_trainable:>13,} {s.lora_params:>11,} "
            f"{gib(s.param_bytes)} {gib(s.grad_bytes)} {gib(s.optimizer_state_bytes)} {gib(s.working_bytes)} "
            f"{gib(s.activation_bytes)} {gib(s.peak_bytes)} {versus:>+8.1%}{over}"
        )
    largest = max(s.peak_bytes for s in plan.stages)
    lines.append(
        f"recipe: largest stage peak {largest / GIB:.2f} GiB, {1 - largest / plan.vanilla.peak_bytes:.1%} "
        f"below vanilla ({plan.vanilla.peak_bytes / GIB:.2f} GiB)"
    )
    sr = plan.search
    split = " + ".join(str(s["new_layers"]) for s in sr["stages"])
    fits = "" if sr["fits_budget"] is None else ("; fits the budget" if sr["fits_budget"] else "; OVER the budget")
    lines.append(
        f"best STEP split into {sr['parts']} stage(s): {split} layers, peaks "
        + ", ".join(f"{s['peak_bytes'] / GIB:.2f}" for s in sr["stages"])
        + f" GiB; largest {sr['max_peak_bytes'] / GIB:.2f} GiB, "
        + f"{sr['reduction_vs_vanilla']:.1%} below vanilla{fits}"
    )
    if budget is not None:
        lines.append(f"budget {budget / GIB:.2f} GiB per rank")
    return "\n".join(lines)
