"""Helpers for tests that launch real training runs (deepspeed launcher or plain python)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bigtrain.train.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bigtrain" / "train.py"
DEEPSPEED = Path(sys.executable).parent / "deepspeed"
SPAWN = REPO / "tests" / "spawn_ranks.py"
# `python` for a test's own subprocesses (`[*PYTHON, "-m", "bigtrain.cli.run", ...]`): forked from the suite's
# preloaded server when there is one (tests/zygote.py), else a fresh `python -u`
PYTHON = [sys.executable, str(SPAWN), "--plain"]


def rank_launcher(ranks: int, real_launcher: bool = False) -> list[str]:
    """The command prefix that starts `ranks` ranks of a script on this host: tests/spawn_ranks.py (a plain
    `python SCRIPT` for one rank; for more, the deepspeed launcher's environment without its two
    deepspeed-importing processes; forked from the suite's preloaded tests/zygote.py), or with
    `real_launcher` plain python for one rank and the deepspeed launcher itself for more (signal
    forwarding, and every background run, which tests signal)."""
    if ranks == 1:
        return [sys.executable] if real_launcher else PYTHON
    if real_launcher:
        return [str(DEEPSPEED), "--num_gpus", str(ranks), "--master_port", str(free_port())]
    return [sys.executable, str(SPAWN), str(ranks), str(free_port())]


def tiny_overrides(demo_data: Path, output_dir: Path, cache_dir: Path, **extra: object) -> list[str]:
    """A ~2M-parameter model on three Shakespeare plays: seconds per step on 2 CPU cores."""
    train = demo_data / "shakespeare" / "train"
    values: dict[str, object] = {
        "output_dir": output_dir,
        "model.hidden_size": 64,
        "model.num_layers": 2,
        "model.head_dim": 32,
        "model.num_heads": 2,
        "model.num_kv_heads": 1,
        "model.intermediate_size": 128,
        "model.tie_embeddings": True,
        "data.train_files": f"[{train}/macbeth_gut.txt,{train}/othello_gut.txt,{train}/lear_gut.txt]",
        "data.eval_files": "[]",
        "data.tokenizer": demo_data / "tokenizer",
        "data.cache_dir": cache_dir,
        "data.seq_len": 64,
        "data.eval_fraction": 0.02,
        "train.max_steps": 8,
        "train.micro_batch_size": 2,
        "train.global_batch_size": 8,
        "train.lr": 3e-3,
        "train.warmup_steps": 2,
        "train.eval_every": 4,
        "train.eval_batches": 2,
        "train.progress": False,
        "train.log_every": 1,
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def launch(
    overrides: list[str],
    ranks: int,
    recipe: Path | None = None,
    check: bool = True,
    real_launcher: bool | None = None,
    **popen: object,
):
    """Run bigtrain/train.py on `ranks` ranks (see rank_launcher). A background run is under the deepspeed
    launcher unless `real_launcher=False`: the tests that signal it need the launcher's forwarding, while
    one that SIGKILLs the process group (a crash) can have forked ranks, which die with their launcher."""
    args = ["--recipe", str(recipe or REPO / "recipes" / "demo.yaml"), *overrides]
    background = popen.pop("background", False)
    real = bool(background) if real_launcher is None else real_launcher
    cmd = [*rank_launcher(ranks, real_launcher=real), str(TRAIN), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if background:
        return subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, **popen)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def wait_until_caught(pid: int, signum: int = signal.SIGUSR1, timeout: float = 120) -> None:
    """Until process `pid` has a handler for `signum` (its SigCgt mask in /proc): a signal sent before would
    kill it, which a fixed sleep after the start cannot rule out on a loaded machine."""
    deadline = time.monotonic() + timeout
    while True:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught >> (signum - 1) & 1:
            return
        assert time.monotonic() < deadline, f"process {pid} set no handler for signal {signum} in {timeout} s"
        time.sleep(0.01)


def run_ranks(script: Path, args: list[str], ranks: int) -> subprocess.CompletedProcess:
    """Run a test script on `ranks` ranks (see rank_launcher); it must exit 0."""
    result = subprocess.run(
        [*rank_launcher(ranks), str(script), *args],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def start_ranks(code: str, args: list[str], ranks: int = 2, **env: str) -> list[subprocess.Popen]:
    """Start `ranks` plain python processes running `code` as one group on this host (RANK, WORLD_SIZE and
    MASTER_* set, no launcher; `env` adds to that). The caller waits for them and kills them."""
    base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(ranks),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    return [
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(ranks)
    ]


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line]


def losses(output_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(output_dir) if "loss" in m}


FORKED = """
import importlib, json, os, runpy, sys
spec = json.loads(sys.stdin.read())
for name in spec["preload"]:  # what the command imports before it checks its input, imported once
    importlib.import_module(name)
results = []
for case in spec["cases"]:
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: `python SCRIPT ARGS` or `python -m MODULE ARGS`, its output to the case's files
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.argv, code = [spec["target"], *case["args"]], 0
        try:
            if spec["module"]:
                runpy.run_module(spec["target"], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(spec["target"], run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    results.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(results))
"""


def run_forked(
    target: str | Path, cases: list[list[str]], preload: list[str], tmp: Path, module: bool = False
) -> list[subprocess.CompletedProcess]:
    """Run `python TARGET ARGS` (a script, or `python -m TARGET ARGS` with `module`) once per argument list, in
    order, each in a process of its own with its own stdout, stderr and exit status: children forked from one
    process that has imported the `preload` modules (torch and transformers through bigtrain.config are ~5 s
    of every such process on the 2-core machine). For commands that fail early or are short; the parent's own
    output (import-time warnings) must be empty, so a check of a child's stderr is as strict as in a fresh
    interpreter."""
    # a preloaded target module would be run a second time as __main__ (runpy warns on stderr): preload its imports
    assert not module or str(target) not in preload, "preload what the module imports, not the module"
    spec = {
        "preload": preload,
        "target": str(target),
        "module": module,
        "cases": [
            {"args": a, "stdout": str(tmp / f"{i}.out"), "stderr": str(tmp / f"{i}.err")} for i, a in enumerate(cases)
        ],
    }
    parent = subprocess.run(
        [sys.executable, "-c", FORKED],
        input=json.dumps(spec),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert parent.returncode == 0 and parent.stderr == "", parent.stderr[-3000:]
    out = parent.stdout.splitlines()
    assert len(out) == 1, parent.stdout[-3000:]  # the parent prints nothing but the exit statuses
    return [
        subprocess.CompletedProcess(
            [str(target), *c["args"]], code, Path(c["stdout"]).read_text(), Path(c["stderr"]).read_text()
        )
        for c, code in zip(spec["cases"], json.loads(out[0]))
    ]
