"""The up-scaling depth operators of issue 17 (dus, block-expand, middle-stack) against faithful
re-implementations of the reference operations, tensor for tensor, on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bigtrain.errors import BigtrainError
from bigtrain.growth import grow
from bigtrain.growth.block_expand import expansion_points
from bigtrain.growth.verify import logit_difference, verification_batch
from tests.growth_helpers import heterogeneous_config, random_model, state_dict, tiny_config

SMALL = {"vocab_size": 100}


def layer_keys(sd: dict, i: int) -> list[str]:
    return [k for k in sd if k.startswith(f"model.layers.{i}.")]


def solar_dus(sd: dict, n: int, m: int) -> dict:
    """SOLAR (arXiv 2312.15166, Fig. 1): copy the model, drop the final m layers of the first copy and
    the initial m of the second, concatenate."""
    out = {k: v for k, v in sd.items() if not k.startswith("model.layers.")}
    order = list(range(n - m)) + list(range(m, n))
    for i, j in enumerate(order):
        for k in layer_keys(sd, j):
            out[k.replace(f"layers.{j}.", f"layers.{i}.", 1)] = sd[k]
    return out


def llama_pro_block_expansion(sd: dict, original_layers: int, layers: int) -> dict:
    """The loop of TencentARC/LLaMA-Pro scripts/block_expansion.py, re-written (not copied)."""
    split = original_layers // (layers - original_layers)
    out, count = {}, 0
    for i in range(original_layers):
        for k in layer_keys(sd, i):
            out[k.replace(f"layers.{i}.", f"layers.{count}.", 1)] = sd[k]
        count += 1
        if (i + 1) % split == 0:
            for k in layer_keys(sd, i):
                zero = "down_proj" in k or "o_proj" in k
                out[k.replace(f"layers.{i}.", f"layers.{count}.", 1)] = torch.zeros_like(sd[k]) if zero else sd[k]
            count += 1
    assert count == layers  # the authors' script asserts the same
    out.update({k: v for k, v in sd.items() if "layers" not in k})
    return out


def midas(sd: dict, n: int, block: int, copies: int) -> dict:
    """Our reading of MIDAS (arXiv 2409.19044): the middle block of `block` layers duplicated in place."""
    s = (n - block) // 2
    order = list(range(s + block)) + list(range(s, s + block)) * copies + list(range(s + block, n))
    return solar_like(sd, order)


def solar_like(sd: dict, order: list[int]) -> dict:
    out = {k: v for k, v in sd.items() if not k.startswith("model.layers.")}
    for i, j in enumerate(order):
        for k in layer_keys(sd, j):
            out[k.replace(f"layers.{j}.", f"layers.{i}.", 1)] = sd[k]
    return out


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


@pytest.mark.parametrize(("n", "kw"), [(8, {"drop": 2}), (8, {"layers": 10}), (6, {"drop": 3}), (5, {"drop": 0})])
def test_dus_is_solar_depth_up_scaling(n, kw):
    cfg = tiny_config(num_hidden_layers=n, **SMALL)
    sd = state_dict(random_model(cfg))
    g = grow(cfg, sd, "dus", **kw)
    m = kw.get("drop", n - kw.get("layers", 0) // 2)
    assert_same(dict(g.tensors), solar_dus(sd, n, m))
    assert g.config.num_hidden_layers == 2 * (n - m)
    # each source layer inherited once (its first occurrence), the second copies of [m, n-m) new
    assert sorted(r.source_layer for r in g.record.layers if r.origin == "inherited") == list(range(n))
    assert [r.source_layer for r in g.record.layers if r.origin == "new"] == list(range(m, n - m))
    assert g.record.function_preserving == (2 * m == n)  # m = n/2 gives the source back


def test_dus_solar_shape_and_errors():
    cfg = tiny_config(num_hidden_layers=32, hidden_size=16, head_dim=8, intermediate_size=16, **SMALL)
    g = grow(cfg, state_dict(random_model(cfg)), "dus", drop=8)
    assert g.config.num_hidden_layers == 48  # SOLAR 10.7B: 32 layers, m = 8
    small = tiny_config(num_hidden_layers=4, **SMALL)
    sd = state_dict(random_model(small))
    for kw, msg in [({}, "needs --drop"), ({"drop": 3}, "must be in"), ({"drop": 1, "layers": 8}, "gives 6 layers")]:
        with pytest.raises(BigtrainError, match=msg):
            grow(small, sd, "dus", **kw)
    with pytest.raises(BigtrainError, match="--drop applies to dus only"):
        grow(small, sd, "stack", layers=6, drop=1)


@pytest.mark.parametrize(("L", "N"), [(8, 10), (6, 9), (4, 8), (10, 13), (6, 6)])
def test_block_expand_is_llama_pro(L, N):
    cfg = tiny_config(num_hidden_layers=L, **SMALL)
    sd = state_dict(random_model(cfg))
    g = grow(cfg, sd, "block-expand", layers=N)
    if N > L:
        assert_same(dict(g.tensors), llama_pro_block_expansion(sd, L, N))
    assert g.record.inherited_layers() == [r.index for r in g.record.layers if r.init == "inherited"]
    assert len(g.record.new_layers()) == N - L and all(g.record.layers[i].init == "zero" for i in g.record.new_layers())
    assert g.record.function_preserving


def test_block_expand_spreads_evenly_where_the_authors_script_would_assert():
    assert expansion_points(32, 8) == [3, 7, 11, 15, 19, 23, 27, 31]  # LLaMA Pro 8B: 32 -> 40
    assert expansion_points(3, 2) == [1, 2]  # split 1 would give 3 blocks: groups [2, 1] instead
    assert expansion_points(7, 3) == [1, 3, 5]  # the authors' rule (split 2) gives 3: theirs
    with pytest.raises(BigtrainError, match="at most one block per layer"):
        cfg = tiny_config(**SMALL)
        grow(cfg, state_dict(random_model(cfg)), "block-expand", layers=7)


@pytest.mark.parametrize("cfg", [tiny_config(num_hidden_layers=4, **SMALL), heterogeneous_config(**SMALL)])
def test_block_expand_preserves_the_function(cfg):
    sd = state_dict(random_model(cfg))
    g = grow(cfg, sd, "block-expand", layers=6)
    diff, scale = logit_difference(cfg, sd, g.config, dict(g.tensors), verification_batch(cfg.vocab_size))
    assert diff <= 1e-4 * max(1.0, scale)
    assert g.config.layer_intermediate_sizes == [
        cfg.layer_intermediate_sizes[r.source_layer] for r in g.record.layers
    ]  # a new block takes the sizes of the layer it copies


@pytest.mark.parametrize(("L", "N", "block"), [(6, 8, 2), (6, 10, 2), (7, 10, 3), (5, 6, None), (8, 12, None)])
def test_middle_stack_duplicates_the_middle_block_in_place(L, N, block):
    cfg = tiny_config(num_hidden_layers=L, **SMALL)
    sd = state_dict(random_model(cfg))
    g = grow(cfg, sd, "middle-stack", layers=N, block=block)
    b = block or N - L
    assert_same(dict(g.tensors), midas(sd, L, b, (N - L) // b))
    src = [r.source_layer for r in g.record.layers]
    assert src[0] == 0 and src[-1] == L - 1  # the ends stay
    assert g.record.inherited_layers() == [i for i, r in enumerate(g.record.layers) if r.origin == "inherited"]
    assert len(g.record.new_layers()) == N - L and not g.record.function_preserving
    if (L, N, block) == (6, 8, 2):
        assert src == [0, 1, 2, 3, 2, 3, 4, 5]


def test_middle_stack_errors():
    cfg = tiny_config(num_hidden_layers=4, **SMALL)
    sd = state_dict(random_model(cfg))
    for kw, msg in [
        ({"layers": 7, "block": 2}, "not a multiple"),
        ({"layers": 7}, "must be in"),
        ({}, "needs --layers"),
    ]:
        with pytest.raises(BigtrainError, match=msg):
            grow(cfg, sd, "middle-stack", **kw)
    with pytest.raises(BigtrainError, match="--block applies to middle-stack only"):
        grow(cfg, sd, "stack", layers=6, block=2)


def test_depth_up_scaling_composes_with_width():
    cfg = tiny_config(num_hidden_layers=4, **SMALL)
    sd = state_dict(random_model(cfg))
    g = grow(cfg, sd, "block-expand+net2net", layers=6, hidden=96, split="even")
    diff, scale = logit_difference(cfg, sd, g.config, dict(g.tensors), verification_batch(cfg.vocab_size))
    assert g.record.function_preserving and diff <= 1e-4 * max(1.0, scale)


@pytest.mark.parametrize(
    ("name", "layers"), [("dus-demo", [4, 6]), ("block-expand-demo", [4, 6]), ("midas-demo", [4, 6, 8])]
)
def test_upscale_recipes_load(name, layers):
    from bigtrain.config import load_recipe
    from bigtrain.pipeline.stages import resolve_stages

    stages = resolve_stages(load_recipe(Path(__file__).resolve().parents[1] / "recipes" / f"{name}.yaml"))
    assert [s.recipe.model.num_layers for s in stages] == layers
