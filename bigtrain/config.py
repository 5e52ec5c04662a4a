"""The recipe schema. The typed config *is* the schema: a recipe YAML is validated against these
classes, with trailing `key=value` overrides (dotted paths) applied first.

Every problem becomes a `RecipeError` whose message is one line naming the file and the key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bigtrain.model.configuration import BigTrainConfig, architecture_problems


class RecipeError(ValueError):
    """A recipe (or override) that cannot be used. str() is one line saying what and where."""


class Section(BaseModel):
    # Unknown keys are errors, values are not silently coerced across types (e.g. "abc" -> int).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LayoutConfig(Section):
    """How per-layer sizes are derived from the isotropic reference (see bigtrain/model/layout.py)."""

    scheme: Literal["uniform", "ffn-concentrate", "lws", "reverse", "framed", "crown"] = "uniform"
    # ffn-concentrate: share of layers that keep an FFN and where they sit
    ratio: float | None = None
    position: Literal["first", "middle", "final"] = "middle"
    # lws / reverse / framed: [start, end]; crown: [edge, peak, edge]
    ffn_mult: list[float] | None = None
    attn_mult: list[float] | None = None
    frame: bool = False
    match_params: bool = False
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


class DataConfig(Section):
    # Raw text: local files/globs (.txt, .jsonl/.json, .parquet), or a hub/local dataset name.
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
    # Where tokenised data is cached when token_dir is not given (default: <output_dir>/data).
    cache_dir: str | None = None
    tokenizer: str = "data/tokenizer"
    seq_len: int = 256
    # Held out for evaluation when no eval files/split are given: this share of packed sequences.
    eval_fraction: float = Field(default=0.01, ge=0.0, lt=0.5)
    seed: int = 1234
    num_proc: int = 1


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
    activation_checkpointing: bool = False
    log_every: int = 1
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 8
    save_every: int = 0  # 0: only at the end
    keep_last: int = 2
    export: bool = True
    peak_tflops: float | None = None  # per device, for MFU; None: by detected GPU
    progress: bool = True

    @model_validator(mode="after")
    def _positive(self) -> TrainConfig:
        for name in ("micro_batch_size", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        return self


class Recipe(Section):
    output_dir: str = "runs/demo"
    init_from: str | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def global_batch(self, world_size: int) -> tuple[int, int]:
        """(global batch size in sequences, gradient accumulation steps) for this world size."""
        micro = self.train.micro_batch_size
        gbs = self.train.global_batch_size or micro * world_size
        if gbs % (micro * world_size):
            raise RecipeError(
                f"train.global_batch_size={gbs} is not divisible by micro_batch_size={micro} x world size "
                f"{world_size}"
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
        raise RecipeError(describe_validation_error(e, source)) from None
    check_model(recipe.model, source)
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


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML (or the defaults when path is None), apply overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "recipe"
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    return validate_recipe(data, source)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
