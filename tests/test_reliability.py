"""Failures around checkpoints, on real DeepSpeed ZeRO-3 runs (2 CPU ranks, the tiny Shakespeare model):
a damaged newest checkpoint (resume falls back, grow refuses), a save onto a full filesystem, and a rank
SIGKILLed in the middle of a save. docs/reliability.md says what each of them guarantees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from bigtrain.ckpt.manifest import manifest_problem, write_manifest
from bigtrain.cli.grow import main as grow_main
from bigtrain.errors import BigtrainError
from bigtrain.train.checkpoint import checkpoint_problem, newest_checkpoint, prune_checkpoints
from bigtrain.train.distributed import free_port
from tests.trainer_runs import DEEPSPEED, REPO, launch, losses, tiny_overrides

SHARD = "zero_pp_rank_1_mp_rank_00_optim_states.pt"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


def run_args(demo_data: Path, out: Path, cache: Path, **extra: object) -> list[str]:
    values = {"train.max_steps": 4, "train.save_every": 2, "train.eval_every": 0, "train.keep_last": 2, **extra}
    return tiny_overrides(demo_data, out, cache, **values)


@pytest.fixture(scope="module")
def finished(demo_data: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run with checkpoints step_2 and step_4 (the final one)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    launch(run_args(demo_data, out, cache_dir), ranks=2)
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# --- the manifest, on plain files ----------------------------------------------------------------


def test_manifest_names_the_missing_short_or_corrupt_file(tmp_path: Path) -> None:
    d = tmp_path / "ckpt"
    (d / "rng").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"x" * 100)
    (d / "rng" / "r0.pt").write_bytes(b"y" * 10)
    write_manifest(d, checksums=True)
    assert manifest_problem(d) is None
    (d / "a.bin").write_bytes(b"z" * 100)  # same size, other bytes: only the checksum sees it
    assert manifest_problem(d, checksums=False) is None
    assert manifest_problem(d) == f"{d / 'a.bin'}: SHA-256 differs from manifest.json (corrupted)"
    (d / "a.bin").write_bytes(b"x" * 60)
    assert manifest_problem(d) == f"{d / 'a.bin'}: 60 bytes, manifest.json says 100 (truncated)"
    (d / "rng" / "r0.pt").unlink()
    (d / "a.bin").write_bytes(b"x" * 100)
    assert manifest_problem(d) == f"{d / 'rng' / 'r0.pt'}: missing (listed in manifest.json)"
    (d / "manifest.json").unlink()
    assert manifest_problem(d) == f"{d / 'manifest.json'}: missing (the save did not finish)"


# --- a damaged newest checkpoint -------------------------------------------------------------------


def test_deleted_shard_is_skipped_on_resume_and_refused_by_grow(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(finished, tmp_path)
    root = run / "checkpoints"
    assert checkpoint_problem(root / "step_4") is None and checkpoint_problem(root / "step_2") is None
    (root / "step_4" / SHARD).unlink()
    lines: list[str] = []
    assert newest_checkpoint(root, lines.append) == root / "step_2"
    assert lines == [
        f"bigtrain: checkpoint step_4 fails verification: {root / 'step_4' / SHARD}: missing (listed in "
        "manifest.json); resuming from step_2 instead"
    ]
    # bigtrain-grow (and init_from, the same reader) refuses the run whose `latest` is the damaged one
    with pytest.raises(SystemExit) as exited:
        grow_main([str(run), str(tmp_path / "grown"), "--op", "stack", "--layers", "4"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: checkpoint step_4 fails verification: {root / 'step_4' / SHARD}: missing (listed in manifest.json)\n"
    )
    assert not (tmp_path / "grown").exists()
    # pruning keeps the good one and never deletes the bad one
    assert prune_checkpoints(root, keep_last=1) == []
    assert (root / "step_4").is_dir() and (root / "step_2").is_dir()
    # nothing verifies: an error naming the newest problem, not a silent start from scratch
    (root / "step_2" / "bigtrain_state.json").write_text("{not json")
    with pytest.raises(BigtrainError, match=r"no checkpoint in .* verifies \(newest: step_4 fails verification"):
        newest_checkpoint(root)


def test_legacy_checkpoint_without_manifest_is_accepted_with_a_warning(finished: Path, tmp_path: Path) -> None:
    root = copy_run(finished, tmp_path) / "checkpoints"
    (root / "step_4" / "manifest.json").unlink()
    lines: list[str] = []
    assert newest_checkpoint(root, lines.append) == root / "step_4"
    assert lines == [
        f"bigtrain: warning: {root / 'step_4'} has no manifest.json (saved by an older bigtrain); using it unverified"
    ]
    (root / "step_4" / SHARD).unlink()  # still caught without a manifest: one shard per rank
    assert newest_checkpoint(root) == root / "step_2"


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_and_is_kept(
    finished: Path, demo_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    run = copy_run(finished, tmp_path)
    shard = run / "checkpoints" / "step_4" / SHARD
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 3])
    result = launch(run_args(demo_data, run, cache_dir), ranks=2)
    expected = (
        f"bigtrain: checkpoint step_4 fails verification: {shard}: {size // 3} bytes, manifest.json says {size} "
        "(truncated); resuming from step_2 instead"
    )
    assert expected in result.stdout.splitlines(), result.stdout[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["resumed_from"] == str(run / "checkpoints" / "step_2")
    assert info["status"] == "finished" and info["step"] == 4
    assert sorted(losses(run)) == [1, 2, 3, 4]
    # steps 3-4 trained again from step_2 give the losses the uninterrupted run logged
    assert losses(run)[4] == pytest.approx(losses(finished)[4], rel=1e-4)
    # the damaged copy is kept for inspection beside the new, good step_4
    aside = run / "checkpoints" / "step_4.failed-verification"
    assert (aside / SHARD).stat().st_size == size // 3
    assert checkpoint_problem(run / "checkpoints" / "step_4") is None


# --- failures during a save -------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 36 MiB tmpfs: room for one checkpoint of the tiny model (25 MiB over 2 ranks), not two."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a small tmpfs")
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=36m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_full_disk_keeps_the_previous_checkpoint(
    small_disk: Path, demo_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").symlink_to(small_disk)
    args = run_args(demo_data, out, cache_dir, **{"train.max_steps": 6})

    # stop (the default): step_4 does not fit; one line, exit 2, step_2 intact and still `latest`
    stopped = launch(args, ranks=2, check=False)
    assert stopped.returncode == 2, stopped.stderr[-3000:]
    err = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith(f"error: checkpoint {out / 'checkpoints' / 'step_4'} not saved ("), err
    assert err[0].endswith(f"); {out / 'checkpoints' / 'step_2'} is intact and still the newest"), err
    assert "No space left on device" in err[0] or "write failed" in err[0], err
    assert (small_disk / "latest").read_text() == "step_2"
    assert checkpoint_problem(small_disk / "step_2") is None
    assert sorted(p.name for p in small_disk.iterdir() if p.name.startswith(("step_", ".tmp"))) == ["step_2"]

    # retry: trains on past the failed save and tries again at the next interval (which fails as well
    # here, the disk stays full; the final save cannot be retried, so the run stops there)
    retried = launch([*args, "train.save_failure=retry"], ranks=2, check=False)
    assert retried.returncode == 2, retried.stderr[-3000:]
    warned = [line for line in retried.stderr.splitlines() if line.startswith("bigtrain: warning: checkpoint")]
    assert len(warned) == 1 and "step_4 not saved" in warned[0] and warned[0].endswith("next try at step 6"), warned
    assert any(
        line.startswith("error: checkpoint") and "step_6 not saved" in line for line in retried.stderr.splitlines()
    )
    assert sorted(losses(out)) == [1, 2, 3, 4, 5, 6]
    assert (small_disk / "latest").read_text() == "step_2"
    assert checkpoint_problem(small_disk / "step_2") is None


@pytest.mark.slow
def test_rank_killed_mid_save_resumes_from_the_previous_checkpoint(
    demo_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = [
        "--recipe",
        str(REPO / "recipes" / "demo.yaml"),
        *run_args(demo_data, out, cache_dir, **{"train.max_steps": 6}),
    ]
    cmd = [str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(free_port()), str(REPO / "tests" / "save_killer.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BIGTRAIN_KILL_SAVE": "1:4"}
    killed = subprocess.run([*cmd, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert killed.returncode != 0
    root = out / "checkpoints"
    half = root / ".tmp-step_4" / SHARD
    assert half.is_file(), killed.stdout[-2000:] + killed.stderr[-2000:]  # the rank died inside the save
    assert not (root / "step_4").exists()
    assert (root / "latest").read_text() == "step_2"

    resumed = launch(args[2:], ranks=2)
    assert "fails verification" not in resumed.stdout
    info = json.loads((out / "run.json").read_text())
    assert info["resumed_from"] == str(root / "step_2")
    assert info["status"] == "finished" and info["step"] == 6
    assert sorted(losses(out)) == [1, 2, 3, 4, 5, 6]
    assert not (root / ".tmp-step_4").exists()  # the partial copy was cleared by the next save of step 4
