"""A torch.profiler trace of bigtrain training steps, through the real entry point (bigtrain.cli.train).

    python tools/gpu/profile_step.py --out $OUT/profile [key=value ...]     # recipe overrides

Counts optimizer steps at DeepSpeed's engine.step() on a gradient-accumulation boundary: waits --wait
steps (start-up, allocator warm-up), warms the profiler up one step, records --active steps. Writes
top_kernels.txt (device time, then CPU time: the top ops), a Chrome trace (trace.json.gz) and
summary.json (total device time of the recorded steps by op).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--wait", type=int, default=2)
    p.add_argument("--active", type=int, default=3)
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("overrides", nargs="*", help="recipe key=value overrides (bigtrain/train.py's)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch
    from deepspeed.runtime.engine import DeepSpeedEngine
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    prof = profile(
        activities=activities,
        schedule=schedule(wait=args.wait, warmup=1, active=args.active, repeat=1),
        record_shapes=True,
    )
    original_step = DeepSpeedEngine.step

    def step(self: DeepSpeedEngine, *a: object, **k: object) -> object:
        boundary = self.is_gradient_accumulation_boundary()
        result = original_step(self, *a, **k)
        if boundary:
            prof.step()
        return result

    DeepSpeedEngine.step = step  # type: ignore[method-assign]
    total = args.wait + 1 + args.active + 1
    from bigtrain.cli.train import main as train_main

    overrides = [
        f"train.max_steps={total}",
        "train.log_every=1",
        "train.export=false",
        "train.progress=false",
        *args.overrides,
    ]
    with prof:
        rc = train_main(["--recipe", str(REPO / "recipes" / "demo.yaml"), *overrides])
    events = prof.key_averages()
    device_key = (
        next(
            (k for k in ("self_device_time_total", "self_cuda_time_total") if hasattr(events[0], k)),
            "self_cpu_time_total",
        )
        if events
        else "self_cpu_time_total"
    )
    sort_key = device_key if torch.cuda.is_available() else "self_cpu_time_total"
    tables = [f"sorted by {sort_key} over {args.active} steps", events.table(sort_by=sort_key, row_limit=args.rows)]
    if torch.cuda.is_available():
        tables += ["sorted by self_cpu_time_total", events.table(sort_by="self_cpu_time_total", row_limit=args.rows)]
    (args.out / "top_kernels.txt").write_text("\n\n".join(tables) + "\n")
    top = sorted(events, key=lambda e: getattr(e, sort_key), reverse=True)[: args.rows]
    summary = {
        "sort_key": sort_key,
        "active_steps": args.active,
        "top": [{"name": e.key, "us": float(getattr(e, sort_key)), "calls": e.count} for e in top],
        "total_us": float(sum(getattr(e, sort_key) for e in events)),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    trace = args.out / "trace.json"
    prof.export_chrome_trace(str(trace))
    with trace.open("rb") as src, gzip.open(str(trace) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    trace.unlink()
    print((args.out / "top_kernels.txt").read_text()[:6000])
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
