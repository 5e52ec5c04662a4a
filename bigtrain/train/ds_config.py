"""DeepSpeed configs: a JSON template from ds_configs/ with every "auto" filled from the recipe."""

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


def build_ds_config(recipe: Recipe, world_size: int, hidden_size: int) -> dict[str, Any]:
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
        # the usual sizing rules of thumb for ZeRO-3 buckets, by hidden size
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }
    cfg = load_template(t.ds_config)
    fill_auto(cfg, auto, "")
    if precision == "fp16":
        cfg.setdefault("fp16", {})["enabled"] = True
    if precision == "bf16":
        cfg.setdefault("bf16", {})["enabled"] = True
    return cfg


def fill_auto(node: dict[str, Any], values: dict[str, Any], prefix: str) -> None:
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            fill_auto(value, values, path + ".")
        elif value == "auto":
            if path not in values:
                raise BigtrainError(f'train.ds_config: no recipe value for {path!r} = "auto"')
            node[key] = values[path]
