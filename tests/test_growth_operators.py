"""Growth operators as pure functions on random tiny tensors: plans, placements, inits, errors."""

from __future__ import annotations

import math

import pytest
import torch

from bigtrain.errors import BigtrainError
from bigtrain.growth import grow
from bigtrain.growth.depth import upper_gap_counts
from bigtrain.model.param_shapes import expected_shapes
from tests.growth_helpers import heterogeneous_config, random_model, state_dict, tiny_config

SMALL = {"vocab_size": 100}


def grown(cfg, op, **kw):
    sd = state_dict(random_model(cfg))
    g = grow(cfg, sd, op, **kw)
    out = dict(g.tensors)
    assert set(out) == set(expected_shapes(g.config))
    for name, shape in expected_shapes(g.config).items():
        assert tuple(out[name].shape) == shape, name
    return sd, g, out


def layer(sd, i, name="self_attn.q_proj.weight"):
    return sd[f"model.layers.{i}.{name}"]


def test_stack_repeats_the_whole_model_first_copy_inherited():
    sd, g, out = grown(tiny_config(**SMALL), "stack", layers=7)
    assert [r.source_layer for r in g.record.layers] == [0, 1, 2, 0, 1, 2, 0]
    assert g.record.inherited_layers() == [0, 1, 2]
    assert g.record.new_layers() == [3, 4, 5, 6]
    for i in range(7):
        assert torch.equal(layer(out, i), layer(sd, i % 3))
    assert g.record.layers[4].params["new"][0].startswith("model.layers.4.")
    assert not g.record.function_preserving


def test_interleave_duplicates_each_layer_in_place():
    sd, g, out = grown(tiny_config(**SMALL), "interleave", layers=7)
    assert [r.source_layer for r in g.record.layers] == [0, 0, 0, 1, 1, 2, 2]
    assert g.record.inherited_layers() == [0, 3, 5]
    assert torch.equal(layer(out, 4), layer(sd, 1))


def test_step_spreads_new_layers_over_the_upper_gaps():
    assert upper_gap_counts(6, 2) == [0, 0, 0, 1, 1, 0]  # gaps 3|4 and 4|5; the top layer stays on top
    assert upper_gap_counts(3, 5) == [2, 3, 0]
    assert upper_gap_counts(1, 2) == [2]
    sd, g, out = grown(tiny_config(num_hidden_layers=6, **SMALL), "step", layers=8, init="mean")
    assert [(r.origin, r.source_layer) for r in g.record.layers][4:] == [
        ("new", 3),
        ("inherited", 4),
        ("new", 4),
        ("inherited", 5),
    ]
    assert g.record.inherited_layers() == [0, 1, 2, 3, 5, 7]
    for name in ("self_attn.o_proj.weight", "mlp.gate_proj.weight", "input_layernorm.weight"):
        torch.testing.assert_close(layer(out, 4, name), (layer(sd, 3, name) + layer(sd, 4, name)) / 2)
    assert torch.equal(layer(out, 7), layer(sd, 5))


@pytest.mark.parametrize("init", ["copy", "zero"])
def test_step_copy_and_zero_inits(init):
    sd, g, out = grown(tiny_config(**SMALL), "step", layers=4, init=init)
    new = g.record.new_layers()[0]
    lower = g.record.layers[new].source_layer
    assert torch.equal(layer(out, new, "mlp.up_proj.weight"), layer(sd, lower, "mlp.up_proj.weight"))
    zeroed = torch.count_nonzero(layer(out, new, "self_attn.o_proj.weight")) == 0
    assert zeroed == (init == "zero")
    assert g.record.function_preserving == (init == "zero")


def test_step_mean_between_layers_of_different_shape_falls_back_to_copy():
    cfg = heterogeneous_config(**SMALL)  # layers 2 and 3 differ
    _, g, _ = grown(cfg, "step", layers=6, init="mean")
    assert [(r.init, r.source_layer) for r in g.record.layers if r.origin == "new"] == [("copy", 1), ("copy", 2)]


def test_zero_depth_blocks_are_identities_random_depth_blocks_are_not():
    _, g, out = grown(tiny_config(**SMALL), "zero-depth", layers=5)
    new = g.record.new_layers()
    assert g.record.function_preserving and len(new) == 2
    for i in new:
        assert torch.count_nonzero(layer(out, i, "mlp.down_proj.weight")) == 0
        assert layer(out, i).std() == pytest.approx(0.02, rel=0.2)  # fresh, initializer_range
    _, g, out = grown(tiny_config(**SMALL), "random-depth", layers=5)
    assert not g.record.function_preserving
    assert all(layer(out, i, "mlp.down_proj.weight").std() > 0.01 for i in g.record.new_layers())


