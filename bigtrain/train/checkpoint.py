"""Training checkpoints: DeepSpeed shards + bigtrain's client state, written atomically.

Layout: `output_dir/checkpoints/step_<N>/` holds DeepSpeed's files (every rank's ZeRO shards), the
model `config.json`, `rng/rank_<r>.pt`, `bigtrain_state.json` and, written last, `manifest.json`
(files and sizes, checksums with `train.checkpoint_checksums`, each rank hashing the files it wrote
itself). A save goes to a hidden
`.tmp-step_<N>` directory that is renamed once every rank has finished and the manifest checks out,
`latest` moves after that, and old checkpoints are pruned only then; a crash or a failed write at any
point leaves the previous checkpoint usable. Only directories holding `bigtrain_state.json` count as
checkpoints, and resume takes the newest that verifies (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from bigtrain.ckpt.atomic import write_text_atomic
from bigtrain.ckpt.manifest import (
    MANIFEST,
    checksum_problem,
    checksummed_files,
    has_manifest,
    manifest_problem,
    relative_files,
    sha256,
    write_manifest,
)
from bigtrain.config import TrainConfig
from bigtrain.errors import BigtrainError
from bigtrain.train.distributed import World, barrier, broadcast_object

STATE_FILE = "bigtrain_state.json"
LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d+)$")
# a rank's own files: DeepSpeed's ZeRO shards (`[bf16_]zero_pp_rank_<r>_mp_rank_00_*.pt`), bigtrain's RNG state
RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_|^rng/rank_(\d+)\.pt$")


@dataclass
class TrainState:
    """Where training stands; everything needed to continue exactly."""

    step: int = 0  # optimizer steps taken == global batches consumed (the data position)
    tokens: int = 0
    world_size: int = 1
    seed: int = 0
    finished: bool = False
    # the data position per source (bigtrain.data.sampler: position); a pure function of step, recorded so
    # a resume can be checked and inspected
    data: dict = field(default_factory=dict)


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = STEP_DIR.match(d.name)
        if m and (d / STATE_FILE).is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def read_state(ckpt: Path) -> TrainState:
    return TrainState(**json.loads((ckpt / STATE_FILE).read_text()))


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def checkpoint_problem(ckpt: Path, checksums: bool = True) -> str | None:
    """None when `ckpt` verifies, else one line naming the file that does not: the state file must parse,
    every file in the manifest must be there with its size (and checksum, when recorded and `checksums`),
    and every torch file must open (its zip directory is at the end: a cut-off file has none). A
    checkpoint without a manifest (saved before manifests existed) is checked for its state file and one
    non-empty optimizer shard per rank only."""
    state_file = ckpt / STATE_FILE
    try:
        state = read_state(ckpt)
    except (OSError, ValueError, TypeError) as e:
        return f"{state_file}: unreadable ({type(e).__name__}: {e})"
    if has_manifest(ckpt):
        problem = manifest_problem(ckpt, checksums)
        if problem:
            return problem
    else:
        shards = sorted(ckpt.glob("*_optim_states.pt"))
        if len(shards) < state.world_size:
            return f"{ckpt}: {len(shards)} *_optim_states.pt files for {state.world_size} ranks (a shard is missing)"
    for f in sorted(ckpt.glob("*.pt")) + sorted((ckpt / "rng").glob("*.pt")):
        try:
            with zipfile.ZipFile(f):
                pass
        except (OSError, zipfile.BadZipFile) as e:
            return f"{f}: not a readable torch file ({e})"
    return None


def newest_checkpoint(
    root: Path,
    report: Callable[[str], None] | None = None,
    checksums: bool = True,
    verify: Callable[[Path], str | None] | None = None,
    found: list[tuple[int, Path]] | None = None,
) -> Path | None:
    """The newest checkpoint that verifies (`verify`, default `checkpoint_problem`; among `found`, default
    the checkpoints in `root`). Each newer one that does not is reported (one line naming the file) and
    left where it is, for inspection; checkpoints that exist but none verifies are an error, not a silent
    start from scratch."""
    done = list_checkpoints(root) if found is None else found
    verify = verify or (lambda ckpt: checkpoint_problem(ckpt, checksums))
    skipped = []
    for _, ckpt in reversed(done):
        problem = verify(ckpt)
        if problem is None:
            for line in skipped:
                _say(report, f"bigtrain: checkpoint {line}; resuming from {ckpt.name} instead")
            if not has_manifest(ckpt):
                _say(
                    report,
                    f"bigtrain: warning: {ckpt} has no {MANIFEST} (saved by an older bigtrain); using it unverified",
                )
            return ckpt
        skipped.append(f"{ckpt.name} fails verification: {problem}")
    if done:
        raise BigtrainError(
            f"no checkpoint in {root} verifies (newest: {skipped[0]}); repair it, or move the checkpoints away to start over"
        )
    return None


def checksum_shares(files: dict[str, int], world_size: int) -> list[list[str]]:
    """Which rank hashes which file at resume: a rank's own files where that rank exists (likely on its
    node, in its page cache), the rest (rank 0's, and a larger world's ranks') to whichever rank has the
    fewest bytes so far, largest first. Every file exactly once."""
    shares: list[list[str]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    rest = []
    for name, size in files.items():
        m = RANK_FILE.search(name)
        owner = int(m.group(1) or m.group(2)) if m else None
        if owner is not None and owner < world_size:
            shares[owner].append(name)
            load[owner] += size
        else:
            rest.append(name)
    for name in sorted(rest, key=lambda n: -files[n]):
        r = load.index(min(load))
        shares[r].append(name)
        load[r] += files[name]
    return shares


def resume_checkpoint(root: Path, world: World) -> Path | None:
    """`newest_checkpoint` on every rank at once: rank 0 lists the checkpoints and checks each one's
    files and sizes, and, where the manifest records checksums, every rank hashes its share of the files
    in parallel (`checksum_shares`; at 8B on 64 ranks ~1.5 GB each instead of 96 GB on rank 0). Every rank
    reaches the same answer; rank 0 reports."""
    if not dist.is_initialized():
        return newest_checkpoint(root, print)
    found = broadcast_object(list_checkpoints(root) if world.is_main else None)

    def verify(ckpt: Path) -> str | None:
        problem = broadcast_object(checkpoint_problem(ckpt, checksums=False) if world.is_main else None)
        if problem is not None:
            return problem
        share = checksum_shares(checksummed_files(ckpt), world.size)[world.rank]
        problems = [p for p in _gather(checksum_problem(ckpt, share) if share else None) if p]
        return problems[0] if problems else None

    return newest_checkpoint(root, print if world.is_main else None, verify=verify, found=found)


def _say(report: Callable[[str], None] | None, line: str) -> None:
    if report:
        report(line)


def prune_checkpoints(root: Path, keep_last: int) -> list[Path]:
    """Delete checkpoints older than the `keep_last` newest that verify (sizes, no checksums). One that
    fails verification is never deleted: it is reported at resume and kept for inspection."""
    good = [d for _, d in list_checkpoints(root) if checkpoint_problem(d, checksums=False) is None]
    removed = []
    for old in good[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


def _set_aside(ckpt: Path) -> Path:
    """Move a checkpoint that fails verification out of the way of a new save of the same step."""
    for i in range(1000):
        aside = ckpt.with_name(f"{ckpt.name}.failed-verification" + (f".{i}" if i else ""))
        if not aside.exists():
            os.replace(ckpt, aside)
            return aside
    raise BigtrainError(f"{ckpt}: too many failed copies next to it; clean up {ckpt.parent}")


def _describe(e: BaseException, where: Path) -> str:
    """One line for a failed write. torch reports a full disk as an opaque RuntimeError ("unexpected pos
    576 vs 534"), so the free space of the filesystem is what tells."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}{': ' + str(e.filename) if e.filename else ''}"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return f"write failed: {text}"
    if free < 1 << 20:
        return f"No space left on device: {where} ({free >> 10} KiB free; torch: {text})"
    return f"write failed: {text} ({free >> 20} MiB free on {where})"


def writer_rank(name: str, world_size: int) -> int:
    """The rank that writes the checkpoint file `name` (relative to the checkpoint): a rank's ZeRO shards
    and RNG state are its own; the rest (DeepSpeed's unpartitioned model states and recovery script,
    bigtrain's config and state) rank 0's."""
    m = RANK_FILE.search(name)
    rank = int(m.group(1) or m.group(2)) if m else 0
    return rank if rank < world_size else 0


def own_checksums(directory: Path, world: World) -> dict[str, str]:
    """SHA-256 of the files this rank wrote into `directory`: every rank reads back its own share at once
    (likely still in its page cache, on its own node), instead of rank 0 reading the whole checkpoint."""
    return {n: sha256(directory / n) for n in relative_files(directory) if writer_rank(n, world.size) == world.rank}


def _gather(value: Any) -> list[Any]:
    """Every rank's `value`, on every rank."""
    if not dist.is_initialized():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def save_checkpoint(
    engine: Any,
    output_dir: str | Path,
    state: TrainState,
    model_config: Any,
    world: World,
    train: TrainConfig,
    can_retry: bool = True,
) -> Path | None:
    """Save `state` as `checkpoints/step_<N>`: every rank writes into `.tmp-step_<N>` (and, with
    `train.checkpoint_checksums`, hashes what it wrote), rank 0 adds the config, state and (last) the
    manifest with every rank's checksums, checks it, renames the directory into place, moves `latest`
    and only then prunes. A failed save (no space, an I/O error on any rank) removes the partial copy
    and leaves the previous checkpoint and `latest` as they were; then `train.save_failure` decides:
    `stop` raises one line, `retry` warns, returns None and the next interval tries again (the final
    save and a save on a signal always stop, nothing comes after them)."""
    root = checkpoint_root(output_dir)
    tag = f"step_{state.step}"
    tmp, final = root / f".tmp-{tag}", root / tag
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # debris of an earlier crash mid-save
        root.mkdir(parents=True, exist_ok=True)
    barrier()
    gathered = _gather(_write_shards(engine, root, tmp, state, world, train))
    outcome = next((e for e, _ in gathered if e), None)
    checksums = {name: digest for _, part in gathered for name, digest in part.items()}
    if world.is_main:
        if outcome is None:
            outcome = _publish(tmp, final, state, model_config, train, checksums)
        if outcome is None:
            prune_checkpoints(root, train.keep_last)
        else:
            shutil.rmtree(tmp, ignore_errors=True)  # free the space; the previous checkpoint stays
    outcome = broadcast_object(outcome) if dist.is_initialized() else outcome
    if outcome is None:
        return final
    return _after_failure(outcome, root, final, state, world, train, can_retry)


def _write_shards(
    engine: Any, root: Path, tmp: Path, state: TrainState, world: World, train: TrainConfig
) -> tuple[str | None, dict[str, str]]:
    """Every rank: DeepSpeed's shards and this rank's RNG state into `tmp` (and their checksums).
    Returns (this rank's error, its checksums)."""
    sums: dict[str, str] = {}
    in_deepspeed = True
    try:
        engine.save_checkpoint(str(root), tag=tmp.name, client_state={"bigtrain": asdict(state)}, save_latest=False)
        in_deepspeed = False
        (tmp / "rng").mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), tmp / "rng" / f"rank_{world.rank}.pt")
        if train.checkpoint_checksums:
            sums = own_checksums(tmp, world)
    except (OSError, RuntimeError) as e:  # torch reports a failed write as RuntimeError
        if in_deepspeed:
            # DeepSpeed's writes come after all its collectives but two, which a failed write skips: ZeRO-3's
            # re-gather of persistent parameters and the closing barrier. Meet the ranks that did write there.
            if hasattr(engine.optimizer, "checkpoint_event_epilogue"):
                engine.optimizer.checkpoint_event_epilogue()
            barrier()
        return f"rank {world.rank}: {_describe(e, root)}", sums
    return None, sums


