"""A sharded token store: the prepared form of one source.

    DIR/settings.json               what is being prepared (source, tokenizer, settings); written first
    DIR/shards/shard-000007.bin     the tokens of work unit 7 (a file, or a slice of a dataset), flat
    DIR/shards/shard-000007.json    that shard's counts; written after its .bin, so it marks it complete
    DIR/index.json                  every shard in global order with the totals; written last

Shards are read through memory maps and laid end to end in unit order: the store reads as one flat
token array, whatever number of processes or machines wrote its shards. Each file lands by an atomic
rename, so a crash leaves no half shard; a rerun keeps the finished shards and writes the rest.

A memory map holds a file descriptor, and a 100B-token store is thousands of shards: maps are opened on
first read and kept in one least-recently-used cache per process (all stores together), at most
BIGTRAIN_OPEN_SHARDS (default 128) at a time, so a run's descriptors are bounded whatever the corpus size.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import resource
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigtrain.ckpt.atomic import write_text_atomic
from bigtrain.errors import BigtrainError

FORMAT = "bigtrain-tokens/1"
SETTINGS = "settings.json"
INDEX = "index.json"
SHARDS = "shards"
LOCK = ".prepare.lock"  # flock'd by concurrent parts around the claim and around writing the index
OPEN_SHARDS_ENV = "BIGTRAIN_OPEN_SHARDS"
OPEN_SHARDS_DEFAULT = 128  # a map costs one descriptor; 128 leaves most of a common 1024 soft limit to NCCL & co
FD_HEADROOM = 64  # descriptors kept free beyond those in use and the cache: sockets, logs, checkpoint files


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def shard_name(unit: int) -> str:
    return f"shard-{unit:06d}"


# --- writing ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def prepare_lock(target: Path) -> Iterator[None]:
    """An exclusive lock on `target` shared by every part preparing it (on one machine or several over a
    shared file system that supports flock). `shards/` is made first, so the directory a part sees is
    never one with settings and no shard folder."""
    (target / SHARDS).mkdir(parents=True, exist_ok=True)
    with open(target / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_settings(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / SETTINGS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def claim_directory(target: Path, settings: dict[str, Any]) -> None:
    """Start or continue preparing `target` (call under `prepare_lock`). Parts prepared with other settings
    are never mixed in."""
    (target / SHARDS).mkdir(parents=True, exist_ok=True)  # first: a part never sees settings without shards/
    existing = target / SETTINGS
    if existing.is_file():
        have = json.loads(existing.read_text())
        if have.get("fingerprint") != settings["fingerprint"]:
            diff = next((k for k in settings if have.get(k) != settings[k] and k != "fingerprint"), "fingerprint")
            raise BigtrainError(
                f"{target}: holds parts prepared with a different {diff} (fingerprint {have.get('fingerprint')}, "
                f"now {settings['fingerprint']}); prepare into another directory"
            )
        return
    if any(p.name != SHARDS and not p.name.startswith(".") for p in target.iterdir()):
        raise BigtrainError(f"{target}: exists and is not a token directory being prepared; use another directory")
    write_text_atomic(existing, json.dumps(settings, indent=2))


def finished_shard(target: Path, unit: int, itemsize: int) -> dict[str, Any] | None:
    """The shard's record if it is complete (record present, size matching), else None."""
    meta = target / SHARDS / f"{shard_name(unit)}.json"
    data = target / SHARDS / f"{shard_name(unit)}.bin"
    if not meta.is_file() or not data.is_file():
        return None
    record = json.loads(meta.read_text())
    return record if data.stat().st_size == record["tokens"] * itemsize else None


class ShardWriter:
    """Tokens of one unit into a hidden temporary file; `finish` renames it into place, then writes its record."""

    def __init__(self, target: Path, unit: int, dtype: np.dtype) -> None:
        self.target, self.unit, self.dtype = target, unit, dtype
        self.tmp = target / SHARDS / f".{shard_name(unit)}.bin.{uuid.uuid4().hex[:8]}.tmp"
        self._f = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish/abort
        self.tokens = self.documents = 0

    def write(self, ids: list[int] | np.ndarray, documents: int) -> None:
        ids = np.asarray(ids, dtype=self.dtype)
        self._f.write(ids.tobytes())
        self.tokens += len(ids)
        self.documents += documents

    def finish(self, **extra: Any) -> dict[str, Any]:
        self._f.close()
        base = self.target / SHARDS / shard_name(self.unit)
        os.replace(self.tmp, base.with_suffix(".bin"))
        record = {"unit": self.unit, "tokens": self.tokens, "documents": self.documents, **extra}
        write_text_atomic(base.with_suffix(".json"), json.dumps(record))
        return record

    def abort(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)


def write_index(target: Path, settings: dict[str, Any], shards: list[dict[str, Any]]) -> None:
    index = {
        **settings,
        "num_tokens": sum(s["tokens"] for s in shards),
        "num_documents": sum(s["documents"] for s in shards),
        "shards": [{"file": f"{SHARDS}/{shard_name(s['unit'])}.bin", **s} for s in shards],
    }
    write_text_atomic(target / INDEX, json.dumps(index, indent=1))


# --- reading ---------------------------------------------------------------------------------------


@dataclass
class StoreMeta:
    dtype: str
    num_tokens: int
    num_documents: int
    vocab_size: int
    eos_token_id: int | None
    bos_token_id: int | None
    tokenizer: str
    tokenizer_hash: str | None
    fingerprint: str


