"""DeepSpeed configs: a JSON template from ds_configs/ with every "auto" filled from the recipe, its ZeRO stage
set by `train.zero_stage`, and the ZeRO-3 settings that keep each decoder layer one gather (docs/performance.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from bigtrain.config import Recipe
from bigtrain.errors import BigtrainError

DS_CONFIG_DIR = Path(__file__).resolve().parents[2] / "ds_configs"


def resolve_precision(recipe: Recipe) -> str:
    """auto: bf16 on GPU, fp32 on CPU (DeepSpeed's CPU accelerator + gloo)."""
    if recipe.train.precision != "auto":
        return recipe.train.precision
    return "bf16" if torch.cuda.is_available() else "fp32"


def load_template(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = DS_CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        known = sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json"))
        raise BigtrainError(f"train.ds_config: {name_or_path!r} not found (built in: {known}, or a JSON path)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BigtrainError(f"train.ds_config: {path}:{e.lineno}: invalid JSON ({e.msg})") from None


STAGE3_ONLY = ("offload_param", "zero_hpz_partition_size", "memory_efficient_linear")


def build_ds_config(
    recipe: Recipe,
    world_size: int,
    hidden_size: int,
    zero_stage: int | None = None,
    layer_params: int | None = None,
    local_world_size: int | None = None,
) -> dict[str, Any]:
    """`zero_stage`: the stage to run (None: the template's); `layer_params`: the largest decoder layer's
    parameter count (ZeRO-3 buckets hold at least one layer); `local_world_size`: GPUs per node (hpZ)."""
    t = recipe.train
    gbs, accum = recipe.global_batch(world_size)
    precision = resolve_precision(recipe)
    auto: dict[str, Any] = {
        "train_batch_size": gbs,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": t.grad_clip,
        "bf16.enabled": precision == "bf16",
        "fp16.enabled": precision == "fp16",
        "optimizer.params.lr": t.lr,
        "optimizer.params.betas": list(t.betas),
        "optimizer.params.eps": t.eps,
        "optimizer.params.weight_decay": t.weight_decay,
        # ZeRO-3 buckets: at least one decoder layer, so a layer is one gather and one reduce-scatter
        "zero_optimization.reduce_bucket_size": max(hidden_size * hidden_size, layer_params or 0),
        "zero_optimization.stage3_prefetch_bucket_size": max(int(0.9 * hidden_size * hidden_size), layer_params or 0),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }
    cfg = load_template(t.ds_config)
    fill_auto(cfg, auto, "")
    if precision == "fp16":
        cfg.setdefault("fp16", {})["enabled"] = True
    if precision == "bf16":
        cfg.setdefault("bf16", {})["enabled"] = True
    zero = cfg.setdefault("zero_optimization", {})
    if zero_stage is not None:
        set_stage(zero, zero_stage)
    if precision == "bf16" and zero.get("stage", 0) >= 1:
        # DeepSpeed's default grad_accum_dtype is the weight dtype: micro-batch gradients would be summed in bf16.
        # fp32 selects BF16_Optimizer at stage 1 and fp32 gradient partitions at stages 2-3 (stage 0 refuses it)
        cfg.setdefault("data_types", {}).setdefault("grad_accum_dtype", "fp32")
    if zero.get("stage", 0) == 3:
        # memory_efficient_linear wraps every Linear in an autograd function that re-gathers its weight
        zero.setdefault("memory_efficient_linear", False)
        if local_world_size and world_size > local_world_size and world_size % local_world_size == 0:
            # multi-node: a secondary copy of the weights per node, so forward/backward gathers stay intra-node
            zero.setdefault("zero_hpz_partition_size", local_world_size)
    return cfg


def set_stage(zero: dict[str, Any], stage: int) -> None:
    """Run the template at another stage: drop what only stage 3 accepts, refuse what the stage cannot do."""
    if stage < 3 and "offload_param" in zero:
        raise BigtrainError(f"train.zero_stage: {stage} with a parameter-offload template (offload_param needs 3)")
    if stage == 0 and "offload_optimizer" in zero:
        raise BigtrainError("train.zero_stage: 0 with an optimizer-offload template (offload_optimizer needs >= 1)")
    zero["stage"] = stage
    if stage < 3:
        for key in [k for k in zero if k.startswith("stage3_") or k in STAGE3_ONLY]:
            del zero[key]


def fill_auto(node: dict[str, Any], values: dict[str, Any], prefix: str) -> None:
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            fill_auto(value, values, path + ".")
        elif value == "auto":
            if path not in values:
                raise BigtrainError(f'train.ds_config: no recipe value for {path!r} = "auto"')
            node[key] = values[path]
