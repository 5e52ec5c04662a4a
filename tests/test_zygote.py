"""The suite's fork server (tests/zygote.py): a process it starts behaves as `python SCRIPT ARGS` would,
and a request it cannot serve faithfully is refused (the launcher then starts a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.zygote import ENV_VAR, env_conflict

REPO = Path(__file__).resolve().parents[1]
SPAWN = REPO / "tests" / "spawn_ranks.py"

PROBE = """
import atexit, os, sys, time
forked = "torch" in sys.modules  # a fresh interpreter has not imported it yet
print("argv", sys.argv[1:], "rank", os.environ.get("RANK"), "extra", os.environ.get("BIGTRAIN_PROBE"))
print("path0", sys.path[0], "cwd", os.getcwd(), "main", __name__, "forked", forked)
print("to stderr", file=sys.stderr)
if os.environ.get("RANK") == "1":  # printed (and flushed: the launcher may end this rank any moment now)
    sys.stdout.flush()
    open("rank1.printed", "w").close()
if os.environ.get("RANK") == "0":  # the first rank to fail ends the other: not before it has printed
    deadline = time.monotonic() + 60
    while not os.path.exists("rank1.printed") and time.monotonic() < deadline:
        time.sleep(0.01)
atexit.register(lambda: print("atexit ran", flush=True))
from concurrent.futures import ThreadPoolExecutor
ThreadPoolExecutor(1).submit(int)  # its worker left waiting, as torch.compile leaves its pool: exit stops it
sys.exit(int(os.environ.get("RANK", "0")) + 3)
"""


@pytest.fixture(scope="module")
def server() -> str:
    """The session's server, once it has finished importing."""
    path = os.environ.get(ENV_VAR)
    if not path:
        pytest.skip("no fork server in this session (BIGTRAIN_TEST_NO_ZYGOTE=1)")
    deadline = time.monotonic() + 300
    while not Path(path).exists():
        assert time.monotonic() < deadline, "the fork server did not come up in 300 s"
        time.sleep(0.5)
    return path


def spawn(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    base = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run(
        [sys.executable, str(SPAWN), *args[:-1], str(script), args[-1]],
        cwd=tmp_path,
        env=base,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_forked_process_is_the_script(server: str, tmp_path: Path) -> None:
    plain = spawn(tmp_path, "--plain", "x", BIGTRAIN_PROBE="7")
    assert plain.returncode == 3, plain.stderr
    assert f"argv ['x'] rank None extra 7\npath0 {tmp_path} cwd {tmp_path} main __main__ forked True" in plain.stdout
    assert plain.stdout.endswith("atexit ran\n") and plain.stderr == "to stderr\n"
    ranks = spawn(tmp_path, "2", "29511", "y")
    assert ranks.returncode in (3, 4), ranks.stderr  # the first rank to fail: 0 exits 3, 1 exits 4
    for r in (0, 1):
        assert f"argv ['--local_rank={r}', 'y'] rank {r} extra None\n" in ranks.stdout
    assert ranks.stdout.count("forked True") == 2
    stdin = through_tests_python(tmp_path, "-", "z", stdin=PROBE)
    assert stdin.returncode == 3 and "argv ['z'] rank None extra None\npath0  cwd" in stdin.stdout
    assert "main __main__ forked True" in stdin.stdout
    code = through_tests_python(tmp_path, "-c", PROBE, "w")
    assert code.returncode == 3 and "argv ['w'] rank None extra None\npath0  cwd" in code.stdout
    assert "main __main__ forked True" in code.stdout


def through_tests_python(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`tests/python ARGS`: python through the server, as shell scripts under test run it."""
    return subprocess.run(
        [str(REPO / "tests" / "python"), *args],
        input=stdin,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_request_is_refused_when_import_time_environment_differs(server: str, tmp_path: Path) -> None:
    # torch reads OMP_NUM_THREADS when it loads: a server started with 1 cannot serve a process that asks for 2
    fresh = spawn(tmp_path, "--plain", "x", OMP_NUM_THREADS="2")
    assert fresh.returncode == 3 and "forked False" in fresh.stdout
    assert (
        env_conflict({"OMP_NUM_THREADS": "1", "RANK": "0"}, {"OMP_NUM_THREADS": "2", "RANK": "1"}) == "OMP_NUM_THREADS"
    )
    assert env_conflict({"RANK": "0", "PWD": "/a"}, {"RANK": "1", "PWD": "/b", "BIGTRAIN_X": "1"}) is None
