"""Heterogeneous layouts train end to end under DeepSpeed ZeRO-3 (real runs on CPU, real text and tokenizer).

- `concentrated`: 2 ranks through the deepspeed launcher, 6 steps, saved at steps 3 and 6. Its layout has
  attention-only layers, widened FFNs and framed layers with fewer query / kv heads than the rest.
- `resumed`: the same recipe in a fresh run directory that holds only `concentrated`'s step-3 checkpoint
  (what a crash between the two saves leaves); it resumes there and must end where `concentrated` ended.
- `crown`: 1 rank, the crown scheme (FFN width and head counts peak mid-depth).
Each export must load with `AutoModelForCausalLM` and give the logits of the trained weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import bigtrain.model  # registers model_type "bigtrain" with the Auto classes
from bigtrain.config import load_recipe
from bigtrain.model import BigTrainConfig, BigTrainForCausalLM
from tests.trainer_runs import launch, losses, tiny_overrides

pytestmark = pytest.mark.slow

STEPS = 6
MODEL = {
    "model.hidden_size": 64,
    "model.num_layers": 6,
    "model.head_dim": 16,
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "model.intermediate_size": 128,
}
# Layers 2-3 keep (widened) FFNs, 1 and 4 are attention-only, 0 and 5 are framed at 2 query / 1 kv heads.
CONCENTRATED = {
    **MODEL,
    "model.layout.scheme": "ffn-concentrate",
    "model.layout.ratio": 0.4,
    "model.layout.frame": True,
    "model.layout.frame_attn_mult": 0.5,
    "model.layout.frame_ffn_mult": 1.0,
    "model.layout.ffn_multiple": 16,
    "model.layout.ffn_rounding": "spread",
    "train.max_steps": STEPS,
    "train.save_every": 3,
}
CROWN = {
    **MODEL,
    "model.num_layers": 5,
    "model.layout.scheme": "crown",
    "model.layout.ffn_mult": "[1.0,4.0,1.0]",
    "model.layout.attn_mult": "[0.5,1.0,0.5]",
    "model.layout.ffn_multiple": 16,
    "train.max_steps": 3,
    "train.eval_every": 0,
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="module")
def concentrated(demo_data: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("concentrated")
    launch(tiny_overrides(demo_data, out, cache_dir, **CONCENTRATED), ranks=2)
    return out


@pytest.fixture(scope="module")
def resumed(demo_data: Path, cache_dir: Path, concentrated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resumed")
    shutil.copytree(concentrated / "checkpoints" / "step_3", out / "checkpoints" / "step_3")
    launch(tiny_overrides(demo_data, out, cache_dir, **CONCENTRATED), ranks=2)
    return out


@pytest.fixture(scope="module")
def crown(demo_data: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crown")
    launch(tiny_overrides(demo_data, out, cache_dir, **CROWN), ranks=1)
    return out


def expected_config(out: Path) -> BigTrainConfig:
    """The per-layer sizes the recipe the run saved asks for."""
    return load_recipe(out / "recipe.yaml").model.build_config()


def trained_model(out: Path, step: int) -> BigTrainForCausalLM:
    """The model rebuilt from the ZeRO-3 checkpoint's fp32 master weights (independent of the export)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = out / "checkpoints"
    model = BigTrainForCausalLM(BigTrainConfig.from_pretrained(ckpt / f"step_{step}")).eval()
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=f"step_{step}")
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    model.load_state_dict(state)
    return model


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def sample_ids(out: Path, text: str) -> torch.Tensor:
    return AutoTokenizer.from_pretrained(out / "hf")(text, return_tensors="pt").input_ids[:, :48]


def check_export(out: Path, step: int, sample_text: str) -> torch.Tensor:
    cfg = expected_config(out)
    hf = out / "hf"
    config = json.loads((hf / "config.json").read_text())
    assert config["model_type"] == "bigtrain"
    assert config["layer_intermediate_sizes"] == cfg.layer_intermediate_sizes
    assert config["layer_num_attention_heads"] == cfg.layer_num_attention_heads
    assert config["layer_num_key_value_heads"] == cfg.layer_num_key_value_heads
    exported = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    assert isinstance(exported, bigtrain.model.BigTrainForCausalLM)
    ids = sample_ids(out, sample_text)
    ours = logits_of(trained_model(out, step), ids)
    theirs = logits_of(exported, ids)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    return theirs


def test_concentrated_layout_trains_on_two_ranks(concentrated: Path) -> None:
    cfg = expected_config(concentrated)
    assert cfg.layer_intermediate_sizes[1] == cfg.layer_intermediate_sizes[4] == 0
    assert cfg.layer_num_attention_heads[0] != cfg.layer_num_attention_heads[2]
    info = json.loads((concentrated / "run.json").read_text())
    assert info["world_size"] == 2 and info["zero_stage"] == 3 and info["status"] == "finished"
    assert info["model_config"]["layer_intermediate_sizes"] == cfg.layer_intermediate_sizes
    from bigtrain.model.counting import total_params

    assert info["params_total"] == total_params(cfg)
    curve = losses(concentrated)
    assert sorted(curve) == list(range(1, STEPS + 1))
    assert curve[STEPS] < curve[1], curve


def test_concentrated_export_reloads_with_equal_logits(concentrated: Path, sample_text: str) -> None:
    check_export(concentrated, STEPS, sample_text)


def test_resume_mid_run_ends_where_the_uninterrupted_run_ended(
    concentrated: Path, resumed: Path, sample_text: str
) -> None:
    info = json.loads((resumed / "run.json").read_text())
    assert Path(info["resumed_from"]).name == "step_3"
    a, b = losses(concentrated), losses(resumed)
    assert sorted(b) == list(range(4, STEPS + 1))
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-5), (step, a[step], b[step])
    ids = sample_ids(resumed, sample_text)
    torch.testing.assert_close(
        logits_of(trained_model(resumed, STEPS), ids), logits_of(trained_model(concentrated, STEPS), ids)
    )
    check_export(resumed, STEPS, sample_text)


def test_crown_layout_trains_and_exports(crown: Path, sample_text: str) -> None:
    cfg = expected_config(crown)
    heads = cfg.layer_num_attention_heads
    assert heads[2] == max(heads) > heads[0] == heads[-1]
    assert cfg.layer_intermediate_sizes[2] == max(cfg.layer_intermediate_sizes)
    assert sorted(losses(crown)) == [1, 2, 3]
    check_export(crown, 3, sample_text)


def test_layout_tool_reads_the_run_recipe(crown: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bigtrain.cli import layout as layout_cli

    with pytest.raises(SystemExit) as done:
        layout_cli.main([str(crown / "recipe.yaml"), "--json"])
    assert done.value.code == 0
    report = json.loads(capsys.readouterr().out)
    info = json.loads((crown / "run.json").read_text())
    assert report["total_params"] == info["params_total"]