def test_net2net_rescales_the_residual_stream():
    cfg = tiny_config(**SMALL)
    sd, g, out = grown(cfg, "net2net", hidden=96, ffn=128, heads=8)
    assert g.config.hidden_size == 96 and g.config.layer_num_attention_heads == [8] * 3
    assert g.config.num_key_value_heads == 4  # the 2:1 query/kv ratio kept
    emb, emb2 = sd["model.embed_tokens.weight"], out["model.embed_tokens.weight"]
    # each source channel j appears n_j times, scaled by sqrt(D / (d n_j)): sum of squares scales by D/d
    torch.testing.assert_close((emb2**2).sum(1), (emb**2).sum(1) * 96 / 64)
    replicated = {j for k in range(64, 96) for j in range(64) if torch.equal(emb2[:, k], emb2[:, j])}
    assert len(replicated) >= 16  # every new channel is a replica of an old one (32 draws from 64)
    single = next(j for j in range(64) if j not in replicated)
    torch.testing.assert_close(emb2[:, single], emb[:, single] * math.sqrt(96 / 64))
    assert g.record.function_preserving
    assert g.record.layers[0].origin == "inherited"


def test_aki_takes_new_units_from_the_layer_above():
    cfg = tiny_config(**SMALL)
    sd, g, out = grown(cfg, "aki", ffn=128)
    _, _, fpi = grown(cfg, "net2net", ffn=128)
    assert not g.record.function_preserving
    up0 = layer(out, 0, "mlp.up_proj.weight")
    assert torch.equal(up0[:96], layer(sd, 0, "mlp.up_proj.weight"))  # hidden unchanged: old rows as is
    new_rows = up0[96:]
    upper = layer(sd, 1, "mlp.up_proj.weight")
    assert all(any(torch.equal(r, u) for u in upper) for r in new_rows)
    assert torch.equal(layer(out, 2, "mlp.up_proj.weight"), layer(fpi, 2, "mlp.up_proj.weight"))  # top: own


def test_zero_width_new_outputs_are_zero():
    cfg = tiny_config(**SMALL)
    sd, g, out = grown(cfg, "zero-width", ffn=128, heads=8)
    assert g.record.function_preserving  # hidden unchanged
    down = layer(out, 0, "mlp.down_proj.weight")
    assert torch.equal(down[:, :96], layer(sd, 0, "mlp.down_proj.weight"))
    assert torch.count_nonzero(down[:, 96:]) == 0
    assert layer(out, 0, "mlp.gate_proj.weight")[96:].std() > 0.01  # new inputs random: they can learn
    _, g, out = grown(cfg, "zero-width", hidden=128)
    assert not g.record.function_preserving  # RMSNorm eps: equal only up to eps
    assert torch.count_nonzero(out["model.embed_tokens.weight"][:, 64:]) == 0
    norm = out["model.layers.0.input_layernorm.weight"]
    torch.testing.assert_close(norm[:64], sd["model.layers.0.input_layernorm.weight"] * math.sqrt(0.5))


def test_random_width_keeps_old_block():
    cfg = tiny_config(**SMALL)
    sd, g, out = grown(cfg, "random-width", hidden=96, ffn=128)
    q = layer(out, 1)
    assert torch.equal(q[:, :64], layer(sd, 1))
    assert q[:, 64:].std() == pytest.approx(0.02, rel=0.2)
    assert not g.record.function_preserving


def test_mixture_new_blocks_are_orthogonal_template_combinations():
    cfg = tiny_config(num_hidden_layers=4, **SMALL)
    sd, g, out = grown(cfg, "mixture", ffn=192)
    assert not g.record.function_preserving
    j = 2
    down = layer(out, j, "mlp.down_proj.weight")
    assert torch.equal(down[:, :96], layer(sd, j, "mlp.down_proj.weight"))
    # each new column is column c of M = sum_t beta_t T_t for some source column c: fit beta for every
    # candidate c; the right one fits exactly, and all new columns must agree on beta
    templates = torch.stack([layer(sd, t, "mlp.down_proj.weight") for t in range(4)])  # (4, 64, 96)
    new = down[:, 96:]
    a_all = templates.permute(2, 1, 0)  # (96 columns, 64 rows, 4 templates)
    betas = []
    for k in range(new.shape[1]):
        fit = torch.linalg.lstsq(a_all, new[:, k].expand(96, 64)[..., None]).solution  # (96, 4, 1)
        err = (a_all @ fit).squeeze(-1).sub(new[:, k]).abs().amax(1)
        assert err.min() < 1e-5
        betas.append(fit[err.argmin()].flatten())
    beta = betas[0]
    for b in betas[1:]:
        torch.testing.assert_close(b, beta, atol=1e-4, rtol=1e-4)
    assert abs(beta[j].item()) < 1e-4  # orthogonal to the layer's own coefficients e_j
    assert beta.norm().item() == pytest.approx(1.0, abs=1e-3)


