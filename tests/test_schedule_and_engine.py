"""LR schedules, DeepSpeed config filling, and the engine variants (ZeRO-2, activation checkpointing, WSD)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bigtrain.config import Recipe, RecipeError, TrainConfig
from bigtrain.errors import BigtrainError
from bigtrain.train.ds_config import build_ds_config
from bigtrain.train.schedule import lr_multiplier
from tests.trainer_runs import launch, losses, tiny_overrides


def test_cosine_warms_up_then_decays_to_the_floor() -> None:
    f = lr_multiplier(TrainConfig(schedule="cosine", warmup_steps=4, min_lr_ratio=0.1), total_steps=20)
    assert [round(f(s), 4) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert f(4) == pytest.approx(1.0)
    assert f(12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(20) == pytest.approx(0.1) and f(25) == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_linearly() -> None:
    f = lr_multiplier(TrainConfig(schedule="wsd", warmup_steps=2, decay_fraction=0.25, min_lr_ratio=0.0), 20)
    assert f(2) == f(10) == f(14) == 1.0
    assert f(15) == pytest.approx(1.0) and f(17) == pytest.approx(0.6) and f(20) == pytest.approx(0.0)


def test_ds_config_fills_every_auto_from_the_recipe() -> None:
    recipe = Recipe.model_validate(
        {"train": {"micro_batch_size": 2, "global_batch_size": 16, "lr": 1e-3, "grad_clip": 0.5}}
    )
    cfg = build_ds_config(recipe, world_size=4, hidden_size=64)
    assert cfg["train_batch_size"] == 16 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["optimizer"]["params"]["lr"] == 1e-3 and cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"]["stage"] == 3
    assert "auto" not in json.dumps(cfg)
    with pytest.raises(RecipeError, match="not divisible"):
        build_ds_config(recipe, world_size=3, hidden_size=64)
    bad = Recipe.model_validate({"train": {"ds_config": "zero9"}})
    with pytest.raises(BigtrainError, match="'zero9' not found"):
        build_ds_config(bad, world_size=1, hidden_size=64)


def test_zero2_with_activation_checkpointing_and_wsd(demo_data: Path, tmp_path: Path) -> None:
    """The other engine paths train too: ZeRO-2, activation checkpointing, the WSD schedule."""
    out = tmp_path / "run"
    extra = {
        "train.ds_config": "zero2",
        "train.activation_checkpointing": True,
        "train.schedule": "wsd",
        "train.max_steps": 6,
        "train.eval_every": 0,
    }
    launch(tiny_overrides(demo_data, out, tmp_path / "cache", **extra), ranks=1)
    curve = losses(out)
    assert curve[6] < curve[1]
    info = json.loads((out / "run.json").read_text())
    assert info["zero_stage"] == 2 and (out / "hf" / "model.safetensors").exists()
