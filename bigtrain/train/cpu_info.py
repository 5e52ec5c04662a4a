"""One py-cpuinfo answer per host, kept on disk.

DeepSpeed's op builders (the CPU all-reduce, FusedAdam) ask `cpuinfo.get_cpu_info()` for the CPU's arch and
flags to form compile flags, twice per process, even when the op is already built and cached. Each call
starts a Python subprocess that sleeps 1 s to time the clock: 2.5 s of every rank's start-up, idle. The
answer is the same for every process of a host, so the first one writes it to the cache and the others
read it. The key is the host's `/proc/cpuinfo` without its clock lines, so other hardware under the same
home directory gets its own entry. Where there is no `/proc/cpuinfo` (not Linux), nothing changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bigtrain.ckpt.atomic import write_text_atomic

PROC_CPUINFO = Path("/proc/cpuinfo")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bigtrain"


def host_key(proc_cpuinfo: Path = PROC_CPUINFO) -> str | None:
    """A digest of the CPU description, or None when the host has none to read."""
    try:
        text = proc_cpuinfo.read_text()
    except OSError:
        return None
    stable = "\n".join(line for line in text.splitlines() if not line.startswith("cpu MHz"))
    return hashlib.sha256(stable.encode()).hexdigest()[:16]


def cached_cpu_info(original: Callable[[], dict[str, Any]], path: Path) -> Callable[[], dict[str, Any]]:
    """`original` behind a file: read it if it is there and valid, else ask once and write it."""

    def get_cpu_info() -> dict[str, Any]:
        try:
            info = json.loads(path.read_text())
            if isinstance(info, dict) and info.get("arch"):
                return info
        except (OSError, ValueError):
            pass
        info = original()
        if info.get("arch"):  # py-cpuinfo answers {} when its subprocess fails: not worth keeping
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps(info))
            except OSError:
                pass  # a read-only home: ask every time, as without the cache
        return info

    get_cpu_info.bigtrain_cached = True  # type: ignore[attr-defined]
    return get_cpu_info


def remember_cpu_info(cache_dir: Path | None = None, proc_cpuinfo: Path = PROC_CPUINFO) -> None:
    """Route `cpuinfo.get_cpu_info` (which DeepSpeed imports at each call) through the per-host cache."""
    try:
        import cpuinfo
    except ImportError:
        return
    key = host_key(proc_cpuinfo)
    if key is None or getattr(cpuinfo.get_cpu_info, "bigtrain_cached", False):
        return
    path = (cache_dir or default_cache_dir()) / f"cpuinfo-{key}.json"
    cpuinfo.get_cpu_info = cached_cpu_info(cpuinfo.get_cpu_info, path)
