"""bigtrain-grow on the three input kinds (stock LLaMA, bigtrain export, training run / ZeRO-3),
bad input, --verify, and a grown checkpoint training as the next stage."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import bigtrain.model  # noqa: F401  (registers model_type bigtrain with the Auto classes)
from bigtrain.ckpt.source import open_checkpoint
from bigtrain.cli.grow import main
from bigtrain.growth import VerificationError, grow_checkpoint, read_growth_record
from bigtrain.growth.api import _verify
from tests.growth_helpers import heterogeneous_config, random_model, save_stock_llama, text_ids, tiny_config
from tests.trainer_runs import launch, metrics, tiny_overrides


def run(*argv: object) -> int:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    return e.value.code


def digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def stock(tmp_path_factory, tokenizer_dir) -> Path:
    """A stock transformers LLaMA checkpoint, 3 safetensors shards, with the demo tokenizer."""
    out = save_stock_llama(random_model(tiny_config()), tmp_path_factory.mktemp("stock") / "llama")
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    assert len(list(out.glob("*.safetensors"))) > 1
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, demo_data) -> Path:
    """A real bigtrain run: 2 ranks, ZeRO-3, two steps; holds checkpoints/step_2 and its hf/ export."""
    root = tmp_path_factory.mktemp("run")
    extra = {"train.max_steps": 2, "train.eval_every": 100}
    launch(tiny_overrides(demo_data, root / "out", root / "cache", **extra), ranks=2)
    return root / "out"


def test_stock_llama_sharded(stock, tmp_path, capsys):
    before = digest(stock)
    assert run(stock, tmp_path / "out", "--op", "stack", "--layers", 6, "--verify", "--max-shard-mb", 4) == 0
    assert "stack: 3 -> 6 layers" in capsys.readouterr().out
    assert digest(stock) == before  # CKPT_IN untouched
    out = tmp_path / "out"
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert (out / "tokenizer.json").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2  # streamed into several shards
    rec = read_growth_record(out)
    assert rec.inherited_layers() == [0, 1, 2] and rec.new_layers() == [3, 4, 5]
    assert rec.source["kind"] == "hf" and rec.verify["tokens"] > 0 and not rec.function_preserving
    assert rec.layers[4].params["new"] == sorted(rec.layers[4].params["new"], key=rec.layers[4].params["new"].index)
    src, grown = LlamaForCausalLM.from_pretrained(stock), LlamaForCausalLM.from_pretrained(out)
    assert torch.equal(grown.model.layers[4].mlp.up_proj.weight, src.model.layers[1].mlp.up_proj.weight)


def test_bigtrain_export_heterogeneous(tmp_path, capsys):
    src = tmp_path / "export"
    random_model(heterogeneous_config()).save_pretrained(src)
    assert run(src, tmp_path / "out", "--op", "step", "--layers", 6, "--init", "zero", "--verify") == 0
    assert "verify: max |logit diff|" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "bigtrain"
    assert cfg["layer_intermediate_sizes"] == [96, 0, 0, 192, 192, 48]  # new layers take the lower size
    rec = read_growth_record(tmp_path / "out")
    assert rec.function_preserving and rec.verify["passed"]
    assert rec.verify["max_abs_logit_diff"] <= rec.verify["tolerance"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.num_hidden_layers == 6


def test_training_run_and_zero3_dirs_read_like_their_export(trained_run, tmp_path):
    """The run dir (newest ZeRO-3 checkpoint, 2 ranks) and its hf/ export grow to identical tensors."""
    args = {"op": "stack+net2net", "layers": 3, "hidden": 96, "ffn": 192, "heads": 4}
    rec = grow_checkpoint(trained_run, tmp_path / "from_run", verify=True, **args)
    grow_checkpoint(trained_run / "hf", tmp_path / "from_export", **args)
    grow_checkpoint(trained_run / "checkpoints" / "step_2", tmp_path / "from_tag", **args)
    assert rec.source["kind"] == "zero3" and rec.source["weights"].endswith("step_2")
    a, b, c = (open_checkpoint(tmp_path / d) for d in ("from_run", "from_export", "from_tag"))
    assert set(a) == set(b) == set(c)
    for name in a:
        assert torch.equal(a[name], b[name]) and torch.equal(a[name], c[name]), name
    assert (tmp_path / "from_run" / "tokenizer.json").is_file()  # the run's tokenizer/


def test_grown_checkpoint_trains_as_the_next_stage(trained_run, demo_data, tmp_path, tokenizer_dir, sample_text):
    grown = tmp_path / "grown"
    rec = grow_checkpoint(trained_run, grown, op="zero-depth+net2net", layers=3, hidden=96, verify=True)
    assert rec.function_preserving and rec.verify["passed"]
    # the grown model scores real text exactly as the trained source does
    ids = text_ids(tokenizer_dir, sample_text, 64)
    with torch.no_grad():
        before = AutoModelForCausalLM.from_pretrained(trained_run / "hf")(ids, labels=ids).loss
        after = AutoModelForCausalLM.from_pretrained(grown)(ids, labels=ids).loss
    assert abs(before.item() - after.item()) < 1e-4
    out = tmp_path / "stage2"
    extra = {
        "init_from": grown,
        "model.hidden_size": 96,
        "model.num_layers": 3,
        "train.max_steps": 2,
        "train.eval_every": 100,
        "train.export": False,
    }
    launch(tiny_overrides(demo_data, out, tmp_path / "cache", **extra), ranks=1)
    first = metrics(trained_run)[0]["loss"]  # the source run's first loss: from random weights
    stage2 = [m["loss"] for m in metrics(out) if "loss" in m]
    assert len(stage2) == 2 and all(torch.isfinite(torch.tensor(stage2)))
    assert stage2[0] < first - 0.1  # the grown model starts from what the source learned


# --- a table of corrupted copies of the stock checkpoint: each is one line, exit 2, nothing written ---

EMBED, LM_HEAD, NORM = "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"
Q, UP = "model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"


def shard_of(src: Path, tensor: str) -> Path:
    return src / json.loads((src / "model.safetensors.index.json").read_text())["weight_map"][tensor]


def target(src: Path, name: str) -> Path:
    """The shard holding tensor `name`, or the file `name` of the checkpoint."""
    return shard_of(src, name) if name in (EMBED, LM_HEAD, NORM, Q, UP) else src / name


def cut(name: str, keep: Callable[[int], int]) -> Callable[[Path], None]:
    """Truncate a file (or the shard holding a tensor) to keep(size) bytes."""

    def damage(src: Path) -> None:
        path = target(src, name)
        data = path.read_bytes()
        path.write_bytes(data[: keep(len(data))])

    return damage


def header_entry(tensor: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Rewrite one tensor's entry of its shard's safetensors header (JSON), keeping the data bytes;
    `change` edits the entry in place or returns what replaces it."""

    def damage(src: Path) -> None:
        path = shard_of(src, tensor)
        data = path.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        replaced = change(header[tensor])
        header[tensor] = header[tensor] if replaced is None else replaced
        raw = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])

    return damage


