"""Bad input to the trainer: one clear line naming what and where, exit code 2, nothing written over.

Each bad command is `bigtrain/train.py` run as a script in a process of its own, its stdout, stderr and exit
status its own. The table's commands are forked from one process that has imported what the trainer imports
before it checks its input (`bigtrain.config` pulls in torch and transformers, ~5 s per process on the
2-core machine); that process's own output must be empty, so an import that writes to stderr still fails
the one-line check. `test_missing_recipe_file` starts the script in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bigtrain.config import RecipeError, load_recipe
from tests.trainer_runs import REPO, TRAIN, run_forked, tiny_overrides

PRELOAD = [  # what bigtrain.cli.train.main imports before it checks its input
    "bigtrain.train.preemption",
    "bigtrain.cli.common",
    "bigtrain.config",
    "bigtrain.train.preflight",
]


def make_existing_run(out: Path) -> Path:
    """An output_dir that already holds a run's files: none may change when a new command fails."""
    (out / "checkpoints" / "step_5").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    (out / "recipe.yaml").write_text("output_dir: run\n")
    (out / "checkpoints" / "latest").write_text("step_5")
    return out


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def run_train(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


CASES = {
    "unknown key": ({"train.max_stepz": 3}, "train.max_stepz"),
    "wrong type": ({"train.max_steps": "abc"}, "train.max_steps"),
    "missing data file": ({"data.train_files": "[/nonexistent/corpus/*.txt]"}, "/nonexistent/corpus/*.txt"),
    "missing tokenizer": ({"data.tokenizer": "/nonexistent/tokenizer"}, "data.tokenizer"),
    "vocab below tokenizer": ({"model.vocab_size": 1000}, "model.vocab_size"),
    "impossible heads": ({"model.num_heads": 3, "model.num_kv_heads": 2}, "num_kv_heads"),
    "missing init_from": ({"init_from": "/nonexistent/model"}, "init_from"),
}


@pytest.fixture(scope="module")
def bad_runs(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every bad command of the table and the empty data set, each with its own existing run and cache dir."""
    root = tmp_path_factory.mktemp("bad-input")
    cases: dict[str, dict] = {}
    for i, name in enumerate([*CASES, "empty dataset"]):
        d = root / str(i)
        d.mkdir()
        run = make_existing_run(d / "run")
        if name == "empty dataset":
            empty = d / "empty.txt"
            empty.write_text("")
            extra: dict[str, object] = {"data.train_files": f"[{empty}]"}
        else:
            extra = CASES[name][0]
        cases[name] = {
            "run": run,
            "cache": d / "cache",
            "before": snapshot(run),
            "args": tiny_overrides(demo_data, run, d / "cache", **extra),
        }
    results = run_forked(TRAIN, [c["args"] for c in cases.values()], PRELOAD, root)
    for case, result in zip(cases.values(), results):
        case["result"] = result
    return cases


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_with_one_line(case: str, bad_runs: dict[str, dict]) -> None:
    run = bad_runs[case]
    line = error_line(run["result"])
    assert CASES[case][1] in line, line
    assert snapshot(run["run"]) == run["before"]
    assert not run["cache"].exists()


def test_empty_dataset(bad_runs: dict[str, dict]) -> None:
    run = bad_runs["empty dataset"]
    line = error_line(run["result"])
    assert "empty" in line and "data.train_files" in line, line
    assert snapshot(run["run"]) == run["before"]


def test_missing_recipe_file(tmp_path: Path) -> None:
    line = error_line(run_train(["--recipe", str(tmp_path / "nope.yaml")]))
    assert "nope.yaml" in line and "not found" in line


def test_recipe_errors_name_the_file_and_key(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 1e-3\n  schedule: linear\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: train\.schedule"):
        load_recipe(recipe)
    recipe.write_text("model:\n  hidden_size: [1, 2\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:\d+: not valid YAML"):
        load_recipe(recipe)
    with pytest.raises(RecipeError, match="expected key=value"):
        load_recipe(None, ["train.max_steps"])


def test_overrides_reach_nested_fields() -> None:
    r = load_recipe(REPO / "recipes" / "demo.yaml", ["train.max_steps=7", "data.train_files=[a.txt,b.txt]"])
    assert r.train.max_steps == 7 and r.data.train_files == ["a.txt", "b.txt"]
    assert r.model.hidden_size == 256  # untouched fields keep the recipe's values
