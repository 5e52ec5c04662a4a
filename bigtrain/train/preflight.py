"""Checks that need no process group and no DeepSpeed: data files, tokenizer, vocab size, the
init_from config. Run on every rank before anything starts, so bad input fails at once, with one
line, before a process group exists or a file is written."""

from __future__ import annotations

from bigtrain.config import Recipe
from bigtrain.data.prepare import source_spec
from bigtrain.data.store import open_tokens
from bigtrain.data.tokenizer import load_tokenizer
from bigtrain.train.model_config import resolve_model_config


def preflight(recipe: Recipe) -> None:
    sources = [s for split in ("train", "eval") for s in source_spec(recipe.data, split)]
    if sources and all(s.token_dir for s in sources):
        vocab = open_tokens(sources[0].token_dir).meta.vocab_size
    else:
        vocab = len(load_tokenizer(recipe.data.tokenizer))
    resolve_model_config(recipe, vocab)
