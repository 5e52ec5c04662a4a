"""Function preservation on real text: the grown model's logits equal the source's.

float32 throughout; tolerance 1e-4 absolute on logits of magnitude ~1-10 (the grown model only
differs in summation order). The non-preserving operators are checked to differ, so the comparison
can fail.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from bigtrain.growth import grow, grow_checkpoint
from bigtrain.growth.verify import load_model
from tests.growth_helpers import (
    heterogeneous_config,
    random_model,
    save_stock_llama,
    state_dict,
    text_ids,
    tiny_config,
)

ATOL = 1e-4

CONFIGS = {
    "uniform": lambda: tiny_config(),
    "heterogeneous": lambda: heterogeneous_config(),
    "tied": lambda: tiny_config(tie_word_embeddings=True),
}
PRESERVING = [  # net2net / aki split: asymmetric (the default) unless given
    ("net2net", {"hidden": 96, "ffn": 144, "heads": 8}),
    ("net2net", {"hidden": 80}),  # an uneven split: some channels replicated, most not
    ("net2net", {"hidden": 96, "ffn": 144, "heads": 8, "split": "even"}),
    ("net2net", {"hidden": 80, "split": "even"}),
    ("net2net", {"hidden": 112, "ffn": 288, "heads": 8, "split_spread": 0.9}),  # up to 4 replicas, far from even
    ("zero-width", {"ffn": 192, "heads": 8}),
    ("zero-depth", {"layers": 6}),
    ("step", {"layers": 6, "init": "zero"}),
    ("zero-depth+net2net", {"layers": 5, "hidden": 96, "ffn": 192, "heads": 8}),
    ("zero-depth+net2net", {"layers": 6, "hidden": 96, "ffn": 192, "heads": 8, "placement": "after-each"}),
    ("zero-depth", {"layers": 7, "placement": "after-each"}),
]
NOT_PRESERVING = [
    ("stack", {"layers": 6}),
    ("interleave", {"layers": 6}),
    ("step", {"layers": 6, "init": "mean"}),
    ("random-depth", {"layers": 6}),
    ("aki", {"ffn": 192, "heads": 8}),
    ("random-width", {"hidden": 96}),
    ("mixture", {"hidden": 96, "ffn": 192}),
]


@pytest.fixture(scope="module")
def ids(tokenizer_dir, sample_text) -> torch.Tensor:
    return text_ids(tokenizer_dir, sample_text)


@pytest.fixture(scope="module")
def sources():
    return {name: random_model(make()) for name, make in CONFIGS.items()}


def logits_after(model, op, kw, ids):
    g = grow(model.config, state_dict(model), op, **kw)
    grown_model = load_model(g.config, dict(g.tensors))
    with torch.no_grad():
        return model(ids).logits, grown_model(ids).logits, g


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize(
    ("op", "kw"), PRESERVING, ids=lambda x: x if isinstance(x, str) else "-".join(map(str, x.values()))
)
def test_preserving_operators_keep_the_logits(sources, ids, config, op, kw):
    a, b, g = logits_after(sources[config], op, kw, ids)
    assert g.record.function_preserving
    assert a.abs().max() > 0.5  # not a degenerate model
    torch.testing.assert_close(b, a, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("op", "kw"), NOT_PRESERVING, ids=lambda x: x if isinstance(x, str) else "-".join(map(str, x.values()))
)
def test_other_operators_change_the_logits(sources, ids, op, kw):
    a, b, g = logits_after(sources["uniform"], op, kw, ids)
    assert not g.record.function_preserving
    assert (a - b).abs().max() > 100 * ATOL


def test_zero_width_hidden_growth_is_preserving_up_to_the_norm_eps(sources, ids):
    model = sources["uniform"]
    a, b, g = logits_after(model, "zero-width", {"hidden": 128}, ids)
    assert not g.record.function_preserving
    assert 0 < (a - b).abs().max() < 0.05 * a.abs().max()


def test_stock_llama_grows_into_a_stock_llama(tmp_path, ids):
    """A stock transformers checkpoint in, net2net+stack out; plain transformers loads both."""
    src = save_stock_llama(random_model(tiny_config()), tmp_path / "src")
    grow_checkpoint(src, tmp_path / "out", op="zero-depth+net2net", layers=5, hidden=96, ffn=192, heads=8)
    before = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    after = LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert after.config.num_hidden_layers == 5 and after.config.hidden_size == 96
    with torch.no_grad():
        torch.testing.assert_close(after(ids).logits, before(ids).logits, atol=ATOL, rtol=0)
