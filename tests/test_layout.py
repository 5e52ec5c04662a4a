"""Layout schemes (issue 3): per-layer sizes, rounding, matching, bad layouts, and `bigtrain-layout`.

Expected sizes are worked out by hand in the comments (or come from a published config), not by calling
the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bigtrain.cli import layout as layout_cli
from bigtrain.config import ModelSpec, RecipeError, load_recipe
from bigtrain.model.counting import non_embedding_params, total_params
from bigtrain.model.layout import derive_layers, kept_layers, make_divisible, plan_layers
from bigtrain.model.modeling import BigTrainForCausalLM

REPO = Path(__file__).resolve().parents[1]
LAYOUT_RECIPES = sorted([*REPO.glob("recipes/ffn-*.yaml"), *REPO.glob("recipes/lws-*.yaml")])


def spec(layout: dict[str, Any] | None = None, **model: Any) -> ModelSpec:
    return ModelSpec.model_validate({**model, "layout": layout or {}})


# d=256, head_dim 32, 8 query heads over 4 kv heads (2 per kv head): query widths are multiples of 64.
SMALL = {"hidden_size": 256, "num_layers": 4, "head_dim": 32, "num_heads": 8, "num_kv_heads": 4}


# --- rounding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "divisor", "expected"),
    [
        (640.0, 256, 768),  # 640 + 128 = 768 -> 3 x 256
        (934.4, 256, 1024),  # 1062.4 -> 4 x 256
        (284.0, 256, 256),  # 412 -> 256, and 256 >= 0.9 x 284 = 255.6
        (285.0, 256, 512),  # 413 -> 256 < 0.9 x 285 = 256.5: one multiple up
        (857.6, 256, 1024),  # 985 -> 768 < 771.8: one multiple up
        (0.0, 256, 0),  # no floor: zero stays zero (and zero heads is an error)
    ],
)
def test_make_divisible_follows_openelm(value: float, divisor: int, expected: int) -> None:
    assert make_divisible(value, divisor) == expected


# --- layer-wise scaling ------------------------------------------------------------------------


def test_lws_reproduces_openelm_270m() -> None:
    # apple/OpenELM-270M: d=1280, 16 layers, head_dim 64, 4 queries per kv head, alpha 0.5->1.0, beta 0.5->4.0.
    # Its published config lists these multipliers and head counts.
    s = spec({"scheme": "lws"}, hidden_size=1280, num_layers=16, head_dim=64, num_heads=20, num_kv_heads=5)
    plan = plan_layers(s)
    assert plan.q_heads == [12] * 5 + [16] * 7 + [20] * 4
    assert plan.kv_heads == [3] * 5 + [4] * 7 + [5] * 4
    assert plan.ffn_mult == [0.5, 0.73, 0.97, 1.2, 1.43, 1.67, 1.9, 2.13, 2.37, 2.6, 2.83, 3.07, 3.3, 3.53, 3.77, 4.0]
    # beta 0.5 x 1280 = 640 -> 768; beta 4.0 x 1280 = 5120 already divisible by 256
    assert plan.ffn[0] == 768 and plan.ffn[-1] == 5120
    assert all(f % 256 == 0 for f in plan.ffn)


def test_lws_small_by_hand() -> None:
    s = spec({"scheme": "lws", "ffn_mult": [1.0, 4.0], "attn_mult": [0.5, 1.0], "ffn_multiple": 64}, **SMALL)
    ffn, q, kv = derive_layers(s)
    # beta = 1, 2, 3, 4 -> 256, 512, 768, 1024 (already multiples of 64)
    assert ffn == [256, 512, 768, 1024]
    # alpha = 0.5, 0.67, 0.83, 1.0 -> 128, 171.5 -> 192, 212.5 -> 192, 256 -> heads of 32
    assert q == [4, 6, 6, 8]
    assert kv == [2, 3, 3, 4]


def test_reverse_runs_large_to_small() -> None:
    s = spec({"scheme": "reverse", "ffn_mult": [4.0, 1.0], "attn_mult": [1.0, 0.5], "ffn_multiple": 64}, **SMALL)
    ffn, q, kv = derive_layers(s)
    assert ffn == [1024, 768, 512, 256]
    assert q == [8, 6, 6, 4]
    assert kv == [4, 3, 3, 2]


@pytest.mark.parametrize(
    ("num_layers", "expected_ffn"),
    [
        # N=5: knots at layers 0, 2, 4 -> beta 1, 2, 3, 2, 1; the single middle layer is the peak
        (5, [256, 512, 768, 512, 256]),
        # N=6: knots at 0, 2, 3, 5 -> beta 1, 2, 3, 3, 2, 1; the two middle layers share the peak
        (6, [256, 512, 768, 768, 512, 256]),
    ],
)
def test_crown_peaks_in_the_middle(num_layers: int, expected_ffn: list[int]) -> None:
    layout = {"scheme": "crown", "ffn_mult": [1.0, 3.0, 1.0], "attn_mult": [0.5, 1.0, 0.5], "ffn_multiple": 64}
    ffn, q, _ = derive_layers(spec(layout, **{**SMALL, "num_layers": num_layers}))
    assert ffn == expected_ffn
    assert max(q) == q[(num_layers + 1) // 2 - 1] == 8  # alpha 1.0 at the peak: 256 / 32
    assert q[0] == q[-1] == 4


@pytest.mark.parametrize("scheme", ["framed", "lws-frame", "crown-frame"])
def test_frame_pins_first_and_last_layers(scheme: str) -> None:
    name, _, framed = scheme.partition("-")
    mults = ([1.0, 3.0, 1.0], [0.5, 1.0, 0.5]) if name == "crown" else ([1.0, 4.0], [0.5, 1.0])
    layout = {"scheme": name, "ffn_mult": mults[0], "attn_mult": mults[1], "ffn_multiple": 64, "frame": bool(framed)}
    ffn, q, kv = derive_layers(spec(layout, **{**SMALL, "num_layers": 5}, intermediate_size=688))
    for i in (0, 4):
        assert (ffn[i], q[i], kv[i]) == (688, 8, 4)  # the reference, unrounded
    assert 688 not in ffn[1:4]


def test_frame_sizes_from_multipliers() -> None:
    layout = {"scheme": "framed", "ffn_multiple": 64, "frame_ffn_mult": 4.0, "frame_attn_mult": 0.75}
    ffn, q, kv = derive_layers(spec(layout, **SMALL, intermediate_size=688))
    # 4.0 x 256 = 1024; 0.75 x 256 = 192 -> 6 heads of 32 over 3 kv heads
    assert (ffn[0], q[0], kv[0]) == (ffn[3], q[3], kv[3]) == (1024, 6, 3)


@pytest.mark.parametrize("scheme", ["lws", "framed", "reverse", "crown"])
def test_match_params_lands_on_the_reference(scheme: str) -> None:
    # the paper's 180M setting: iso reference 18 layers, beta 2.5 (1920), alpha 0.75 (9 heads over 3 kv heads)
    model = {"hidden_size": 768, "num_layers": 18, "head_dim": 64, "num_heads": 9, "num_kv_heads": 3}
    model |= {"intermediate_size": 1920, "vocab_size": 50304}
    unmatched = spec({"scheme": scheme}, **model).build_config()
    matched_spec = spec({"scheme": scheme, "match_params": True}, **model)
    matched = matched_spec.build_config()
    reference = spec(None, **model).build_config()
    assert abs(non_embedding_params(unmatched) / non_embedding_params(reference) - 1) > 0.02
    assert abs(total_params(matched) / total_params(reference) - 1) < 0.005
    # rounding makes the count a step function of the scale (a symmetric crown steps by pairs of layers)
    assert abs(non_embedding_params(matched) / non_embedding_params(reference) - 1) < 0.01
    scale = plan_layers(matched_spec).scale
    assert scale is not None and scale != 1.0
    assert all(
        q % kv == 0 and q >= kv for q, kv in zip(matched.layer_num_attention_heads, matched.layer_num_key_value_heads)
    )


def test_match_scale_ffn_only_keeps_attention() -> None:
    model = {"hidden_size": 768, "num_layers": 18, "head_dim": 64, "num_heads": 9, "num_kv_heads": 3}
    model |= {"intermediate_size": 1920}
    plain = plan_layers(spec({"scheme": "lws"}, **model))
    matched = plan_layers(spec({"scheme": "lws", "match_params": True, "match_scale": "ffn"}, **model))
    assert matched.q_heads == plain.q_heads and matched.ffn != plain.ffn


# --- ffn-concentrate ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_layers", "ratio", "position", "expected"),
    [
        (12, 0.7, "middle", list(range(2, 10))),  # n_e = floor(8.4 + 0.5) = 8; 4 off: 2 below, 2 above
        (12, 0.7, "first", list(range(0, 8))),
        (12, 0.7, "final", list(range(4, 12))),
        (24, 0.7, "middle", list(range(3, 20))),  # n_e = 17; 7 off: 3 below, the odd one above (4)
        (40, 0.7, "middle", list(range(6, 34))),  # n_e = 28; 12 off: 6 and 6
        (10, 0.25, "middle", list(range(3, 6))),  # floor(2.5 + 0.5) = 3 (halves up); 7 off: 3 below, 4 above
    ],
)
def test_kept_layers(num_layers: int, ratio: float, position: str, expected: list[int]) -> None:
    assert kept_layers(num_layers, ratio, position) == expected


def test_concentrate_widens_kept_ffns_by_hand() -> None:
    # 12 layers of 4608 -> 8 kept layers of 4608 x 12 / 8 = 6912 = 27 x 256 (the 285M recipe's numbers)
    model = {"hidden_size": 1024, "num_layers": 12, "head_dim": 64, "num_heads": 16, "intermediate_size": 4608}
    ffn, q, kv = derive_layers(spec({"scheme": "ffn-concentrate", "ratio": 0.7}, **model))
    assert ffn == [0, 0] + [6912] * 8 + [0, 0]
    assert q == [16] * 12 and kv == [16] * 12
    # The FFN weights are identical; only the 4 dropped post-attention norms (4 x 1024) differ.
    cfg = spec({"scheme": "ffn-concentrate", "ratio": 0.7}, **model).build_config()
    ref = spec(None, **model).build_config()
    assert total_params(ref) - total_params(cfg) == 4 * 1024


def test_concentrate_ratio_one_is_the_baseline() -> None:
    ffn, _, _ = derive_layers(spec({"scheme": "ffn-concentrate", "ratio": 1.0}, **SMALL, intermediate_size=688))
    assert ffn == [688] * 4


def test_concentrate_spread_rounding_by_hand() -> None:
    # d=64, 4 layers of 176 -> 3 kept layers. Common width 176 x 4 / 3 = 234.7 -> 256 (m=256) is 9% off;
    # spread with m=16: 704 / 16 = 44 units over 3 layers -> 15, 15, 14 units (lower layers take the extra)
    model = {"hidden_size": 64, "num_layers": 4, "head_dim": 16, "num_heads": 4, "intermediate_size": 176}
    with pytest.raises(ValueError, match=r"ffn-concentrate: .* off the uniform"):
        derive_layers(spec({"scheme": "ffn-concentrate", "ratio": 0.75, "position": "first"}, **model))
    layout = {"scheme": "ffn-concentrate", "ratio": 0.75, "position": "first", "ffn_rounding": "spread"}
    ffn, _, _ = derive_layers(spec(layout | {"ffn_multiple": 16}, **model))
    assert ffn == [240, 240, 224, 0]


def test_concentrate_with_frame_keeps_matching() -> None:
    model = {"hidden_size": 256, "num_layers": 6, "head_dim": 32, "num_heads": 8, "intermediate_size": 768}
    layout = {"scheme": "ffn-concentrate", "ratio": 0.5, "frame": True, "ffn_multiple": 64}
    s = spec(layout, **model)
    ffn, _, _ = derive_layers(s)
    # kept: layers 1-3 (3 off: 1 below, 2 above); the frame pins 0 and 5 to 768, which leaves
    # 6 x 768 - 2 x 768 = 3072 for layers 1-3: 1024 each (16 x 64)
    assert ffn == [768, 1024, 1024, 1024, 0, 768]
    ref = spec(None, **model).build_config()
    assert abs(total_params(s.build_config()) / total_params(ref) - 1) < 0.005


# --- the model builds, runs, and has the layout's parameters -----------------------------------


@pytest.mark.parametrize(
    "layout",
    [
        {"scheme": "ffn-concentrate", "ratio": 0.5, "ffn_multiple": 16, "ffn_rounding": "spread"},
        {"scheme": "crown", "ffn_mult": [0.5, 4.0, 0.5], "attn_mult": [0.5, 1.0, 0.5], "ffn_multiple": 16},
    ],
)
def test_model_has_the_layout(layout: dict[str, Any]) -> None:
    s = spec(layout, hidden_size=64, num_layers=5, head_dim=16, num_heads=4, num_kv_heads=2, intermediate_size=176)
    cfg = s.build_config(vocab_size=128)
    model = BigTrainForCausalLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == total_params(cfg)
    for i, layer in enumerate(model.model.layers):
        has_mlp = any(n.startswith("mlp.") for n, _ in layer.named_parameters())
        assert has_mlp == (cfg.layer_intermediate_sizes[i] > 0)
    out = model(torch.randint(0, 128, (2, 8))).logits
    assert out.shape == (2, 8, 128) and torch.isfinite(out).all()


# --- bad layouts fail at recipe load, one line naming the file ---------------------------------


BAD_LAYOUTS = [
    ({"layout": {"scheme": "ffn-concentrate", "ratio": 1.5}}, "layout.ratio must be in (0, 1], got 1.5"),
    ({"layout": {"scheme": "ffn-concentrate", "ratio": 0.0}}, "layout.ratio must be in (0, 1]"),
    ({"layout": {"scheme": "ffn-concentrate", "ratio": 0.05}}, "keeps an FFN in no layer"),
    ({"layout": {"scheme": "ffn-concentrate"}}, "layout.ratio is required"),
    ({"layout": {"scheme": "lws", "ratio": 0.5}}, "layout.ratio only applies to scheme ffn-concentrate"),
    ({"layout": {"scheme": "lws", "attn_mult": [0.0, 1.0]}}, "layer 0: attn multiplier 0.00 x hidden 256 gives 0"),
    ({"layout": {"scheme": "lws", "attn_mult": [0.004, 1.0]}}, "gives 0 query heads"),
    ({"num_heads": 6, "num_kv_heads": 4}, "num_heads 6 is not divisible by num_kv_heads 4"),
    ({"layout": {"scheme": "crown", "ffn_mult": [0.5, 4.0]}}, "layout.ffn_mult needs 3 values"),
    ({"layout": {"scheme": "lws", "attn_mult": [0.5, 1.0, 0.5]}}, "layout.attn_mult needs 2 values"),
    ({"layout": {"scheme": "lws", "ffn_mult": [4.0, 0.5]}}, "shrinks with depth; scheme lws grows"),
    ({"layout": {"scheme": "reverse", "ffn_mult": [0.5, 4.0]}}, "grows with depth; scheme reverse shrinks"),
    ({"layout": {"scheme": "crown", "ffn_mult": [4.0, 0.5, 4.0]}}, "middle value must be its peak"),
    ({"layout": {"scheme": "lws", "ffn_mult": [-1.0, 4.0]}}, "values must be >= 0"),
    ({"layout": {"scheme": "uniform", "ffn_mult": [1.0, 2.0]}}, "layout.ffn_mult only applies to schemes"),
    ({"layout": {"scheme": "lws", "frame_ffn_mult": 4.0}}, "layout.frame_ffn_mult needs frame: true"),
    ({"layout": {"scheme": "framed", "frame_attn_mult": 0.0}}, "layer 0: layout.frame_attn_mult 0.0 x hidden 256"),
    ({"layout": {"scheme": "crown"}, "num_layers": 2}, "scheme crown needs at least 3 layers"),
    ({"layout": {"scheme": "lws", "ffn_multiple": 0}}, "layout.ffn_multiple must be >= 1"),
    ({"layout": {"scheme": "lwz"}}, "model.layout.scheme"),
    ({"layout": {"scheme": "lws", "peak": 3}}, "unknown key 'model.layout.peak'"),
]


def write_recipe(tmp_path: Path, model: dict[str, Any], name: str = "bad.yaml") -> Path:
    base = {"hidden_size": 256, "num_layers": 4, "head_dim": 64, "num_heads": 4, "num_kv_heads": 2}
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"model": base | model}))
    return path


@pytest.mark.parametrize(("model", "message"), BAD_LAYOUTS)
def test_bad_layout_fails_at_load(tmp_path: Path, model: dict[str, Any], message: str) -> None:
    path = write_recipe(tmp_path, model)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(str(path)) and message in text


def run_layout_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`bigtrain-layout ARGS` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        layout_cli.main(list(args))
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


def test_cli_as_a_process(tmp_path: Path) -> None:
    """The installed entry point itself: exit code 2 and one line on stderr."""
    path = write_recipe(tmp_path, BAD_LAYOUTS[0][0])
    exe = Path(sys.executable).with_name("bigtrain-layout")
    proc = subprocess.run([str(exe), str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"error: {path}: model: {BAD_LAYOUTS[0][1]}"]


@pytest.mark.parametrize(("model", "message"), [BAD_LAYOUTS[0], BAD_LAYOUTS[5], BAD_LAYOUTS[7], BAD_LAYOUTS[8]])
def test_cli_bad_layout_exit_2_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: dict[str, Any], message: str
) -> None:
    path = write_recipe(tmp_path, model)
    code, out, err = run_layout_cli(capsys, str(path))
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and message in lines[0]


def test_cli_missing_file_and_bad_plot_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_layout_cli(capsys, str(tmp_path / "nope.yaml"))
    assert code == 2 and "recipe file not found" in err
    code, _, err = run_layout_cli(capsys, str(REPO / "recipes/lws-iso-12l.yaml"), "--plot", str(tmp_path / "o.txt"))
    assert code == 2 and "--plot" in err and not (tmp_path / "o.txt").exists()


# --- bigtrain-layout ---------------------------------------------------------------------------


def test_cli_table_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = {
        "hidden_size": 64,
        "num_layers": 6,
        "head_dim": 16,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 176,
        "vocab_size": 512,
        "layout": {"scheme": "ffn-concentrate", "ratio": 0.5, "ffn_multiple": 16},
    }
    # a model-only file (fields at top level) and a recipe with a model: section say the same
    model_file = tmp_path / "model.yaml"
    model_file.write_text(yaml.safe_dump(model))
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({"model": model, "train": {"max_steps": 3}}))
    code, out, err = run_layout_cli(capsys, str(model_file), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert json.loads(run_layout_cli(capsys, str(recipe_file), "--json")[1]) == report

    # 6 x 176 = 1056 over 3 kept layers (1-3: 3 off, 1 below and 2 above) = 352 = 22 x 16
    assert [row["ffn"] for row in report["layers"]] == [0, 352, 352, 352, 0, 0]
    assert [row["layer"] for row in report["layers"]] == list(range(6))
    # attention-only layer by hand: q, k, v, o = 64 x 16 x (4 + 2 + 2 + 4) = 12288, one norm 64
    assert report["layers"][0]["params"] == 12288 + 64
    # with an FFN: + 3 x 64 x 352 + a second norm
    assert report["layers"][1]["params"] == 12288 + 3 * 64 * 352 + 128
    embed = 512 * 64 * 2 + 64
    assert report["total_params"] == embed + 3 * (12288 + 64) + 3 * (12288 + 3 * 64 * 352 + 128)
    assert report["reference_params"] == embed + 6 * (12288 + 3 * 64 * 176 + 128)
    assert abs(report["total_params"] / report["reference_params"] - 1) < 0.005

    code, table, err = run_layout_cli(capsys, str(model_file), "model.layout.position=final")
    assert code == 0, err
    rows = [line.split() for line in table.splitlines()[1:7]]
    assert [int(r[0]) for r in rows] == list(range(6))
    assert [int(r[1]) for r in rows] == [0, 0, 0, 352, 352, 352]
    assert "uniform reference" in table and "%" in table

    png = tmp_path / "plots" / "layout.png"
    code, _, err = run_layout_cli(capsys, str(recipe_file), "--plot", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def word_tokenizer(path: Path, words: int) -> Path:
    """A real tokenizer of `words` words plus <unk> and </s> (word level)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1} | {f"w{i}": i + 2 for i in range(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(path)
    return path


def test_cli_sizes_the_vocab_from_the_tokenizer_as_the_trainer_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recipe without model.vocab_size: the embedding has the tokenizer's 1,002 tokens rounded up to
    1,024 rows (the trainer's rule), not the 32,000 once assumed."""
    tok = word_tokenizer(tmp_path / "tok", 1000)
    model = {"hidden_size": 64, "num_layers": 2, "head_dim": 16, "num_heads": 4, "intermediate_size": 176}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": model, "data": {"tokenizer": str(tok)}, "train": {"max_steps": 3}}))
    code, out, err = run_layout_cli(capsys, str(recipe), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["vocab_size"] == 1024 and not report["vocab_assumed"]
    assert report["embedding_params"] == 2 * 1024 * 64 + 64  # embedding + head + final norm
    from bigtrain.train.model_config import resolve_model_config

    assert resolve_model_config(load_recipe(recipe), 1002).vocab_size == 1024  # what the trainer builds
    code, table, err = run_layout_cli(capsys, str(recipe))
    assert code == 0 and f"vocab 1024 (the 1,002 tokens of {tok}, rounded up to a multiple of 64)" in table
    # model.vocab_size set: the tokenizer is not asked
    code, out, err = run_layout_cli(capsys, str(recipe), "model.vocab_size=2000", "data.tokenizer=/x", "--json")
    assert code == 0 and json.loads(out)["vocab_size"] == 2000, err
    # a recipe whose tokenizer is not there: one line, as the trainer says it
    code, out, err = run_layout_cli(capsys, str(recipe), "data.tokenizer=/nonexistent")
    assert code == 2 and err.strip().splitlines() == ["error: data.tokenizer: directory /nonexistent not found"]
    # a model-only file without a tokenizer at hand: 32,000 assumed, and said
    only = tmp_path / "model.yaml"
    only.write_text(yaml.safe_dump(model))
    code, table, err = run_layout_cli(capsys, str(only), "data.tokenizer=/nonexistent")
    assert code == 0 and "vocab 32000 (assumed: the recipe leaves it to the tokenizer)" in table


# --- the papers' recipes -----------------------------------------------------------------------

PARAM_CLASSES = {
    "ffn-12l": (270e6, 300e6),
    "ffn-24l": (540e6, 600e6),
    "ffn-40l": (1.15e9, 1.3e9),
    "lws-": (170e6, 190e6),
}


@pytest.mark.parametrize("path", LAYOUT_RECIPES, ids=[p.name for p in LAYOUT_RECIPES])
def test_paper_recipes_load_in_their_class(path: Path) -> None:
    recipe = load_recipe(path)
    cfg = recipe.model.build_config()
    lo, hi = next(v for k, v in PARAM_CLASSES.items() if path.name.startswith(k))
    assert lo < total_params(cfg) < hi
    reference = recipe.model.model_copy(update={"layout": type(recipe.model.layout)()}).build_config()
    if "-iso-" not in path.name:
        # every layout recipe is parameter-matched to its uniform reference
        assert abs(total_params(cfg) / total_params(reference) - 1) < 0.005
    if "middle70" in path.name:
        n = cfg.num_hidden_layers
        kept = [i for i, f in enumerate(cfg.layer_intermediate_sizes) if f]
        assert len(kept) == round(0.7 * n) and kept == list(range(kept[0], kept[-1] + 1))


def test_paper_recipes_are_all_there() -> None:
    names = {p.name for p in LAYOUT_RECIPES}
    for layers in (12, 24, 40):
        assert {f"ffn-{layers}l-uniform.yaml", f"ffn-{layers}l-middle70.yaml"} <= names
    assert {"lws-iso-12l.yaml", "lws-iso-18l.yaml", "lws-18l.yaml", "lws-framed-18l.yaml"} <= names
    assert {"lws-reverse-18l.yaml", "lws-crown-18l.yaml"} <= names
