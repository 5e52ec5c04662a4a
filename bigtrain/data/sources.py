"""Raw text through HF `datasets`: local files (txt, jsonl/json, parquet), a hub or local dataset
name, or a stream. Every source ends as an iterable of documents (str)."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from bigtrain.errors import BigtrainError

BUILDER_BY_SUFFIX = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}


def expand_files(patterns: list[str], key: str) -> list[str]:
    """Globs -> sorted existing files; a pattern that matches nothing is an error naming it."""
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
        matched = [m for m in matched if Path(m).is_file()]
        if not matched:
            raise BigtrainError(f"{key}: no file matches {pattern!r}")
        files.extend(matched)
    return files


def builder_for(files: list[str], key: str) -> str:
    builders = {BUILDER_BY_SUFFIX.get(Path(f).suffix.lower()) for f in files}
    if None in builders:
        bad = next(f for f in files if Path(f).suffix.lower() not in BUILDER_BY_SUFFIX)
        raise BigtrainError(f"{key}: {bad}: unsupported file type (use .txt, .jsonl, .json or .parquet)")
    if len(builders) > 1:
        raise BigtrainError(f"{key}: mixes file types {sorted(b for b in builders if b)}; use one kind per list")
    return builders.pop()  # type: ignore[return-value]


def load_documents(
    *,
    files: list[str] | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    text_field: str = "text",
    streaming: bool = False,
    key: str = "data.train_files",
) -> Iterable[str]:
    """Documents from local files or a dataset name. Text files are one document per file."""
    import datasets

    datasets.disable_progress_bars()  # per-split bars from datasets; prepare reports one summary line
    if files:
        builder = builder_for(files, key)
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files={"train": files}, split="train", streaming=streaming, **kwargs)
    elif dataset:
        try:
            ds = datasets.load_dataset(dataset, dataset_config, split=split, streaming=streaming)
        except Exception as e:  # datasets raises many types for "not found"/"no access"
            raise BigtrainError(
                f"data.dataset: cannot load {dataset!r} split {split!r}: {str(e).splitlines()[0]}"
            ) from None
    else:
        raise BigtrainError(f"{key}: no data given (set data.train_files, data.dataset or data.token_dir)")
    column_names = ds.column_names if not streaming else None
    if column_names is not None and text_field not in column_names:
        raise BigtrainError(f"{key}: no column {text_field!r} (columns: {column_names}); set data.text_field")
    return (row[text_field] for row in ds)