def open_shards_limit() -> int:
    """The most shard maps a process keeps open (BIGTRAIN_OPEN_SHARDS, default 128)."""
    raw = os.environ.get(OPEN_SHARDS_ENV, "")
    try:
        value = int(raw) if raw else OPEN_SHARDS_DEFAULT
    except ValueError:
        value = 0
    if value < 1:
        raise BigtrainError(f"{OPEN_SHARDS_ENV}={raw!r}: must be an integer >= 1")
    return value


def _descriptors_in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no procfs (macOS): assume a fresh process
        return 16


def ensure_open_files(maps: int, where: Path) -> None:
    """Before opening a store: raise the soft RLIMIT_NOFILE to the hard limit (what most launchers forget),
    and refuse, in one line, a limit too low for the descriptors in use + `maps` shard maps + headroom."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):  # a container may forbid it; then the check decides
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    in_use = _descriptors_in_use()
    need = in_use + maps + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < need:
        fits = soft - in_use - FD_HEADROOM
        lower = f"or set {OPEN_SHARDS_ENV}={fits}" if fits >= 1 else "or close descriptors"
        raise BigtrainError(
            f"{where}: the open-file limit (ulimit -n) is {soft}, below the {need} this process needs "
            f"({in_use} in use + {maps} shard maps + {FD_HEADROOM} spare); raise `ulimit -n` (hard limit {hard}) "
            f"{lower}"
        )


class MapCache:
    """The open shard maps of a process, least recently used first; opening one past `limit` drops the
    oldest (its descriptor closes once no array still views it: reads copy, so at once)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._maps: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the trainer reads ahead and evaluates from more than one thread

    def get(self, file: Path, dtype: np.dtype) -> np.ndarray:
        with self._lock:
            arr = self._maps.get(file)
            if arr is not None:
                self._maps.move_to_end(file)
                return arr
            while len(self._maps) >= self.limit:
                self._maps.popitem(last=False)
            try:
                arr = np.memmap(file, dtype=dtype, mode="r")
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    raise BigtrainError(
                        f"{file}: too many open files (limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}); "
                        f"raise `ulimit -n` or lower {OPEN_SHARDS_ENV} (now {self.limit})"
                    ) from None
                raise
            self._maps[file] = arr
            return arr

    def __len__(self) -> int:
        return len(self._maps)

    def clear(self) -> None:
        with self._lock:
            self._maps.clear()


_CACHE: MapCache | None = None


def map_cache() -> MapCache:
    """The process's one cache (sized from BIGTRAIN_OPEN_SHARDS when first used)."""
    global _CACHE
    if _CACHE is None:
        _CACHE = MapCache(open_shards_limit())
    return _CACHE


class TokenStore:
    """Read side: the shards as one flat token array, cut into fixed-length sequences."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not (path / INDEX).is_file():
            state = (
                "is still being prepared (no index yet)" if (path / SETTINGS).is_file() else "is not a token directory"
            )
            raise BigtrainError(f"{path}: {state}; see bigtrain-data prepare")
        try:
            index = json.loads((path / INDEX).read_text())
            tok = index["tokenizer"]
            self.meta = StoreMeta(
                dtype=index["dtype"],
                num_tokens=index["num_tokens"],
                num_documents=index["num_documents"],
                vocab_size=tok["vocab_size"],
                eos_token_id=tok["eos_token_id"],
                bos_token_id=tok["bos_token_id"],
                tokenizer=tok["name"],
                tokenizer_hash=tok["hash"],
                fingerprint=index["fingerprint"],
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise BigtrainError(f"{path / INDEX}: corrupt token index ({e!r})") from None
        self.path, self.index = path, index
        self.dtype = np.dtype(self.meta.dtype)
        self.shards: list[Path] = []  # opened on first read, through map_cache()
        for shard in index["shards"]:
            file = path / shard["file"]
            expected = shard["tokens"] * self.dtype.itemsize
            actual = file.stat().st_size if file.is_file() else None
            if actual != expected:
                got = "missing" if actual is None else f"{actual} bytes"
                raise BigtrainError(f"{file}: {got}, the index says {expected} bytes (truncated or corrupt)")
            self.shards.append(file)
        self.offsets = np.cumsum([0] + [s["tokens"] for s in index["shards"]])
        cache = map_cache()
        ensure_open_files(min(cache.limit, len(self.shards)), path)

    @property
    def sources(self) -> list[str]:
        return [s.get("source", "") for s in self.index["shards"]]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the flat array (a read may span shards)."""
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts, pos = [], start
        for i in range(max(first, 0), len(self.shards)):
            if pos >= stop:
                break
            lo, hi = pos - self.offsets[i], min(stop, self.offsets[i + 1]) - self.offsets[i]
            if hi > lo:
                parts.append(map_cache().get(self.shards[i], self.dtype)[lo:hi])
                pos += hi - lo
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def num_sequences(self, seq_len: int) -> int:
        return self.meta.num_tokens // seq_len

    def sequence(self, index: int, seq_len: int) -> np.ndarray:
        return self.read(index * seq_len, (index + 1) * seq_len)


def open_tokens(path: str | Path):
    """A token directory of either format: a sharded store, or the single-file one (tokens.bin + meta.json)."""
    from bigtrain.data.token_file import META, TokenFile

    path = Path(path)
    if (path / META).is_file() and not (path / INDEX).is_file():
        return TokenFile(path)
    return TokenStore(path)
