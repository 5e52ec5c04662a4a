"""`bigtrain-submit RECIPE [key=value ...] --nodes N --gpus-per-node G [--partition P] [--dry-run]`: submit
every stage of a recipe to Slurm as its own job, chained with --dependency=afterok, and print the job ids.

Stages already finished (their export exists) are skipped, so resubmitting a partly finished pipeline
carries on. `--nodes MIN-MAX` lets Slurm start a stage on fewer nodes (a resumed stage converts its
checkpoint to the new number of ranks); a job whose rank or node is lost requeues itself up to
--max-restarts times, and one that reaches its time limit checkpoints and requeues itself up to
--max-time-requeues times (counted apart). CPU-only nodes (--gpus-per-node 0) get one rank per node, GPU nodes one rank per GPU, unless
--ntasks-per-node says otherwise. The last line printed is the pipeline's job ids (submitted now or
already queued), space-separated.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from bigtrain.cli.common import run_cli
from bigtrain.errors import BigtrainError
from bigtrain.pipeline.slurm import Launch, SlurmResources, plan_jobs, submit_jobs


def parse_nodes(text: str) -> tuple[int | None, int]:
    """`N` -> (None, N); `MIN-MAX` -> (MIN, MAX)."""
    low, sep, high = text.partition("-")
    try:
        return (int(low), int(high)) if sep else (None, int(low))
    except ValueError:
        raise BigtrainError(f"--nodes {text}: a number of nodes N, or a range MIN-MAX") from None


def submit(args: argparse.Namespace) -> int:
    min_nodes, nodes = parse_nodes(args.nodes)
    res = SlurmResources(
        nodes=nodes,
        min_nodes=min_nodes,
        max_restarts=args.max_restarts,
        max_time_requeues=args.max_time_requeues,
        gpus_per_node=args.gpus_per_node,
        ntasks_per_node=args.ntasks_per_node,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        time=args.time,
        account=args.account,
        signal_margin_s=args.signal_margin,
        sbatch_args=tuple(args.sbatch_arg),
    )
    jobs = plan_jobs(args.recipe, args.overrides, res, Launch.detect(), args.prepare_parts, args.prepare_cpus)
    if args.dry_run:
        for job in jobs:
            state = "finished, would be skipped" if job.finished else f"would be written to {job.script_path}"
            print(f"# ===== stage {job.stage}: {state}")
            if not job.finished:
                print(job.script)
        return 0
    results = submit_jobs(jobs)
    for job, job_id, what in results:
        print(f"{job.stage}: {'job ' + job_id if job_id else '-'} ({what})")
    print(" ".join(job_id for _, job_id, what in results if job_id and what != "finished, skipped"))
    return 0


def main(argv: list[str] | None = None) -> NoReturn:
    p = argparse.ArgumentParser(prog="bigtrain-submit", description=__doc__.splitlines()[0])
    p.add_argument("recipe", help="a recipe YAML (flat or with stages:)")
    p.add_argument("overrides", nargs="*", help="key=value overrides (dotted recipe paths), for every stage")
    p.add_argument(
        "--nodes",
        default="1",
        help="nodes per stage job, N or MIN-MAX: Slurm may start it on as few as MIN (default 1)",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="requeues after a lost rank or node, per job (default 3; time-limit requeues are counted apart)",
    )
    p.add_argument(
        "--max-time-requeues",
        type=int,
        default=1000,
        help="requeues after the time limit, per job (default 1000; 3 weeks on a 4-hour partition is ~126)",
    )
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; 0: CPU-only nodes (default)")
    p.add_argument("--ntasks-per-node", type=int, default=None, help="ranks per node (default: GPUs, or 1)")
    p.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per rank (default: the site's, often 1)")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--time", default=None, help="time limit per stage job, Slurm format (e.g. 2-00:00:00)")
    p.add_argument(
        "--signal-margin",
        type=int,
        default=300,
        help="seconds before the time limit at which the job checkpoints and requeues itself (default 300)",
    )
    p.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra sbatch option, repeatable (e.g. --sbatch-arg=--exclusive)",
    )
    p.add_argument(
        "--prepare-parts",
        type=int,
        default=None,
        metavar="N",
        help="tokenise the data first in an array of N jobs (slurm/prepare.sbatch); stage 1 waits for all of them",
    )
    p.add_argument("--prepare-cpus", type=int, default=None, help="CPUs (worker processes) per preparation task")
    p.add_argument("--dry-run", action="store_true", help="print the job scripts instead of submitting")
    args = p.parse_intermixed_args(argv)
    run_cli(lambda: submit(args))


if __name__ == "__main__":
    main()
