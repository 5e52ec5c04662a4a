"""The recipe schema. The typed config *is* the schema: a recipe YAML is validated against these
classes, with trailing `key=value` overrides (dotted paths) applied first.

Every problem becomes a `RecipeError` whose message is one line naming the file and the key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bigtrain.model.configuration import BigTrainConfig, architecture_problems


class RecipeError(ValueError):
    """A recipe (or override) that cannot be used. str() is one line saying what and where."""


class Section(BaseModel):
    # Unknown keys are errors, values are not silently coerced across types (e.g. "abc" -> int).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LayoutConfig(Section):
    """How per-layer sizes derive from the isotropic reference (bigtrain/model/layout.py, docs/layouts.md)."""

    scheme: Literal["uniform", "ffn-concentrate", "lws", "reverse", "framed", "crown"] = "uniform"
    # ffn-concentrate: share of layers that keep an FFN, where they sit, how the widened FFNs are rounded
    ratio: float | None = None
    position: Literal["first", "middle", "final"] = "middle"
    ffn_rounding: Literal["common", "spread"] = "common"
    # lws / framed: [first layer, last layer] growing; reverse: shrinking; crown: [edge, peak, edge].
    # Multipliers of hidden_size (beta: FFN width, alpha: query width); None: OpenELM's 0.5-4.0 / 0.5-1.0.
    ffn_mult: list[float] | None = None
    attn_mult: list[float] | None = None
    # Pin the first and last layers to the reference, or to these multipliers of hidden_size.
    frame: bool = False
    frame_ffn_mult: float | None = None
    frame_attn_mult: float | None = None
    # Scale the multipliers by one common factor so the parameter count matches the reference.
    match_params: bool = False
    match_scale: Literal["both", "ffn", "attn"] = "both"
    # FFN widths are made divisible by this (OpenELM and the FFN study: 256).
    ffn_multiple: int = 256


class ModelSpec(Section):
    """The recipe's `model:` section: the isotropic reference plus a layout scheme."""

    hidden_size: int = 256
    num_layers: int = 4
    head_dim: int = 64
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int = 688
    # None: the tokenizer's size rounded up to a multiple of 64. Never below the tokenizer's size.
    vocab_size: int | None = None
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    init_std: float = 0.02
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = "sdpa"
    layout: LayoutConfig = Field(default_factory=LayoutConfig)

    def build_config(self, vocab_size: int | None = None) -> BigTrainConfig:
        """The model config with the per-layer sizes that the layout scheme gives."""
        from bigtrain.model.layout import derive_layers

        ffn, heads, kv = derive_layers(self)
        return BigTrainConfig(
            vocab_size=vocab_size or self.vocab_size or 32000,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            head_dim=self.head_dim,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads or self.num_heads,
            intermediate_size=self.intermediate_size,
            layer_intermediate_sizes=ffn,
            layer_num_attention_heads=heads,
            layer_num_key_value_heads=kv,
            max_position_embeddings=self.max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            rms_norm_eps=self.rms_norm_eps,
            initializer_range=self.init_std,
            tie_word_embeddings=self.tie_embeddings,
        )


