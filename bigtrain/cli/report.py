"""`bigtrain-report RUN... [--baseline RUN] --out DIR`: plots, `report.md` and `report.json` for runs.

A RUN is a trained run's `output_dir` or a `bigtrain-run` root (its stages are stitched into one curve).
With `--baseline`, every run gets the tokens and FLOPs it needs to reach the baseline's final held-out loss
and the saving in percent. With `--frontier`, the FLOPs a frontier of complete baseline schedules needs for
the run's final loss, against the run's own (docs/results.md: the protocol). The baseline is added to the runs if it is not among them.
A run grown from another run's checkpoint counts that run's compute too (`--own-compute`: only its own).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NoReturn

from bigtrain.cli.common import run_cli
from bigtrain.errors import BigtrainError


def report(args: argparse.Namespace) -> int:
    from bigtrain.ckpt.atomic import write_text_atomic
    from bigtrain.report.plots import write_plots
    from bigtrain.report.runs import load_run
    from bigtrain.report.tables import build_report, format_markdown

    paths = [Path(p) for p in args.runs]
    for extra in [args.baseline, *(args.frontier or [])]:
        if extra and Path(extra).resolve() not in {p.resolve() for p in paths}:
            paths.append(Path(extra))
    runs = [load_run(p, inherited=not args.own_compute) for p in paths]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # two runs/<x>/main: name them by their parent too
        for r in runs:
            r.name = f"{r.path.parent.name}/{r.path.name}"
    baseline = None
    if args.baseline:
        baseline = next(r for r in runs if r.path.resolve() == Path(args.baseline).resolve())
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BigtrainError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(runs, out)
    by_path = {r.path.resolve(): r for r in runs}
    frontier = [by_path[Path(f).resolve()] for f in args.frontier or []]
    result = build_report(runs, baseline, frontier)
    result["plots"] = [p.name for p in plots]
    write_text_atomic(out / "report.json", json.dumps(result, indent=2))
    write_text_atomic(out / "report.md", format_markdown(result, [p.name for p in plots]))
    print(f"bigtrain-report: {out / 'report.md'} ({len(runs)} runs, {len(plots)} plots)")
    return 0


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="bigtrain-report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (a run's output_dir, or a bigtrain-run root)")
    parser.add_argument("--baseline", help="the run the others are measured against")
    parser.add_argument(
        "--frontier",
        nargs="+",
        metavar="RUN",
        help="baseline runs at several budgets, each a complete schedule (seeds: NAME-seed<N>); every run's "
        "saving is read off this frontier",
    )
    parser.add_argument(
        "--own-compute",
        action="store_true",
        help="count only each run's own training; by default a run that grew another run's checkpoint "
        "(init_from) also counts that run's tokens, FLOPs and wall time",
    )
    parser.add_argument("--out", required=True, help="directory for the PNGs, report.md and report.json")
    args = parser.parse_args(argv)
    run_cli(lambda: report(args))


if __name__ == "__main__":
    main()
