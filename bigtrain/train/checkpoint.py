"""Training checkpoints: DeepSpeed shards + bigtrain's client state, written atomically.

Layout: `output_dir/checkpoints/step_<N>/` holds DeepSpeed's files (every rank's ZeRO shards), the
model `config.json`, `rng/rank_<r>.pt` and, written last, `bigtrain_state.json`. A save goes to a
hidden `.tmp-step_<N>` directory that is renamed once every rank has finished, and `latest` moves
after that; a crash at any point leaves the previous checkpoint usable. Only directories holding
`bigtrain_state.json` count as checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigtrain.ckpt.atomic import write_text_atomic
from bigtrain.train.distributed import World, barrier

STATE_FILE = "bigtrain_state.json"
LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d+)$")


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


def newest_checkpoint(root: Path) -> Path | None:
    done = list_checkpoints(root)
    return done[-1][1] if done else None


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


def save_checkpoint(
    engine: Any, output_dir: str | Path, state: TrainState, model_config: Any, world: World, keep_last: int
) -> Path:
    root = checkpoint_root(output_dir)
    tag = f"step_{state.step}"
    tmp_tag = f".tmp-{tag}"
    tmp = root / tmp_tag
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # debris of an earlier crash mid-save
        root.mkdir(parents=True, exist_ok=True)
    barrier()
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state={"bigtrain": asdict(state)}, save_latest=False)
    (tmp / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank_{world.rank}.pt")
    barrier()
    final = root / tag
    if world.is_main:
        model_config.save_pretrained(tmp)
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        if final.exists():  # the same step saved again (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_text_atomic(root / LATEST, tag)
        for _, old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(engine: Any, ckpt: Path, world: World) -> TrainState:
    """Restore model, optimizer, LR schedule and RNG states from `ckpt`. A checkpoint saved by another
    number of ranks is converted once (`reshard.py`, next to it in `universal/`) and loaded from there;
    rank-local RNG then restarts from `seed + step` on every rank (there is no rank to rank mapping)."""
    state = read_state(ckpt)
    if state.world_size != world.size:
        from bigtrain.train.reshard import convert_on_main, load_universal

        udir, seconds = convert_on_main(ckpt, world, engine.train_batch_size())
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