def test_heterogeneous_width_scales_each_layer():
    cfg = heterogeneous_config(**SMALL)
    _, g, out = grown(cfg, "net2net", ffn=192, heads=8)
    assert g.config.layer_intermediate_sizes == [192, 0, 384, 96]  # proportional; attention-only stays so
    assert g.config.layer_num_attention_heads == [8, 4, 8, 8]
    assert g.config.layer_num_key_value_heads == [4, 2, 8, 4]
    assert "model.layers.1.mlp.up_proj.weight" not in out


def test_depth_and_width_compose():
    _, g, _ = grown(tiny_config(**SMALL), "stack+net2net", layers=6, hidden=96)
    assert g.record.operators == ["stack", "net2net"]
    assert (g.config.num_hidden_layers, g.config.hidden_size) == (6, 96)
    _, g2, _ = grown(tiny_config(**SMALL), ["net2net", "stack"], layers=6, hidden=96)
    assert g2.record.op == "stack+net2net"


def test_seed_makes_growth_reproducible():
    cfg = tiny_config(**SMALL)
    _, _, a = grown(cfg, "net2net", hidden=96, seed=1)
    _, _, b = grown(cfg, "net2net", hidden=96, seed=1)
    _, _, c = grown(cfg, "net2net", hidden=96, seed=2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


@pytest.mark.parametrize(
    ("op", "kw", "message"),
    [
        ("stack", {"layers": 2}, "smaller than the source"),
        ("stack", {}, "needs --layers"),
        ("net2net", {"hidden": 32}, "smaller than the source"),
        ("net2net", {"heads": 5}, "cannot keep"),
        ("net2net", {"heads": 8, "kv_heads": 8}, "query heads"),  # 8 q / 8 kv: fewer q per kv group
        ("net2net", {"layers": 5}, "needs a depth operator"),
        ("stack", {"layers": 5, "hidden": 96}, "need a width operator"),
        ("grow-faster", {}, "unknown operator"),
        ("stack+interleave", {"layers": 6}, "at most one depth"),
        ("step", {"layers": 5, "init": "average"}, "is not one of"),
        ("stack", {"layers": 5, "init": "mean"}, "applies to step and mixture"),
    ],
)
def test_unreachable_targets_are_one_line_errors(op, kw, message):
    cfg = tiny_config(**SMALL)
    with pytest.raises(BigtrainError, match=message) as e:
        grown(cfg, op, **kw)
    assert "\n" not in str(e.value)


def test_init_belongs_to_step_then_mixture():
    _, g, _ = grown(tiny_config(**SMALL), "step", layers=4)
    assert g.record.args["init"] == "mean" and g.record.layers[2].init == "mean"
    _, g, _ = grown(tiny_config(**SMALL), "step+mixture", layers=4, ffn=128, init="zero")
    assert g.record.args["init"] == "zero" and g.record.layers[2].init == "zero"
    _, g, _ = grown(tiny_config(**SMALL), "mixture", ffn=128, init="copy")
    assert g.record.args["init"] == "copy"


@pytest.mark.parametrize(
    ("op", "kw"),
    [
        ("stack", {"layers": 9}),
        ("interleave", {"layers": 6}),
        ("step", {"layers": 7}),
        ("random-depth", {"layers": 5}),
        ("aki", {"hidden": 96, "ffn": 192, "heads": 8}),
        ("random-width", {"hidden": 96, "ffn": 192}),
        ("zero-width", {"hidden": 96, "heads": 8}),
        ("mixture", {"hidden": 96, "ffn": 192, "heads": 8}),
        ("interleave+aki", {"layers": 8, "ffn": 144}),
    ],
)
@pytest.mark.parametrize("tied", [False, True])
def test_every_operator_grows_heterogeneous_and_tied_layouts(op, kw, tied):
    """Every tensor the grown config implies, with its shape (checked in `grown`), attention-only kept."""
    cfg = heterogeneous_config(tie_word_embeddings=tied, **SMALL)
    _, g, out = grown(cfg, op, **kw)
    assert ("lm_head.weight" in out) != tied
    ffn = g.config.layer_intermediate_sizes
    assert 0 in ffn and all(f > 0 for f in ffn if f)
    assert all(torch.isfinite(t).all() for t in out.values())