def _publish(
    tmp: Path, final: Path, state: TrainState, model_config: Any, train: TrainConfig, checksums: dict[str, str]
) -> str | None:
    """Rank 0, every rank's shards written: config, state and (last) the manifest, checked; then the rename
    into place and `latest`. Returns the error, if any."""
    root = final.parent
    try:
        model_config.save_pretrained(tmp)
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        write_manifest(tmp, checksums=train.checkpoint_checksums, known=checksums)
        problem = checkpoint_problem(tmp, checksums=False)
        if problem:
            raise OSError(problem)
        if final.exists():
            # A step is saved once per process, so an existing step_<N> is one that resume passed over: it
            # failed verification, possibly by checksum alone, which a size check here would not see. It
            # is kept for inspection, never deleted.
            print(
                f"bigtrain: {final} was passed over at resume (it fails verification); moved to {_set_aside(final).name}"
            )
        os.replace(tmp, final)
        write_text_atomic(root / LATEST, final.name)
    except (OSError, RuntimeError) as e:
        return f"rank 0: {_describe(e, root)}"
    return None


def _after_failure(
    outcome: str, root: Path, final: Path, state: TrainState, world: World, train: TrainConfig, can_retry: bool
) -> None:
    """`train.save_failure`: `retry` warns and returns (the next interval tries again), `stop` raises."""
    try:
        previous = newest_checkpoint(root, checksums=False)
    except BigtrainError:
        previous = None
    kept = f"{previous} is intact and still the newest" if previous else "there is no earlier checkpoint"
    message = f"checkpoint {final} not saved ({outcome}); {kept}"
    if train.save_failure == "retry" and can_retry and not state.finished:
        if world.is_main:
            nxt = state.step + train.save_every if train.save_every else "the end"
            print(f"bigtrain: warning: {message}; training on, next try at step {nxt}", file=sys.stderr, flush=True)
        return None
    raise BigtrainError(message)


def load_checkpoint(engine: Any, ckpt: Path, world: World) -> TrainState:
    """Restore model, optimizer, LR schedule and RNG states from `ckpt`. A checkpoint saved by another
    number of ranks is converted once (`reshard.py`, next to it in `universal/`) and loaded from there;
    rank-local RNG then restarts from `seed + step` on every rank (there is no rank to rank mapping)."""
    state = read_state(ckpt)
    if state.world_size != world.size:
        from bigtrain.train.reshard import convert_distributed, load_universal

        udir, seconds = convert_distributed(ckpt, world, engine.train_batch_size())
        if world.is_main:
            how = f"converted in {seconds:.1f}s" if seconds else "converted earlier"
            print(
                f"bigtrain: {ckpt} was saved by {state.world_size} ranks; resuming on {world.size} from {udir} ({how})"
            )
        load_universal(engine, udir, world)
        reseed(state.seed + state.step)
        return state
    path, _ = engine.load_checkpoint(
        str(ckpt.parent), tag=ckpt.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {ckpt}")
    rng_file = ckpt / "rng" / f"rank_{world.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state


def reseed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
