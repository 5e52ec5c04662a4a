"""Checks that need no process group and no DeepSpeed: data files, tokenizer, vocab size, the
init_from config. Run on every rank before anything starts, so bad input fails at once, with one
line, before a process group exists or a file is written."""

from __future__ import annotations

from bigtrain.config import Recipe
from bigtrain.data.prepare import source_spec
from bigtrain.data.token_file import TokenFile
from bigtrain.data.tokenizer import load_tokenizer
from bigtrain.train.model_config import resolve_model_config


def preflight(recipe: Recipe) -> None:
    if recipe.data.token_dir:
        vocab = TokenFile(recipe.data.token_dir).meta.vocab_size
    else:
        for split in ("train", "eval"):
            source_spec(recipe.data, split)
        vocab = len(load_tokenizer(recipe.data.tokenizer))
    resolve_model_config(recipe, vocab)