class SourceConfig(Section):
    """One source of a mixture (`data.sources`): raw files, a dataset name, or a prepared token directory."""

    name: str
    files: list[str] = Field(default_factory=list)
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    token_dir: str | None = None
    text_field: str | None = None  # default: data.text_field
    weight: float = 1.0
    max_tokens: int | None = None

    @field_validator("files", mode="before")
    @classmethod
    def _one_path(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_kind(self) -> SourceConfig:
        kinds = [k for k in ("files", "dataset", "token_dir") if getattr(self, k)]
        if len(kinds) != 1:
            got = " and ".join(kinds) if kinds else "none of them"
            raise ValueError(f"source {self.name!r}: give exactly one of files, dataset, token_dir (got {got})")
        if not self.weight > 0 or not math.isfinite(self.weight):
            raise ValueError(f"source {self.name!r}: weight must be > 0, got {self.weight}")
        return self


class DataConfig(Section):
    # Raw text: local files/globs (.txt, .jsonl/.json, .parquet), or a hub/local dataset name.
    # A single path is a one-element list (`data.train_files=corpus.txt`).
    train_files: list[str] = Field(default_factory=list)
    eval_files: list[str] = Field(default_factory=list)
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    eval_split: str | None = None
    text_field: str = "text"
    streaming: bool = False
    # A pre-tokenised token directory from `bigtrain-data prepare` (skips tokenisation).
    token_dir: str | None = None
    # A weighted mixture of sources instead of train_files/dataset/token_dir (docs/data.md).
    sources: list[SourceConfig] = Field(default_factory=list)
    # Where tokenised data is cached, keyed by content (default: <output_dir>/data; for a staged recipe
    # <root output_dir>/data, shared by every stage).
    cache_dir: str | None = None
    # Processes that tokenise (None: all cores).
    workers: int | None = Field(default=None, ge=1)
    tokenizer: str = "data/tokenizer"
    seq_len: int = 256
    # Held out for evaluation when no eval files/split are given: this share of packed sequences.
    eval_fraction: float = Field(default=0.01, ge=0.0, lt=0.5)
    seed: int = 1234
    # Where this run begins in the seeded order of training sequences: the global sequences before it are
    # skipped. None: 0, except that each later stage of a staged recipe continues where the stage before
    # it ended (bigtrain-run sets it), so a grown model goes on through the data instead of seeing its
    # first stage's batches again; 0 restarts. A streamed dataset always starts at its beginning.
    start_sequence: int | None = Field(default=None, ge=0)
    # Stop tokenising a source after this many tokens (e.g. a slice of a streamed hub corpus).
    max_tokens: int | None = None

    @field_validator("train_files", "eval_files", mode="before")
    @classmethod
    def _one_path(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _sources_or_shorthand(self) -> DataConfig:
        if self.sources:
            shorthand = [k for k in ("train_files", "dataset", "token_dir") if getattr(self, k)]
            if shorthand:
                raise ValueError(f"data.sources replaces data.{shorthand[0]}: give one or the other")
            names = [s.name for s in self.sources]
            dup = next((n for n in names if names.count(n) > 1), None)
            if dup is not None:
                raise ValueError(f"data.sources: the name {dup!r} is used twice")
        if self.streaming and self.start_sequence:
            raise ValueError("data.start_sequence: a streamed dataset cannot skip ahead, it starts at its beginning")
        return self


class DownstreamConfig(Section):
    """lm-eval tasks scored on rank 0 from the current weights every `every` steps (bigtrain/evaluation/)."""

    every: int = Field(ge=1)
    tasks: list[str] = Field(min_length=1)
    limit: int | None = Field(default=None, ge=1)  # items per task (None: all)
    batch_size: int = Field(default=8, ge=1)


class TrainConfig(Section):
    max_steps: int | None = None
    tokens: float | None = None  # alternative to max_steps: train on this many tokens
    micro_batch_size: int = 4
    global_batch_size: int | None = None  # default: micro_batch_size * world size (no accumulation)
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 10
    decay_fraction: float = 0.2  # wsd: share of steps in the final decay
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 1234
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    ds_config: str = "zero3"  # a name in ds_configs/ or a path to a DeepSpeed JSON
    # auto: on CUDA, the fastest stage whose model states fit the device (0 > 1 > 2 > 3); on CPU, or with an
    # offload/custom template, the template's stage. A number overrides the template's stage (docs/performance.md).
    zero_stage: Literal["auto", 0, 1, 2, 3] = "auto"
    kernels: Literal["auto", "liger", "torch"] = "auto"  # auto: liger on CUDA when installed, else torch
    loss: Literal["auto", "fused", "chunked", "plain"] = "auto"  # auto: fused (liger) on CUDA, else chunked
    compile: bool = False  # torch.compile each decoder layer's block
    activation_checkpointing: bool = False
    checkpoint_every_n_layers: int = 1  # with activation_checkpointing: every n-th layer is recomputed
    log_every: int = 10
    sync_every: int = 10  # host syncs (preemption check) every n steps, and on log steps
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 8
    save_every: int = 0  # 0: only at the end
    keep_last: int = 2
    save_failure: Literal["stop", "retry"] = "stop"  # a failed save: stop the run, or train on and retry next interval
    checkpoint_checksums: bool = False  # SHA-256 of every file in the manifest (verified on resume; costs a read)
    export: bool = True
    peak_tflops: float | None = None  # per device, for MFU; None: by detected GPU
    progress: bool = True
    downstream: DownstreamConfig | None = None  # optional lm-eval scores during training (the [eval] extra)

    @model_validator(mode="after")
    def _positive(self) -> TrainConfig:
        for name in ("micro_batch_size", "log_every", "keep_last", "checkpoint_every_n_layers", "sync_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        return self


# --- staged training (STEP, model families): issue 5 --------------------------------------------

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# GrowSpec size field -> the ModelSpec field it sets
# A later stage's sizes come from grow:, never from model: (the weights must come from somewhere)
SIZE_FIELDS = (
    "num_layers",
    "hidden_size",
    "intermediate_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "vocab_size",
    "tie_embeddings",
    "layout",
)
GROW_SIZES = {
    "layers": "num_layers",
    "hidden": "hidden_size",
    "ffn": "intermediate_size",
    "heads": "num_heads",
    "kv_heads": "num_kv_heads",
}


class StepConfig(Section):
    """STEP: inherited layers frozen and adapted by LoRA (peft), new layers trained fully.
    `lora: false` is LLaMA Pro's stage (Wu et al., ACL 2024): the inherited layers frozen, no adapters,
    only the new blocks train (with `train_embeddings: false, train_lm_head: false` as the paper)."""

    lora: bool = True
    lora_rank: int = Field(default=64, ge=1)
    lora_alpha: float | None = None  # None: equal to the rank (scale 1)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    targets: list[str] = Field(default_factory=lambda: list(PROJECTIONS))
    # The paper leaves these open; both default to trainable (see docs/staged.md).
    train_embeddings: bool = True
    train_lm_head: bool = True
    # RMSNorm weights of inherited layers: frozen with the rest of the layer by default.
    train_inherited_norms: bool = False

    @model_validator(mode="after")
    def _known_targets(self) -> StepConfig:
        unknown = [t for t in self.targets if t not in PROJECTIONS]
        if unknown:
            raise ValueError(f"LoRA target {unknown[0]!r} matches no module (known: {', '.join(PROJECTIONS)})")
        if not self.targets:
            raise ValueError("LoRA targets are empty")
        return self

    @property
    def scale(self) -> float:
        return (self.lora_alpha if self.lora_alpha is not None else self.lora_rank) / self.lora_rank


class GrowSpec(Section):
    """How a stage's model is grown from the previous stage's export (names as `bigtrain-grow` flags)."""

    op: str
    layers: int | None = None
    hidden: int | None = None
    ffn: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    init: str | None = None
    seed: int | None = None
    # width replicas (net2net, aki): asymmetric (LEMON; the default when unset) | noise (Net2Net) | even (FPI)
    split: Literal["asymmetric", "noise", "even"] | None = None
    split_spread: float | None = Field(default=None, ge=0, lt=1)  # asymmetric: u ~ U(1-s, 1+s); default 0.5
    noise_std: float | None = Field(default=None, ge=0)  # noise: relative std; default 0.01
    placement: Literal["upper", "after-each"] | None = None  # step/zero-depth/random-depth; default upper
    drop: int | None = Field(default=None, ge=0)  # dus: layers dropped from each copy (give layers too)
    block: int | None = Field(default=None, ge=1)  # middle-stack: layers in the replicated middle block
    snr_db: float | None = None  # hypercloning: SNR (dB) of the function-keeping +-noise; none when unset

    @model_validator(mode="after")
    def _known_op(self) -> GrowSpec:
        from bigtrain.growth.registry import DEPTH_OPS, WIDTH_OPS, known  # the one list of operators

        parts = self.op.split("+")
        for part in parts:
            if part not in DEPTH_OPS + WIDTH_OPS:
                raise ValueError(f"unknown growth op {part!r} (known: {known()})")
        if sum(p in DEPTH_OPS for p in parts) > 1 or sum(p in WIDTH_OPS for p in parts) > 1:
            raise ValueError(f"op {self.op!r}: at most one depth and one width operator, joined by '+'")
        if "dus" in parts and self.layers is None:
            # the stage's depth must be known when the recipe is read, before the source exists
            raise ValueError("op dus: give layers (2 (L - drop)); drop alone does not size the stage")
        return self

    def sizes(self) -> dict[str, int]:
        """The ModelSpec fields this growth sets."""
        return {GROW_SIZES[k]: v for k in GROW_SIZES if (v := getattr(self, k)) is not None}

    def grow_args(self) -> dict[str, Any]:
        """Keyword arguments for `bigtrain.growth.grow_checkpoint` (op excluded)."""
        return {k: v for k, v in self.model_dump().items() if k != "op" and v is not None}


class StageSpec(Section):
    """One stage of a staged recipe: a flat training run that starts from the previous stage grown."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # First stage: partial overrides of the recipe's `model:`. Later stages: sizes come from `grow:`.
    model: dict[str, Any] = Field(default_factory=dict)
    grow: GrowSpec | None = None
    step: StepConfig | None = None
    train: dict[str, Any] = Field(default_factory=dict)  # partial overrides of the recipe's `train:`
    data: dict[str, Any] = Field(default_factory=dict)  # partial overrides of the recipe's `data:`
    # Max LR: a number, "by-size" (first stage's LR x (P_first / P_this)^lr_size_exponent, P = non-embedding
    # parameters), or None (the stage's train.lr).
    lr: float | Literal["by-size"] | None = None
    lr_size_exponent: float = 0.5
    init_from: str | None = None  # first stage only: an HF dir to start from


class Recipe(Section):
    output_dir: str = "runs/demo"
    init_from: str | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    step: StepConfig | None = None  # a flat stage with STEP on (init_from holds growth.json)
    stages: list[StageSpec] | None = None  # a staged recipe (see bigtrain/pipeline/stages.py)

    def global_batch(self, world_size: int) -> tuple[int, int]:
        """(global batch size in sequences, gradient accumulation steps) for this world size."""
        micro = self.train.micro_batch_size
        gbs = self.train.global_batch_size or micro * world_size
        if gbs % (micro * world_size):
            raise RecipeError(
                f"train.global_batch_size={gbs} is not divisible by micro_batch_size={micro} x world size {world_size}"
            )
        return gbs, gbs // (micro * world_size)

    def total_steps(self, world_size: int) -> int:
        if self.train.max_steps is not None:
            return self.train.max_steps
        if self.train.tokens is not None:
            gbs, _ = self.global_batch(world_size)
            return max(1, math.ceil(self.train.tokens / (gbs * self.data.seq_len)))
        raise RecipeError("train: give max_steps or tokens")


# --- loading -----------------------------------------------------------------------------------


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`a.b=1 c=[x,y]` -> nested dict; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r}: expected key=value")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {item!r}: {part} is set both as a value and a section")
        try:
            node[leaf] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise RecipeError(f"override {item!r}: not a YAML value ({e.problem})") from None
    return tree


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    return data


def describe_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key {loc!r}"
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: {loc}: {msg}{shown}"


def validate_recipe(data: dict[str, Any], source: str) -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(describe_stage_error(e, data, source) or describe_validation_error(e, source)) from None
    check_model(recipe.model, source)
    check_stages(recipe, source)
    return recipe


def check_model(spec: ModelSpec, source: str) -> BigTrainConfig:
    """Derive the per-layer architecture now, so a bad layout fails at load, not inside a rank."""
    try:
        cfg = spec.build_config()
    except ValueError as e:
        raise RecipeError(f"{source}: model: {e}") from None
    problems = architecture_problems(cfg)
    if problems:
        raise RecipeError(f"{source}: model: {problems[0]}")
    return cfg


def describe_stage_error(err: ValidationError, data: dict[str, Any], source: str) -> str | None:
    """A schema error inside `stages:` named by the stage's name rather than its list index."""
    loc = err.errors()[0]["loc"]
    if len(loc) < 3 or loc[0] != "stages" or not isinstance(loc[1], int):
        return None
    entry = (data.get("stages") or [None] * (loc[1] + 1))[loc[1]]
    name = entry.get("name") if isinstance(entry, dict) else None
    where = f"{source}: stage {name!r}" if name else f"{source}: stage #{loc[1] + 1}"
    return describe_validation_error(ValidationError.from_exception_data(err.title, [_relocated(err, 2)]), where)


def _relocated(err: ValidationError, drop: int) -> Any:
    first = err.errors()[0]
    return {"type": first["type"], "loc": first["loc"][drop:], "input": first.get("input"), "ctx": first.get("ctx", {})}


def check_stages(recipe: Recipe, source: str) -> list[ModelSpec]:
    """Validate a staged recipe now (not inside a rank hours later); returns each stage's model."""
    if recipe.stages is None:
        if recipe.step is not None and recipe.init_from is None:
            raise RecipeError(f"{source}: step: needs init_from (a grown checkpoint with growth.json)")
        return [recipe.model]
    if recipe.step is not None:
        raise RecipeError(f"{source}: step: belongs inside a stage when stages: is given")
    if not recipe.stages:
        raise RecipeError(f"{source}: stages: is empty")
    seen: set[str] = set()
    models: list[ModelSpec] = []
    for i, stage in enumerate(recipe.stages):
        where = f"{source}: stage {stage.name!r}"
        if stage.name in seen:
            raise RecipeError(f"{where}: the name is used by an earlier stage")
        seen.add(stage.name)
        models.append(_stage_model(recipe, i, models[-1] if models else None, where))
        prev_name = recipe.stages[i - 1].name if i else None
        _check_stage_growth(stage, models[-1], models[-2] if i else None, prev_name, recipe, where)
        _check_stage_sections(recipe, stage, where)
    return models


def _stage_model(recipe: Recipe, i: int, prev: ModelSpec | None, where: str) -> ModelSpec:
    stage = recipe.stages[i]  # type: ignore[index]
    if prev is None:
        base = recipe.model.model_dump()
        data = deep_merge(base, stage.model)
        if stage.grow is not None:
            data = deep_merge(data, stage.grow.sizes())
    else:
        sized = {k: v for k, v in stage.model.items() if k in SIZE_FIELDS}
        grown = deep_merge(prev.model_dump(), stage.grow.sizes() if stage.grow else {})
        for key, value in sized.items():
            if grown.get(key) != value:
                how = f"grow: gives {grown.get(key)}" if stage.grow else "there is no grow: to get there"
                raise RecipeError(
                    f"{where}: model.{key}={value} has no model source (previous stage has "
                    f"{prev.model_dump().get(key)}, {how})"
                )
        data = deep_merge(grown, stage.model)
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as e:
        raise RecipeError(describe_validation_error(e, f"{where}: model")) from None
    check_model(spec, f"{where}")
    return spec


def _check_stage_growth(
    stage: StageSpec,
    spec: ModelSpec,
    prev: ModelSpec | None,
    prev_name: str | None,
    recipe: Recipe,
    where: str,
) -> None:
    grow = stage.grow
    if prev is None:
        if grow is not None and not (stage.init_from or recipe.init_from):
            raise RecipeError(f"{where}: grow: has no model source to grow from (the first stage needs init_from)")
        if stage.step is not None and not (stage.init_from or recipe.init_from):
            raise RecipeError(f"{where}: step: needs a model source (init_from with growth.json)")
    elif stage.init_from is not None:
        raise RecipeError(f"{where}: init_from: only the first stage may set it (later stages start from the last)")
    if grow is not None and prev is not None:
        before, after = prev.model_dump(), spec.model_dump()
        for field in GROW_SIZES.values():
            b, a = before[field], after[field]
            if field == "num_kv_heads":  # None means "as many as query heads"
                b, a = b or before["num_heads"], a or after["num_heads"]
            if a < b:
                raise RecipeError(f"{where}: grow: would shrink {field} from {b} (stage {prev_name!r}) to {a}")
        if after == before:
            raise RecipeError(f"{where}: grow: op {grow.op!r} names no size larger than stage {prev_name!r}'s")
        from bigtrain.growth.registry import DEPTH_OPS, WIDTH_OPS

        ops = grow.op.split("+")
        if spec.num_layers > prev.num_layers and not any(op in DEPTH_OPS for op in ops):
            raise RecipeError(f"{where}: grow: layers={spec.num_layers} needs a depth op ({', '.join(DEPTH_OPS)})")
        widened = any(after[f] != before[f] for f in GROW_SIZES.values() if f != "num_layers")
        if widened and not any(op in WIDTH_OPS for op in ops):
            raise RecipeError(f"{where}: grow: a wider model needs a width op ({', '.join(WIDTH_OPS)})")
    if stage.step is not None and prev is not None:
        if grow is None or spec.num_layers <= prev.num_layers:
            raise RecipeError(f"{where}: step: needs grow: to add layers (STEP trains the new layers)")
        cfg = spec.build_config()
        inherited_ffn = any(cfg.layer_intermediate_sizes[: prev.num_layers])
        if not inherited_ffn and stage.step.lora:
            for t in stage.step.targets:
                if t in MLP_PROJECTIONS:
                    raise RecipeError(f"{where}: step.targets: {t!r} matches nothing (no inherited layer has an FFN)")


def _check_stage_sections(recipe: Recipe, stage: StageSpec, where: str) -> None:
    for name, cls in (("train", TrainConfig), ("data", DataConfig)):
        merged = deep_merge(getattr(recipe, name).model_dump(), getattr(stage, name))
        try:
            cls.model_validate(merged)
        except ValidationError as e:
            raise RecipeError(describe_validation_error(e, f"{where}: {name}")) from None


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML (or the defaults when path is None), apply overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "recipe"
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    return validate_recipe(data, source)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
