"""Checkpoint save time and its share of training time: the demo recipe (one rank, ZeRO-3) trained for
`--steps` steps with a save every `--every`, each save timed end to end (DeepSpeed shards, RNG, config,
manifest, verification, rename, pruning). The share is given for the demo's own `save_every` (40):
save / (40 x step + save).

    .venv/bin/python tools/bench/bench_checkpoint.py --steps 40 --every 10
    .venv/bin/python tools/bench/bench_checkpoint.py --steps 40 --every 10 --checksums   # SHA-256 too
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10, help="save every N steps (the demo saves every 40)")
    p.add_argument("--demo-every", type=int, default=40, help="save_every the share is reported for")
    p.add_argument("--checksums", action="store_true", help="train.checkpoint_checksums=true")
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.chdir(REPO)

    from bigtrain.config import load_recipe
    from bigtrain.train import loop

    saves: list[float] = []
    real_save = loop.save_checkpoint

    def timed_save(*a, **kw):
        t0 = time.perf_counter()
        result = real_save(*a, **kw)
        saves.append(time.perf_counter() - t0)
        return result

    loop.save_checkpoint = timed_save
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        out = Path(tmp) / "run"
        overrides = [
            f"output_dir={out}",
            f"train.max_steps={args.steps}",
            f"train.save_every={args.every}",
            "train.eval_every=0",
            "train.log_every=1",
            "train.progress=false",
            "train.export=false",
            f"train.checkpoint_checksums={str(args.checksums).lower()}",
        ]
        loop.train(load_recipe(REPO / "recipes" / "demo.yaml", overrides))
        step_times = [
            json.loads(line)["step_time_s"] for line in (out / "metrics.jsonl").read_text().splitlines()[2:] if line
        ]
        ckpt = max((out / "checkpoints").glob("step_*"), key=lambda d: int(d.name.split("_")[1]))
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    step = statistics.median(step_times)
    save = statistics.median(saves)
    share = save / (args.demo_every * step + save)
    print(
        json.dumps(
            {
                "saves": len(saves),
                "save_s_each": [round(s, 3) for s in saves],
                "save_s_median": round(save, 3),
                "checkpoint_mib": round(size / 2**20, 1),
                "step_s_median": round(step, 3),
                "share_at_save_every": {str(args.demo_every): round(share, 4)},
                "checksums": args.checksums,
                "load_avg_1min": os.getloadavg()[0],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