def header_length(change: Callable[[int, int], int]) -> Callable[[Path], None]:
    """A header length that lies: change(true length, file size) -> the length written."""

    def damage(src: Path) -> None:
        path = shard_of(src, Q)
        data = path.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        path.write_bytes(struct.pack("<Q", change(n, len(data))) + data[8:])

    return damage


def flip_header_bytes(src: Path) -> None:
    path = shard_of(src, Q)
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json!!!!"
    path.write_bytes(bytes(data))


def tensor(name: str, change: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[Path], None]:
    """Rewrite the shard holding `name` through safetensors: a valid file with the wrong contents
    (`change` returns the stored tensor, None drops it)."""

    def damage(src: Path) -> None:
        shard = shard_of(src, name)
        tensors = load_file(shard)
        new = change(tensors.pop(name))
        if new is not None:
            tensors[name] = new
        save_file(tensors, shard, metadata={"format": "pt"})

    return damage


def config(**change: object) -> Callable[[Path], None]:
    def damage(src: Path) -> None:
        cfg = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**cfg, **change}))

    return damage


def bigtrain_config(**change: object) -> Callable[[Path], None]:
    """The same tensors described by a bigtrain config.json (per-layer lists, as a bigtrain export has)."""

    def damage(src: Path) -> None:
        cfg = {**tiny_config().to_dict(), "model_type": "bigtrain", **change}
        (src / "config.json").write_text(json.dumps(cfg))

    return damage


def write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda src: (src / name).write_bytes(content)


def remove(name: str) -> Callable[[Path], None]:
    return lambda src: target(src, name).unlink()


def empty_dir(src: Path) -> None:
    for f in src.iterdir():
        f.unlink()


