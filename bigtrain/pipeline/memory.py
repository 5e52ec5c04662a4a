"""The planner's memory model: per-rank bytes of one training stage under DeepSpeed ZeRO (3 unless the
recipe sets `train.zero_stage`; `auto` is planned at the template's stage, which is what it runs without a
GPU; on one it may pick a faster stage, see train/zero_stage.py).

State bytes at every stage and dtype come from the one accounting in `train/state_bytes.py` (`expected`), the
one run.json's measured figures and `zero_stage: auto` use. Below, what ZeRO-3 holds; at stages 0-2 the
weights are whole on every rank and there are no gathers, so the working buffers are the reduce bucket and
backward's gradients in flight.

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

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bigtrain.config import Recipe, StepConfig
from bigtrain.model.configuration import BigTrainConfig
from bigtrain.model.param_shapes import expected_shapes, layer_shapes
from bigtrain.train import state_bytes
from bigtrain.train.step_lora import lora_shapes, trainable_in_step

GIB = 1024**3


@dataclass(frozen=True)
class ZeroSettings:
    """What decides the bytes: world size, dtypes and DeepSpeed's ZeRO-3 bucket sizes (in elements)."""

    world_size: int = 1
    stage: int = 3
    precision: str = "bf16"
    weight_bytes: int = 2  # bf16
    grad_bytes: int = 4  # the summed gradients' grad_accum_dtype: fp32 (bigtrain sets it under bf16)
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
        stage = recipe.train.zero_stage if recipe.train.zero_stage != "auto" else None
        ds = build_ds_config(planned, world_size, recipe.model.hidden_size, zero_stage=stage)
        zero = ds.get("zero_optimization", {})
        width = {"bf16": 2, "fp16": 2, "fp32": 4}[precision]
        accum = ds.get("data_types", {}).get("grad_accum_dtype")
        grad = {"fp32": 4, "bf16": 2, "fp16": 2}.get(accum or "", width)
        return cls(
            world_size=world_size,
            stage=int(zero.get("stage", 0)),
            precision=precision,
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
        Tensor(
            name,
            math.prod(shape),
            step is None or trainable_in_step(name, inherited, step),
            name.removesuffix(".weight"),
        )
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
    up, silu(gate) and the product; an MoE FFN (model/moe.py) keeps those for each of a token's top-k experts,
    with the gathered input and the weighted output, and the fp32 router logits. With checkpointing only each layer's input stays, plus one layer
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
        if f and cfg.layer_is_moe(i):  # per token: fp32 router logits and probabilities; per (token, slot):
            e, k = int(cfg.moe["num_experts"]), int(cfg.moe["top_k"])  # its gathered input, the expert's
            ffn = width * 2 * d + 4 * d + 8 * e + k * width * (3 * d + 4 * f)  # FFN, its output, weighted
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
    if zero.stage < 3:  # whole weights on every rank: nothing gathered
        gathered = persistent = 0
    working = zero.weight_bytes * (gathered + persistent + zero.reduce_bucket_size + grads_in_flight)
    transient = 4 * min(part_train, zero.sub_group_size) if zero.stage == 3 else 0
    state = state_bytes.expected(
        zero.stage, zero.precision, w, [t.numel for t in tensors], [t.trainable for t in tensors]
    )
    return StageMemory(
        name=name,
        layers=cfg.num_hidden_layers,
        new_layers=cfg.num_hidden_layers - len(inherited),
        params_total=total,
        params_trainable=sum(t.numel for t in trainable),
        lora_params=sum(t.numel for t in tensors if ".lora_" in t.name),
        param_bytes=state["param_bytes"],
        grad_bytes=state["grad_bytes"],
        optimizer_state_bytes=state["optimizer_state_bytes"],
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

    def state(t: Tensor) -> int:
        return sum(state_bytes.expected(zero.stage, zero.precision, zero.world_size, [t.numel], [t.trainable]).values())

    lora = [t for t in tensors if ".lora_" in t.name]
    outer = [t for t in tensors if not t.name.startswith("model.layers.")]
    body = [t for t in tensors if t.name.startswith("model.layers.") and ".lora_" not in t.name]
    return {
        "trainable_layer_state_bytes": sum(state(t) for t in body if t.trainable),
        "frozen_layer_state_bytes": sum(state(t) for t in body if not t.trainable),
        "lora_state_bytes": sum(state(t) for t in lora),
        "embeddings_and_head_state_bytes": sum(state(t) for t in outer),
    }
