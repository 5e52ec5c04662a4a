"""Tokenizers: any HF tokenizer directory or hub name, through AutoTokenizer."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from bigtrain.errors import BigtrainError


def load_tokenizer(name_or_dir: str) -> PreTrainedTokenizerBase:
    looks_local = name_or_dir.startswith((".", "/", "~")) or Path(name_or_dir).exists()
    if looks_local and not Path(name_or_dir).expanduser().is_dir():
        raise BigtrainError(f"data.tokenizer: directory {name_or_dir} not found")
    try:
        tok = AutoTokenizer.from_pretrained(str(Path(name_or_dir).expanduser()) if looks_local else name_or_dir)
    except (OSError, ValueError) as e:
        raise BigtrainError(f"data.tokenizer: cannot load {name_or_dir!r}: {str(e).splitlines()[0]}") from None
    if tok.eos_token_id is None:
        raise BigtrainError(f"data.tokenizer: {name_or_dir!r} has no EOS token to separate documents")
    return tok
