"""Raw text through HF `datasets`: local files (txt, jsonl/json, parquet), a hub or local dataset
name, or a stream. Every source ends as an iterable of documents (str)."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


# --- work units: the fixed pieces a source is tokenised in (one shard each) -------------------------

DATASET_UNIT_ROWS = 50_000  # rows of a (non-streamed) dataset per shard


@dataclass(frozen=True)
class Unit:
    """One shard's worth of a source: a whole file, or rows [start, stop) of a dataset, or a whole stream.
    Units depend only on the source, never on workers or parts, so every split of the work writes the
    same shards."""

    index: int
    file: str | None = None
    rows: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        return self.file or (f"rows {self.rows[0]}-{self.rows[1]}" if self.rows else "stream")


def open_dataset(spec: dict):
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(
            spec["dataset"], spec.get("config"), split=spec["split"], streaming=spec.get("streaming", False)
        )
    except Exception as e:  # datasets raises many types for "not found"/"no access"
        raise BigtrainError(
            f"{spec['key']}: cannot load {spec['dataset']!r} split {spec['split']!r}: {str(e).splitlines()[0]}"
        ) from None


def source_units(spec: dict) -> list[Unit]:
    if "files" in spec:
        return [Unit(i, file=f) for i, (f, _, _) in enumerate(spec["files"])]
    if spec.get("streaming"):
        return [Unit(0)]
    return units_from_rows(len(open_dataset(spec)))


def units_from_rows(n: int) -> list[Unit]:
    """The units of a dataset of `n` rows (what `settings.json` records, so other parts need not count)."""
    return [Unit(i, rows=(a, min(a + DATASET_UNIT_ROWS, n))) for i, a in enumerate(range(0, n, DATASET_UNIT_ROWS))]


def _column(rows: Iterable[dict], field: str, key: str, where: str) -> Iterator[str]:
    for row in rows:
        if field not in row:
            raise BigtrainError(f"{key}: no column {field!r} in {where} (columns: {sorted(row)}); set data.text_field")
        yield row[field]


def file_documents(path: str, text_field: str, key: str) -> Iterator[str]:
    """A text file is one document; jsonl/json/parquet hold one document per row (`text_field`)."""
    builder = builder_for([path], key)
    if builder == "text":
        yield Path(path).read_text(encoding="utf-8")
    elif builder == "json":
        with open(path, encoding="utf-8") as f:
            head = f.read(1)
            while head.isspace():
                head = f.read(1)
            f.seek(0)
            rows = json.load(f) if head == "[" else (json.loads(line) for line in f if line.strip())
            yield from _column(rows, text_field, key, path)
    else:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise BigtrainError(
                f"{key}: no column {text_field!r} in {path} (columns: {pf.schema_arrow.names}); set data.text_field"
            )
        for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
            yield from batch.column(0).to_pylist()


def unit_documents(spec: dict, unit: Unit) -> Iterator[str]:
    field = spec["text_field"]
    if unit.file is not None:
        yield from file_documents(unit.file, field, spec["key"])
        return
    ds = open_dataset(spec)
    if unit.rows is not None:
        ds = ds.select(range(*unit.rows))
    columns = getattr(ds, "column_names", None)
    if columns is not None and field not in columns:
        raise BigtrainError(f"{spec['key']}: no column {field!r} (columns: {columns}); set data.text_field")
    yield from _column(ds, field, spec["key"], spec["dataset"])
