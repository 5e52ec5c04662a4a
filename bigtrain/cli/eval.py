"""`bigtrain-eval RUN_OR_HF_DIR --tasks shakespeare_next_line,hellaswag,... [--limit N]`: downstream scores.

Runs EleutherAI's lm-eval on the export (an HF dir, a run's `hf/`, or a bigtrain-run's last stage) and
writes the scores into the run: `eval/downstream.json` and TensorBoard (`downstream/<task>`), where
`bigtrain-report` picks them up. `shakespeare_next_line` is the offline demo task; other names are lm-eval's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NoReturn

from bigtrain.cli.common import run_cli
from bigtrain.errors import BigtrainError


def evaluate(args: argparse.Namespace) -> int:
    from bigtrain.evaluation.downstream import resolve_model_dir, score, write_scores

    tasks = [t for t in args.tasks.split(",") if t]
    if args.limit is not None and args.limit < 1:
        raise BigtrainError(f"--limit {args.limit}: must be >= 1")
    model_dir, run_dir = resolve_model_dir(Path(args.run))
    info = run_dir / "run.json"
    step = json.loads(info.read_text()).get("step") if info.is_file() else None
    result = score(model_dir, tasks, args.limit, args.batch_size, args.device)
    path = write_scores(run_dir, result, step)
    for name, value in result["scores"].items():
        print(f"{name:<28} {value:.4f}")
    print(f"bigtrain-eval: {path}")
    return 0


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="bigtrain-eval", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="an HF export dir, a run's output_dir, or a bigtrain-run root")
    parser.add_argument("--tasks", default="shakespeare_next_line", help="comma-separated lm-eval task names")
    parser.add_argument("--limit", type=int, default=None, help="at most this many items per task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args(argv)
    run_cli(lambda: evaluate(args))


if __name__ == "__main__":
    main()
