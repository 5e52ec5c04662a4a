"""The per-host py-cpuinfo cache that spares each rank start DeepSpeed's two 1-s CPU probes."""

from __future__ import annotations

import json
from pathlib import Path

import cpuinfo
import pytest

from bigtrain.train.cpu_info import cached_cpu_info, host_key, remember_cpu_info


def test_the_first_call_asks_and_writes_the_later_ones_read(tmp_path: Path) -> None:
    calls = []

    def probe() -> dict:
        calls.append(1)
        return {"arch": "X86_64", "flags": ["avx2"]}

    path = tmp_path / "cache" / "cpuinfo-x.json"
    get = cached_cpu_info(probe, path)
    assert get() == {"arch": "X86_64", "flags": ["avx2"]} and len(calls) == 1
    assert json.loads(path.read_text())["arch"] == "X86_64"
    assert cached_cpu_info(probe, path)() == get() and len(calls) == 1  # another process: read, not asked
    path.write_text('{"arch": "X86')  # torn or corrupt: asked again and rewritten
    assert get()["flags"] == ["avx2"] and len(calls) == 2 and json.loads(path.read_text())["arch"] == "X86_64"
    failed = cached_cpu_info(lambda: {}, tmp_path / "failed.json")  # py-cpuinfo's answer when its probe fails
    assert failed() == {} and not (tmp_path / "failed.json").exists()


def test_the_key_is_the_cpu_description_without_its_clock(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_text("model name\t: Xeon\ncpu MHz\t\t: 2100.0\nflags\t\t: avx2\n")
    b.write_text("model name\t: Xeon\ncpu MHz\t\t: 3300.5\nflags\t\t: avx2\n")
    c.write_text("model name\t: EPYC\ncpu MHz\t\t: 2100.0\nflags\t\t: avx2\n")
    assert host_key(a) == host_key(b) != host_key(c)
    assert host_key(tmp_path / "none") is None


def test_remember_routes_deepspeeds_import_through_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = tmp_path / "cpuinfo"
    proc.write_text("model name\t: Test CPU\n")
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: {"arch": "X86_64", "flags": []})
    remember_cpu_info(tmp_path / "cache", proc)
    from cpuinfo import get_cpu_info  # as DeepSpeed's op builder imports it, at each call

    assert get_cpu_info()["arch"] == "X86_64" and (tmp_path / "cache" / f"cpuinfo-{host_key(proc)}.json").is_file()
    patched = cpuinfo.get_cpu_info
    remember_cpu_info(tmp_path / "other", proc)  # once per process: not wrapped twice
    assert cpuinfo.get_cpu_info is patched
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: {"arch": "X86_64"})
    remember_cpu_info(tmp_path / "cache", tmp_path / "no-proc")  # no CPU description: left as it is
    assert not getattr(cpuinfo.get_cpu_info, "bigtrain_cached", False)
