"""Tokenizers: any HF tokenizer directory or hub name, through AutoTokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from bigtrain.errors import BigtrainError

if TYPE_CHECKING:
    from bigtrain.config import DataConfig


def load_tokenizer(name_or_dir: str) -> PreTrainedTokenizerBase:
    looks_local = name_or_dir.startswith((".", "/", "~")) or Path(name_or_dir).exists()
    if looks_local and not Path(name_or_dir).expanduser().is_dir():
        raise BigtrainError(f"data.tokenizer: directory {name_or_dir} not found")
    try:
        tok = AutoTokenizer.from_pretrained(str(Path(name_or_dir).expanduser()) if looks_local else name_or_dir)
    except (OSError, ValueError) as e:
        raise BigtrainError(f"data.tokenizer: cannot load {name_or_dir!r}: {str(e).splitlines()[0]}") from None
    document_specials(tok)  # refuses a tokenizer that cannot mark documents
    return tok


def tokenizer_vocab_size(data: DataConfig) -> int:
    """The number of tokens the trainer sizes the model for (`RunData.vocab_size`): `len()` of
    `data.tokenizer`; a recipe reading only a token directory without that tokenizer at hand: the
    vocabulary the directory records."""
    try:
        return len(load_tokenizer(data.tokenizer))
    except BigtrainError:
        if not data.token_dir:
            raise
    from bigtrain.data.store import open_tokens

    return int(open_tokens(data.token_dir).meta.vocab_size)


def document_specials(tok: PreTrainedTokenizerBase) -> tuple[int | None, int | None]:
    """(BOS, EOS) around every document, as the tokenizer defines them: a LLaMA tokenizer's BOS starts each
    document and its EOS ends it; a tokenizer whose BOS is its EOS (GPT-2) only ends documents."""
    bos, eos = tok.bos_token_id, tok.eos_token_id
    if bos is None and eos is None:
        raise BigtrainError(
            f"data.tokenizer: {tok.name_or_path!r} has neither a BOS nor an EOS token to mark documents"
        )
    return (bos if bos != eos else None), eos


def tokenizer_identity(tok: PreTrainedTokenizerBase) -> dict:
    """What a token directory records about its tokenizer; `hash` covers the whole vocabulary and rules,
    so the same tokenizer at another path (or from the hub) is recognised as the same."""
    import hashlib

    cached = getattr(tok, "_bigtrain_identity", None)
    if cached is not None:  # hashing the whole tokenizer costs a noticeable moment; once per object
        return cached
    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tok.get_vocab().items()))
    bos, eos = document_specials(tok)
    ident = {
        "name": tok.name_or_path,
        "vocab_size": len(tok),
        "bos_token_id": bos,
        "eos_token_id": eos,
        "hash": hashlib.sha256(body.encode()).hexdigest()[:16],
    }
    tok._bigtrain_identity = ident
    return ident
