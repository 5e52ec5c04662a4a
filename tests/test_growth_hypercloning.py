"""hypercloning (issue 17) against a re-implementation of apple/ml-hypercloning's clone_llama, tensor for
tensor, its function preservation (noise included), and its size rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bigtrain.errors import BigtrainError
from bigtrain.growth import grow, grow_checkpoint
from bigtrain.growth.verify import logit_difference, verification_batch
from tests.growth_helpers import heterogeneous_config, random_model, state_dict, tiny_config

SMALL = {"vocab_size": 100}


def authors_clone(sd: dict, cfg, n: int, m: int) -> dict:
    """The weight blocks of hypercloning.clone_llama without noise (llama_cloning.py, common.clone_matrix,
    gemma_cloning.clone_gemma_qkv_weight), re-written: tile, divide by the input repeats."""
    hd = cfg.head_dim

    def matrix(w, r0, r1, normalize=True):
        out = w.repeat(r0, r1)
        return out / r1 if normalize else out

    def qkv(w, heads, heads_rep):
        e = w.shape[1]
        return (w.reshape(heads, hd, e).repeat(heads_rep, 1, n) / n).reshape(heads * heads_rep * hd, e * n)

    kv_rep = n if cfg.num_key_value_heads != 1 else 1
    out = {"model.embed_tokens.weight": matrix(sd["model.embed_tokens.weight"], 1, n, normalize=False)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"].repeat(n)
        out[p + "post_attention_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"].repeat(n)
        out[p + "self_attn.q_proj.weight"] = qkv(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads, n)
        out[p + "self_attn.k_proj.weight"] = qkv(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads, kv_rep)
        out[p + "self_attn.v_proj.weight"] = qkv(sd[p + "self_attn.v_proj.weight"], cfg.num_key_value_heads, kv_rep)
        out[p + "self_attn.o_proj.weight"] = matrix(sd[p + "self_attn.o_proj.weight"], n, n)
        out[p + "mlp.gate_proj.weight"] = matrix(sd[p + "mlp.gate_proj.weight"], m, n)
        out[p + "mlp.up_proj.weight"] = matrix(sd[p + "mlp.up_proj.weight"], m, n)
        out[p + "mlp.down_proj.weight"] = matrix(sd[p + "mlp.down_proj.weight"], n, m)
    out["model.norm.weight"] = sd["model.norm.weight"].repeat(n)
    out["lm_head.weight"] = matrix(sd["lm_head.weight"], 1, n)
    return out


@pytest.mark.parametrize(
    ("over", "n", "m"),
    [({}, 2, 1), ({}, 2, 2), ({}, 3, 2), ({"num_key_value_heads": 1}, 2, 3), ({"num_key_value_heads": 4}, 4, 1)],
)
def test_hypercloning_is_the_authors_clone(over, n, m):
    cfg = tiny_config(**SMALL, **over)
    sd = state_dict(random_model(cfg))
    g = grow(cfg, sd, "hypercloning", hidden=n * cfg.hidden_size, ffn=m * cfg.intermediate_size)
    got, want = dict(g.tensors), authors_clone(sd, cfg, n, m)
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert g.config.num_attention_heads == n * cfg.num_attention_heads
    assert g.record.function_preserving
    diff, scale = logit_difference(cfg, sd, g.config, got, verification_batch(cfg.vocab_size))
    assert diff <= 1e-4 * max(1.0, scale)


@pytest.mark.parametrize(
    "cfg",
    [tiny_config(**SMALL), tiny_config(tie_word_embeddings=True, **SMALL), heterogeneous_config(**SMALL)],
    ids=["uniform", "tied", "heterogeneous"],
)
@pytest.mark.parametrize("snr_db", [None, 10.0, 0.0])  # below 0 dB float rounding grows (docstring)
def test_hypercloning_preserves_the_function_noise_included(cfg, snr_db):
    sd = state_dict(random_model(cfg))
    g = grow(cfg, sd, "hypercloning", hidden=2 * cfg.hidden_size, ffn=2 * cfg.intermediate_size, snr_db=snr_db)
    assert g.config.tie_word_embeddings == cfg.tie_word_embeddings  # bigtrain keeps the tie (docstring)
    diff, scale = logit_difference(cfg, sd, g.config, dict(g.tensors), verification_batch(cfg.vocab_size))
    assert g.record.function_preserving and diff <= 1e-4 * max(1.0, scale)


def test_noise_is_plus_minus_pairs_at_the_asked_snr():
    cfg = tiny_config(**SMALL)
    sd = state_dict(random_model(cfg))
    kw = {"hidden": 2 * cfg.hidden_size, "ffn": 2 * cfg.intermediate_size}
    clean = dict(grow(cfg, sd, "hypercloning", **kw).tensors)
    noisy = dict(grow(cfg, sd, "hypercloning", snr_db=3.0, **kw).tensors)
    again = dict(grow(cfg, sd, "hypercloning", snr_db=3.0, **kw).tensors)
    for k in ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert torch.equal(noisy[k], again[k])  # seeded
        delta, w = noisy[k] - clean[k], clean[k]
        rows = cfg.head_dim if "q_proj" in k else w.shape[0] // 2
        cols = w.shape[1] // 2
        assert torch.allclose(delta[:, :cols], -delta[:, cols:], atol=1e-6)
        for r in range(0, w.shape[0], rows):  # each block: noise power = signal power / 10^0.3
            block, noise = w[r : r + rows, :cols], delta[r : r + rows, :cols]
            assert noise.pow(2).mean().item() == pytest.approx(block.pow(2).mean().item() / 10**0.3, rel=1e-4)
    for k in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(noisy[k], clean[k])  # the authors leave these clean


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"hidden": 96}, "not a whole multiple of 64"),
        ({"hidden": 128, "ffn": 100}, "not a whole multiple of 96"),
        ({"hidden": 128, "heads": 4}, "--heads 8 --kv-heads 4"),
        ({"hidden": 128, "split": "even"}, "--split"),
        ({"hidden": 128, "noise_std": 0.1}, "apply to"),
    ],
)
def test_hypercloning_size_rules(kw, message):
    cfg = tiny_config(**SMALL)
    with pytest.raises(BigtrainError, match=message):
        grow(cfg, state_dict(random_model(cfg)), "hypercloning", **kw)
    with pytest.raises(BigtrainError, match="--snr-db applies to hypercloning only"):
        grow(cfg, state_dict(random_model(cfg)), "net2net", hidden=128, snr_db=1.0)


def test_hypercloning_checkpoint_with_depth_verifies(tmp_path):
    cfg = tiny_config(**SMALL)
    random_model(cfg).save_pretrained(tmp_path / "src")
    rec = grow_checkpoint(
        tmp_path / "src",
        tmp_path / "out",
        op="block-expand+hypercloning",
        layers=4,
        hidden=128,
        snr_db=5.0,
        verify=True,
    )
    assert rec.function_preserving and rec.verify["passed"] and rec.args["snr_db"] == 5.0


def test_hypercloning_recipe_loads():
    from bigtrain.config import load_recipe
    from bigtrain.pipeline.stages import resolve_stages

    stages = resolve_stages(load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "hypercloning-demo.yaml"))
    assert [s.recipe.model.hidden_size for s in stages] == [64, 128]
