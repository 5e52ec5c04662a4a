"""The GPU session script's plumbing on CPU (`--dry`): every override parses against this checkout's schema,
the entry points answer --help, and the deadline plan fits one device call or skips what cannot fit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.trainer_runs import REPO


def dry(tmp_path: Path, *sections: str, deadline: int = 540) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "SCRATCH": str(tmp_path / "scratch"),
        "DEADLINE_S": str(deadline),
        "PYTHON": str(REPO / "tests" / "python"),  # its ~17 Python commands forked from the suite's server
        "BIGTRAIN_TEST_RUNTIME_ENV": "OUT,SCRATCH,DEADLINE_S,PYTHON",  # the script's own, not read by an import
    }
    return subprocess.run(
        ["bash", "tools/gpu/run_gpu_checks.sh", "--dry", *sections],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_default_session_fits_one_call(tmp_path: Path) -> None:
    result = dry(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "dry run: 0 problem(s)" in result.stdout
    end = int(re.search(r"planned end at (\d+)s of 540s", result.stdout).group(1))
    assert end <= 540
    for name in ("env", "smoke_plain", "smoke_z3_liger_fused", "profile", "bench"):
        assert f"=== {name} (at " in result.stdout, name  # planned, not skipped
    assert "stepmem" not in result.stdout and "gstack" not in result.stdout  # second calls of their own


def test_a_short_deadline_skips_what_cannot_fit(tmp_path: Path) -> None:
    result = dry(tmp_path, "install", "env", "profile", "bench", deadline=200)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "=== env (at 60s" in result.stdout and "=== profile: SKIPPED" in result.stdout
    skipped = [
        line.split("\t")[0]
        for line in (tmp_path / "out" / "summary.tsv").read_text().splitlines()
        if "\tskipped\t" in line
    ]
    assert skipped == ["profile", "bench", "bench_hf"]


def test_the_second_calls_parse(tmp_path: Path) -> None:
    result = dry(tmp_path, "install", "stepmem", "gstack", deadline=100000)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "OVERRIDES REJECTED" not in result.stdout and "dry run: 0 problem(s)" in result.stdout


def fake_wheel(d: Path, name: str, *requires: str) -> None:
    import zipfile

    with zipfile.ZipFile(d / f"{name}-1.0-py3-none-any.whl", "w") as z:
        meta = [f"Name: {name}", "Version: 1.0", *(f"Requires-Dist: {r}" for r in requires)]
        z.writestr(f"{name}-1.0.dist-info/METADATA", "\n".join(meta) + "\n")


def test_carried_wheels_need_nothing_the_image_lacks(tmp_path: Path) -> None:
    kinds = tmp_path / "KINDS.md"
    kinds.write_text("nvidia-h200: their image holds these. Packages: numpy, torch, packaging.\n")
    wheels = tmp_path / "whl"
    wheels.mkdir()
    fake_wheel(
        wheels, "deepspeed", "torch", "numpy>=1", "hjson", "pytest; extra == 'dev'", "pywin32; sys_platform == 'win32'"
    )
    fake_wheel(wheels, "hjson")
    cmd = [sys.executable, "tools/gpu/check_wheels.py", "--wheels", str(wheels), "--kinds", str(kinds)]
    ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    fake_wheel(wheels, "huggingface_hub", "httpx2>=0.1", "packaging")
    bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"error: huggingface-hub needs httpx2>=0.1 (not in {wheels}/, not in the image)"
