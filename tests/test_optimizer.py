"""Which Adam runs (bigtrain/train/optimizer.py): torch's AdamW where DeepSpeed's FusedAdam cannot be built,
DeepSpeed's own choice otherwise, and run.json names it; `train.save_final=false` writes no final checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bigtrain.config import Recipe
from bigtrain.train.ds_config import build_ds_config
from bigtrain.train.optimizer import choose_optimizer
from tests.trainer_runs import REPO, launch, run_ranks, tiny_overrides


def zero3_config() -> dict:
    return build_ds_config(Recipe.model_validate({"train": {"micro_batch_size": 2}}), 1, 64)


def test_fallback_to_torch_adamw_when_fused_adam_cannot_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIGTRAIN_TORCH_ADAM", raising=False)
    cfg = zero3_config()
    why = choose_optimizer(cfg, problem="no nvcc to build DeepSpeed's FusedAdam")
    assert cfg["optimizer"]["params"]["torch_adam"] is True and "no nvcc" in why and "torch.optim.AdamW" in why
    assert "fused" not in cfg["optimizer"]["params"]  # CPU: torch's fused AdamW is CUDA-only
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    cuda = zero3_config()
    assert "(fused)" in choose_optimizer(cuda, problem="no ninja")
    assert cuda["optimizer"]["params"]["fused"] is True
    # optimizer offload keeps DeepSpeed's CPU Adam
    offload = build_ds_config(Recipe.model_validate({"train": {"ds_config": "zero3_offload"}}), 1, 64)
    assert "CPU Adam" in choose_optimizer(offload, problem="no nvcc")
    assert "torch_adam" not in offload["optimizer"]["params"]


def test_no_problem_keeps_deepspeeds_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIGTRAIN_TORCH_ADAM", raising=False)
    monkeypatch.setattr("bigtrain.train.optimizer.fused_adam_problem", lambda: None)
    cfg = zero3_config()
    assert "DeepSpeed's choice" in choose_optimizer(cfg)
    assert "torch_adam" not in cfg["optimizer"]["params"]
    monkeypatch.setenv("BIGTRAIN_TORCH_ADAM", "1")
    assert "BIGTRAIN_TORCH_ADAM=1" in choose_optimizer(cfg) and cfg["optimizer"]["params"]["torch_adam"]


@pytest.mark.slow
def test_run_json_names_the_optimizer_and_save_final_false_skips_the_checkpoint(
    demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real 1-rank runs on CPU: DeepSpeed's pick is recorded; BIGTRAIN_TORCH_ADAM=1 runs torch's AdamW. With
    save_final=false no checkpoint is written at the end, the export still is."""
    cache = tmp_path / "cache"
    short = {"train.max_steps": 2, "train.eval_every": 0}
    monkeypatch.delenv("BIGTRAIN_TORCH_ADAM", raising=False)
    default = tmp_path / "default"
    launch(tiny_overrides(demo_data, default, cache, **short, **{"train.save_final": "false"}), ranks=1)
    info = json.loads((default / "run.json").read_text())
    assert info["optimizer"] and info["optimizer"] != "none" and "DeepSpeed's choice" in info["optimizer_reason"]
    assert not (default / "checkpoints").exists() or not list((default / "checkpoints").glob("step_*"))
    assert (default / "hf" / "config.json").is_file() and info["status"] == "finished"

    monkeypatch.setenv("BIGTRAIN_TORCH_ADAM", "1")
    forced = tmp_path / "torch-adam"
    launch(tiny_overrides(demo_data, forced, cache, **short, **{"train.export": "false"}), ranks=1)
    info = json.loads((forced / "run.json").read_text())
    assert info["optimizer"] == "torch.optim.adamw.AdamW" and "BIGTRAIN_TORCH_ADAM=1" in info["optimizer_reason"]
    assert list((forced / "checkpoints").glob("step_2"))  # save_final defaults to true


@pytest.mark.slow
def test_first_update_equals_torch_adamw(tmp_path: Path) -> None:
    """Real one-rank engines as the trainer builds them (FusedAdam from DeepSpeed's CPU op builder, as on CUDA):
    one step from the same init and gradients lands where torch's AdamW's first step does, at every stage and
    precision. Stage 0 in bf16/fp16 (FP16_Optimizer, FP16_UnfusedOptimizer) took a zero-gradient Adam step in
    deepspeed.initialize: step count 1 and a weight decay at the peak LR before the first real update (which
    then was 0.73x AdamW's); undo_initial_adam_step undoes it."""
    out = tmp_path / "adam.json"
    run_ranks(REPO / "tests" / "adam_first_step_ranks.py", [str(out)], 1)
    result = json.loads(out.read_text())
    for name, r in result.items():
        assert "error" not in r and not r["skipped"], (name, r)
        assert r["steps_after_init"] == [] and r["moved_by_init"] == 0.0, (name, r)
        assert r["steps_after_step"] in ([1], [0, 1]), (name, r)  # FusedAdam: group step 0, state step 1
        assert r["diff_from_adamw"] < 1e-4, (name, r)  # the kernels' rounding: ~1e-5 of the update
    initial_step = {n for n, r in result.items() if r["fixed"]}
    assert initial_step == {"bf16-0", "bf16-0-torch", "fp16-0"}, result  # the bug this guards against
    for name in initial_step:
        r = result[name]
        assert 1 in r["steps_at_init"] and r["moved_at_init"] > 0, (name, r)
