"""A checkpoint's manifest: every file it holds with its size (and, optionally, its SHA-256).

Written last into a checkpoint directory, so a directory with a manifest was complete when it was
written; verifying it later finds what went missing or short since (a shard deleted, a file truncated
by a full disk or a copy cut off, a byte flipped when checksums were recorded). A problem is one line
naming the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from bigtrain.ckpt.atomic import write_text_atomic

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 8 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def relative_files(directory: str | Path) -> list[str]:
    """The files a manifest of `directory` lists, as it names them (relative, `/`-separated)."""
    return [p.relative_to(directory).as_posix() for p in _files(Path(directory))]


def write_manifest(directory: str | Path, checksums: bool = False, known: Mapping[str, str] | None = None) -> dict:
    """Record every file under `directory` (relative path -> bytes [, sha256]); the manifest itself is
    written atomically, so it is either absent or whole. `known`: SHA-256s already computed (each rank
    hashes the files it wrote, in parallel); only the files missing from it are hashed here."""
    directory = Path(directory)
    known = known or {}
    files = {}
    for p in _files(directory):
        name = p.relative_to(directory).as_posix()
        entry: dict[str, object] = {"bytes": p.stat().st_size}
        if checksums:
            entry["sha256"] = known.get(name) or sha256(p)
        files[name] = entry
    manifest = {"format": FORMAT, "checksums": checksums, "files": files}
    write_text_atomic(directory / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def has_manifest(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def checksummed_files(directory: str | Path) -> dict[str, int]:
    """The files whose SHA-256 the manifest of `directory` records, with their sizes (empty: none, or no
    readable manifest, which `manifest_problem` reports)."""
    try:
        files = json.loads((Path(directory) / MANIFEST).read_text())["files"]
        return {name: int(e["bytes"]) for name, e in files.items() if "sha256" in e}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def checksum_problem(directory: str | Path, names: list[str]) -> str | None:
    """The first of `names` (files of `directory`'s manifest) whose SHA-256 differs from the one recorded,
    as one line; None when all match. Lets several processes share the hashing of one checkpoint."""
    directory = Path(directory)
    files = json.loads((directory / MANIFEST).read_text())["files"]
    for name in names:
        p = directory / name
        if sha256(p) != files[name]["sha256"]:
            return f"{p}: SHA-256 differs from {MANIFEST} (corrupted)"
    return None


def manifest_problem(directory: str | Path, checksums: bool = True) -> str | None:
    """None when every file the manifest lists is there with its size (and its checksum, when recorded
    and `checksums`); else one line naming the first file that is not. A missing manifest is a problem."""
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"{path}: missing (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path}: unreadable ({type(e).__name__}: {e})"
    for name, entry in files.items():
        p = directory / name
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            return f"{p}: missing (listed in {MANIFEST})"
        except OSError as e:
            return f"{p}: unreadable ({e.strerror})"
        if size != entry["bytes"]:
            return f"{p}: {size} bytes, {MANIFEST} says {entry['bytes']} ({'truncated' if size < entry['bytes'] else 'changed'})"
        if checksums and "sha256" in entry and sha256(p) != entry["sha256"]:
            return f"{p}: SHA-256 differs from {MANIFEST} (corrupted)"
    return None