INDEX = "model.safetensors.index.json"
CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    # truncations
    "truncated data": (cut(LM_HEAD, lambda n: n - 100), "truncated"),
    "truncated header": (cut(LM_HEAD, lambda n: 5), "truncated"),
    "empty shard": (cut(LM_HEAD, lambda n: 0), "truncated"),
    "truncated index": (cut(INDEX, lambda n: n // 2), "corrupt index"),
    # flipped header bytes
    "flipped header bytes": (flip_header_bytes, "corrupt safetensors header"),
    "unknown dtype": (header_entry(Q, lambda e: e.update(dtype="F33")), "corrupt safetensors entry"),
    "offsets off by one": (
        header_entry(Q, lambda e: e.update(data_offsets=[e["data_offsets"][0], e["data_offsets"][1] + 1])),
        "size mismatch",
    ),
    "negative offsets": (header_entry(Q, lambda e: e.update(data_offsets=[-16 - 4 * 64 * 64, -16])), "negative offset"),
    "entry not an object": (header_entry(Q, lambda e: [1, 2]), "corrupt safetensors entry"),
    # a header length that lies
    "header length past the end": (header_length(lambda n, size: size * 2), "truncated or corrupt"),
    "header length huge": (header_length(lambda n, size: 2**64 - 1), "truncated or corrupt"),
    "header length short": (header_length(lambda n, size: n - 10), "corrupt safetensors header"),
    "header length long": (header_length(lambda n, size: n + 64), "corrupt safetensors header"),
    # broken or contradictory configs
    "no config.json": (remove("config.json"), "no config.json"),
    "config not JSON": (write("config.json", b"{model_type: llama"), "not valid JSON"),
    "config not UTF-8": (write("config.json", b'{"model_type": "\xff\xfe"}'), "not valid JSON"),
    "config a list": (write("config.json", b"[1, 2]"), "not a config"),
    "unsupported model_type": (config(model_type="gpt2"), "not supported"),
    "heads do not divide hidden": (config(num_attention_heads=5), "not a multiple of the number of attention heads"),
    "kv heads do not divide heads": (config(num_key_value_heads=3), "not divisible by 3 kv heads"),
    "hidden size a string": (config(hidden_size="sixty-four"), "invalid config"),
    "more layers than tensors": (config(num_hidden_layers=4), "missing tensor model.layers.3."),
    "vocab contradicts embedding": (config(vocab_size=1000), "config implies"),
    "odd head_dim": (config(head_dim=15), "head_dim"),
    "bigtrain layer list too short": (
        bigtrain_config(layer_intermediate_sizes=[96, 96]),
        "layer_intermediate_sizes has 2 entries for 3 layers",
    ),
    "bigtrain heads contradict q_proj": (
        bigtrain_config(num_attention_heads=6, layer_num_attention_heads=[6, 6, 6]),
        "config implies",
    ),
    # missing, misshapen or wrongly typed tensors
    "missing tensor": (tensor(Q, lambda t: None), f"missing tensor {Q}"),
    "missing shard": (remove(LM_HEAD), "missing"),
    "index weight_map a list": (write(INDEX, b'{"weight_map": [1]}'), "corrupt index"),
    "transposed tensor": (tensor(UP, lambda t: t.t().contiguous()), "has shape"),
    "int32 weight": (tensor(LM_HEAD, lambda t: t.to(torch.int32)), "stored as int32"),
    "int64 embedding": (tensor(EMBED, lambda t: t.long()), "stored as int64"),
    "bool norm": (tensor(NORM, lambda t: t > 1), "stored as bool"),
    # nothing there
    "empty directory": (empty_dir, "not a checkpoint"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupted_checkpoints_are_one_line_exit_2_nothing_written(stock, tmp_path, capsys, case):
    damage, message = CORRUPTIONS[case]
    src = tmp_path / "in"
    shutil.copytree(stock, src)
    damage(src)
    assert run(src, tmp_path / "out", "--op", "stack", "--layers", 6, "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err[-3000:]
    assert message in err, err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no temp dir left either


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--op", "stack", "--layers", "2"], "smaller than the source"),
        (["--op", "net2net", "--heads", "6", "--kv-heads", "4"], "cannot keep"),
        (["--op", "net2net", "--heads", "5"], "give --kv-heads"),
        (["--op", "widen"], "unknown operator"),
    ],
)
def test_unreachable_sizes_exit_2(stock, tmp_path, capsys, argv, message):
    assert run(stock, tmp_path / "out", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_truncated_zero3_rank_file_exit_2(trained_run, tmp_path, capsys):
    run_copy = tmp_path / "run"
    shutil.copytree(trained_run, run_copy)
    f = run_copy / "checkpoints" / "step_2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert run(run_copy, tmp_path / "out", "--op", "stack", "--layers", 4) == 2
    err = capsys.readouterr().err
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in err and err.count("\n") == 1


def test_existing_output_is_refused_unless_overwrite(stock, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert run(stock, out, "--op", "stack", "--layers", 4) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert run(stock, out, "--op", "stack", "--layers", 4, "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "growth.json").is_file()
    assert run(stock, stock / "sub", "--op", "stack", "--layers", 4) == 2  # never inside CKPT_IN


def test_verify_fails_where_claimed_preservation_does_not_hold(stock, tmp_path):
    out = tmp_path / "out"
    rec = grow_checkpoint(stock, out, op="stack", layers=4)
    rec.function_preserving = True  # a (wrong) claim: stacking changes the function
    src = open_checkpoint(stock)
    grown_cfg = open_checkpoint(out).config
    with pytest.raises(VerificationError, match="claims function preservation"):
        _verify(src, out, grown_cfg, rec, None, torch.float32)


def test_console_script_exit_code(tmp_path):
    exe = Path(sys.executable).parent / "bigtrain-grow"
    r = subprocess.run(
        [str(exe), str(tmp_path / "nope"), str(tmp_path / "out"), "--op", "stack", "--layers", "4"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such checkpoint"]
