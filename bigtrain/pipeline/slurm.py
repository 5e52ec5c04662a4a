"""Slurm submission of a recipe: one batch job per stage, chained with `--dependency=afterok`.

Each stage job first prepares its stage on the job's first node (`bigtrain-run RECIPE --prepare-stage
NAME`: the growth step from the previous stage's hand-over (its last training checkpoint), and a flat
`stage.yaml`), then runs
`slurm/train.sbatch` on that flat recipe across all nodes, so one script holds the launch, signal and
requeue logic for direct `sbatch` use and for pipelines alike. A flat recipe is a single job that runs
`slurm/train.sbatch` straight away. Stages whose export exists are skipped, so resubmitting a partly
finished pipeline carries on where it stopped; a stage already queued by an earlier submission (found
by its `--comment`) is chained after rather than submitted twice.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bigtrain.ckpt.atomic import write_text_atomic
from bigtrain.config import load_recipe
from bigtrain.errors import BigtrainError
from bigtrain.pipeline.stages import Stage, resolve_stages, stage_finished

COMMENT_PREFIX = "bigtrain:"


@dataclass(frozen=True)
class SlurmResources:
    """What each stage job asks Slurm for."""

    nodes: int = 1  # the most nodes a stage job runs on
    min_nodes: int | None = None  # fewer Slurm may start it on (`--nodes MIN-MAX`); None: exactly `nodes`
    gpus_per_node: int = 0
    ntasks_per_node: int | None = None  # ranks per node; None: one per GPU, or one per CPU-only node
    cpus_per_task: int | None = None  # CPUs per rank; None: the site's default (often 1)
    partition: str | None = None
    time: str | None = None  # Slurm's formats, e.g. "2-00:00:00"
    account: str | None = None
    signal_margin_s: int = 300  # SIGUSR1 this long before the time limit: checkpoint and requeue
    max_restarts: int = 3  # requeues after a lost rank or node (time-limit requeues are counted apart)
    max_time_requeues: int = 1000  # requeues after the time-limit signal (3 weeks of 4-hour jobs: ~126)
    sbatch_args: tuple[str, ...] = ()  # anything else, passed through verbatim (e.g. "--exclusive")

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise BigtrainError(f"--nodes {self.nodes}: must be >= 1")
        if self.min_nodes is not None and not 1 <= self.min_nodes <= self.nodes:
            raise BigtrainError(f"--nodes {self.min_nodes}-{self.nodes}: need 1 <= MIN <= MAX")
        if self.max_restarts < 0:
            raise BigtrainError(f"--max-restarts {self.max_restarts}: must be >= 0")
        if self.max_time_requeues < 0:
            raise BigtrainError(f"--max-time-requeues {self.max_time_requeues}: must be >= 0")
        if self.gpus_per_node < 0:
            raise BigtrainError(f"--gpus-per-node {self.gpus_per_node}: must be >= 0")
        if self.ntasks_per_node is not None and self.ntasks_per_node < 1:
            raise BigtrainError(f"--ntasks-per-node {self.ntasks_per_node}: must be >= 1")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise BigtrainError(f"--cpus-per-task {self.cpus_per_task}: must be >= 1")
        if self.signal_margin_s < 0:
            raise BigtrainError(f"--signal-margin {self.signal_margin_s}: must be >= 0 seconds")

    @property
    def elastic(self) -> bool:
        return self.min_nodes is not None and self.min_nodes < self.nodes

    @property
    def ranks_per_node(self) -> int:
        return self.ntasks_per_node or max(self.gpus_per_node, 1)


@dataclass(frozen=True)
class StageJob:
    """One stage of the pipeline and the batch script that runs it."""

    stage: str
    job_name: str
    comment: str  # identifies the stage's job in the queue: bigtrain:<stage output dir>
    finished: bool
    script: str
    script_path: Path  # where the script is kept next to the logs when submitted


@dataclass(frozen=True)
class Launch:
    """Where the job finds bigtrain: the repository (for slurm/train.sbatch) and the Python to run."""

    home: Path
    python: str
    workdir: Path = field(default_factory=Path.cwd)

    @classmethod
    def detect(cls) -> Launch:
        home = Path(os.environ.get("BIGTRAIN_HOME") or Path(__file__).resolve().parents[2])
        if not (home / "slurm" / "train.sbatch").is_file():
            raise BigtrainError(
                f"{home / 'slurm' / 'train.sbatch'}: not found; install bigtrain editable (pip install -e) "
                "or set BIGTRAIN_HOME to the repository"
            )
        return cls(home=home, python=os.environ.get("BIGTRAIN_PYTHON") or sys.executable)


def sbatch_directives(res: SlurmResources, job_name: str, comment: str, log_dir: Path, workdir: Path) -> list[str]:
    opts = [
        f"--job-name={job_name}",
        f"--comment={comment}",
        f"--nodes={res.min_nodes}-{res.nodes}" if res.elastic else f"--nodes={res.nodes}",
        f"--ntasks-per-node={res.ranks_per_node}",
    ]
    if res.gpus_per_node:
        opts.append(f"--gpus-per-node={res.gpus_per_node}")
    if res.cpus_per_task:
        opts.append(f"--cpus-per-task={res.cpus_per_task}")
    if res.partition:
        opts.append(f"--partition={res.partition}")
    if res.account:
        opts.append(f"--account={res.account}")
    if res.time:
        opts.append(f"--time={res.time}")
    opts += [
        f"--chdir={workdir}",
        f"--output={log_dir}/%x-%j.out",
        "--open-mode=append",  # a requeued job goes on in the same log
        "--requeue",
        f"--signal=B:USR1@{res.signal_margin_s}",
        *res.sbatch_args,
    ]
    return [f"#SBATCH {opt}" for opt in opts]


def _quote(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def render_stage_script(
    recipe_path: Path,
    overrides: list[str],
    stage: Stage,
    staged: bool,
    res: SlurmResources,
    launch: Launch,
    job_name: str,
    comment: str,
    log_dir: Path,
    position: str,
) -> str:
    """The batch script for one stage. Pure: same inputs, same text (so --dry-run shows what runs)."""
    train_sbatch = launch.home / "slurm" / "train.sbatch"
    lines = [
        "#!/bin/bash",
        *sbatch_directives(res, job_name, comment, log_dir, launch.workdir),
        f"# bigtrain pipeline {recipe_path}: stage {stage.name!r} ({position}), written by bigtrain-submit.",
        "set -euo pipefail",
        f"export BIGTRAIN_HOME={shlex.quote(str(launch.home))}",
        f"export BIGTRAIN_PYTHON=${{BIGTRAIN_PYTHON:-{shlex.quote(launch.python)}}}",
        f"export BIGTRAIN_MAX_FAILURE_RESTARTS=${{BIGTRAIN_MAX_FAILURE_RESTARTS:-{res.max_restarts}}}",
        f"export BIGTRAIN_MAX_TIME_REQUEUES=${{BIGTRAIN_MAX_TIME_REQUEUES:-{res.max_time_requeues}}}",
    ]
    if not staged:
        lines.append(f"exec bash {shlex.quote(str(train_sbatch))} {_quote([str(recipe_path), *overrides])}")
        return "\n".join(lines) + "\n"
    prepare = [str(recipe_path), *overrides, "--prepare-stage", stage.name]
    lines += [
        "# The growth step runs once, here on the first node; a time-limit signal during it requeues after.",
        "EARLY_SIGNAL=0",
        "trap 'EARLY_SIGNAL=1' USR1",
        'PREPARE_LOG=$(mktemp "${TMPDIR:-/tmp}/bigtrain-prepare.XXXXXX")',
        "status=0",
        '"$BIGTRAIN_PYTHON" -c \'import sys; sys.argv[0] = "bigtrain-run"; '
        "from bigtrain.cli.run import main; main()' \\",
        f'  {_quote(prepare)} >"$PREPARE_LOG" || status=$?',
        'cat "$PREPARE_LOG"',
        'STAGE_RECIPE=$(tail -n 1 "$PREPARE_LOG")',
        'rm -f "$PREPARE_LOG"',
        'if [ "$status" -ne 0 ]; then echo "bigtrain: preparing stage failed (exit $status)" >&2; exit "$status"; fi',
        # a time-limit requeue: its line counts as one in train.sbatch's cap (it starts "bigtrain: time limit")
        'if [ "$EARLY_SIGNAL" -eq 1 ]; then',
        '  echo "bigtrain: time limit (signal while preparing the stage); requeueing job $SLURM_JOB_ID"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
        "trap - USR1",
        # exec: train.sbatch becomes this process, so Slurm's signal reaches its trap.
        f'exec bash {shlex.quote(str(train_sbatch))} "$STAGE_RECIPE"',
    ]
    return "\n".join(lines) + "\n"


def render_prepare_script(
    recipe_path: Path,
    overrides: list[str],
    parts: int,
    cpus: int | None,
    res: SlurmResources,
    launch: Launch,
    job_name: str,
    comment: str,
    log_dir: Path,
) -> str:
    """The data-preparation array: task I runs part I/N of `bigtrain-data prepare` into the recipe's cache.
    The number of parts is given to prepare.sbatch explicitly, so `sbatch --array=3,7 SCRIPT` redoes
    parts 3 and 7 of N."""
    opts = [f"--job-name={job_name}", f"--comment={comment}", f"--array=0-{parts - 1}", "--nodes=1", "--ntasks=1"]
    opts += [f"--cpus-per-task={cpus}"] if cpus else []
    opts += [f"--partition={res.partition}"] if res.partition else []
    opts += [f"--account={res.account}"] if res.account else []
    opts += [f"--time={res.time}"] if res.time else []
    opts += [f"--chdir={launch.workdir}", f"--output={log_dir}/%x-%A_%a.out", "--open-mode=append", "--requeue"]
    prepare_sbatch = launch.home / "slurm" / "prepare.sbatch"
    return (
        "\n".join(
            [
                "#!/bin/bash",
                *(f"#SBATCH {o}" for o in opts),
                f"# bigtrain pipeline {recipe_path}: data preparation in {parts} parts, before stage 1.",
                "set -euo pipefail",
                f"export BIGTRAIN_HOME={shlex.quote(str(launch.home))}",
                f"export BIGTRAIN_PYTHON=${{BIGTRAIN_PYTHON:-{shlex.quote(launch.python)}}}",
                f"# To redo some parts, e.g. 3 and 7: sbatch --array=3,7 {shlex.quote(str(log_dir / (job_name + '.sbatch')))}",
                f"exec bash {shlex.quote(str(prepare_sbatch))} --parts {parts} {_quote([str(recipe_path), *overrides])}",
            ]
        )
        + "\n"
    )


def plan_jobs(
    recipe_path: str | Path,
    overrides: list[str],
    res: SlurmResources,
    launch: Launch,
    prepare_parts: int | None = None,
    prepare_cpus: int | None = None,
) -> list[StageJob]:
    """Every stage of the recipe with its script; finished ones are marked (and later skipped).
    `prepare_parts`: first a data-preparation array of that many tasks, which stage 1 waits for (afterok)."""
    recipe = load_recipe(recipe_path, overrides)
    stages = resolve_stages(recipe, overrides, source=str(recipe_path))
    staged = recipe.stages is not None
    root = (launch.workdir / recipe.output_dir).resolve()
    log_dir = root / "slurm"
    path = Path(recipe_path).resolve()
    jobs = []
    if prepare_parts:
        if prepare_parts < 1:
            raise BigtrainError(f"--prepare-parts {prepare_parts}: must be >= 1")
        name = f"{path.stem}.data"
        comment = f"{COMMENT_PREFIX}data:{root}"
        script = render_prepare_script(
            path, overrides, prepare_parts, prepare_cpus, res, launch, name, comment, log_dir
        )
        done = all(st.finished for st in stages)
        jobs.append(StageJob("data", name, comment, done, script, log_dir / f"{name}.sbatch"))
    for stage in stages:
        if res.elastic and stage.recipe.train.global_batch_size is None:
            raise BigtrainError(
                f"--nodes {res.min_nodes}-{res.nodes}: stage {stage.name!r} needs train.global_batch_size "
                "(else its batch, and so its run, changes with the number of nodes Slurm gives it)"
            )
        stage_out = (launch.workdir / stage.output_dir).resolve()
        job_name = f"{path.stem}.{stage.name}" if staged else path.stem
        comment = f"{COMMENT_PREFIX}{stage_out}"
        position = f"{stage.index + 1} of {len(stages)}"
        script = render_stage_script(path, overrides, stage, staged, res, launch, job_name, comment, log_dir, position)
        finished = stage_finished(stage_out, stage.recipe.train)
        jobs.append(StageJob(stage.name, job_name, comment, finished, script, log_dir / f"{job_name}.sbatch"))
    return jobs


# --- talking to Slurm -----------------------------------------------------------------------------


def _slurm(cmd: list[str], what: str) -> str:
    if shutil.which(cmd[0]) is None:
        raise BigtrainError(f"{cmd[0]}: not found; run bigtrain-submit on a Slurm login node")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()[0]
        raise BigtrainError(f"{what}: {detail}")
    return proc.stdout


def queued_jobs() -> dict[str, str]:
    """Pending or running bigtrain jobs of this user: comment -> job id."""
    out = _slurm(
        ["squeue", "--noheader", "--me", "--states=PENDING,RUNNING,REQUEUED,CONFIGURING", "--format=%i|%k"],
        "squeue",
    )
    found = {}
    for line in out.splitlines():
        job_id, _, comment = line.strip().partition("|")
        if comment.startswith(COMMENT_PREFIX):
            found[comment] = job_id
    return found


def write_script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def submit_jobs(jobs: list[StageJob]) -> list[tuple[StageJob, str | None, str]]:
    """Submit the unfinished stages in order, each after the previous one. Returns (job, job id or None
    when finished, what happened) per stage."""
    queued = queued_jobs()
    previous: str | None = None
    done: list[tuple[StageJob, str | None, str]] = []
    for job in jobs:
        if job.finished:
            done.append((job, None, "finished, skipped"))
            continue
        if job.comment in queued:
            previous = queued[job.comment]
            done.append((job, previous, "already queued"))
            continue
        write_script(job.script_path, job.script)
        cmd = ["sbatch", "--parsable"]
        if previous:
            # kill_invalid_depend: if the previous stage fails, this one leaves the queue too
            cmd += [f"--dependency=afterok:{previous}", "--kill-on-invalid-dep=yes"]
        submitted = ", ".join(f"{j.stage}={jid}" for j, jid, _ in done if jid)
        try:
            out = _slurm([*cmd, str(job.script_path)], f"sbatch for stage {job.stage!r}")
        except BigtrainError as e:
            raise BigtrainError(f"{e} (submitted before it: {submitted or 'nothing'})") from None
        job_id = out.strip().split(";")[0]
        done.append((job, job_id, f"after {previous}" if previous else "submitted"))
        previous = job_id
    return done
