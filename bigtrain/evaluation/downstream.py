"""Score an HF export on lm-eval tasks (Python API, `HFLM` on the loaded model); write `eval/downstream.json`.

Task names are lm-eval's (hub tasks such as `hellaswag`, `arc_easy` download their data set) or bigtrain's
local ones (`LOCAL_TASKS`, offline: shipped JSONL files). When every task is local, the hub is switched off
before lm-eval is imported, so nothing is fetched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bigtrain.errors import BigtrainError

TASK_DIR = Path(__file__).resolve().parent / "tasks"
DOWNSTREAM_FILE = Path("eval") / "downstream.json"


def shakespeare_next_line() -> dict[str, Any]:
    return {
        "task": "shakespeare_next_line",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(TASK_DIR / "shakespeare_next_line.jsonl")}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "target_delimiter": "",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


LOCAL_TASKS = {"shakespeare_next_line": shakespeare_next_line}


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise BigtrainError(
            "downstream evaluation needs EleutherAI's lm-eval: pip install -e '.[eval]' (or pip install lm-eval)"
        ) from e


def resolve_model_dir(path: Path) -> tuple[Path, Path]:
    """(HF directory to load, run directory to write into) for an HF dir, a run, or a bigtrain-run root."""
    if (path / "config.json").is_file():
        run = path.parent if (path.parent / "run.json").is_file() else path
        return path, run
    if (path / "hf" / "config.json").is_file():
        return path / "hf", path
    pipeline = path / "pipeline.json"
    if pipeline.is_file():
        last = json.loads(pipeline.read_text())["stages"][-1]
        if (path / last / "hf" / "config.json").is_file():
            return path / last / "hf", path
    raise BigtrainError(f"{path}: no HF export (config.json) here, in {path / 'hf'} or in a bigtrain-run's last stage")


def score(
    model_dir: Path,
    tasks: list[str],
    limit: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    tokenizer: str | Path | None = None,
) -> dict[str, Any]:
    """lm-eval's results for `tasks` on the export in `model_dir` (tokenizer: the export's unless given)."""
    if not tasks:
        raise BigtrainError("no tasks given")
    if all(t in LOCAL_TASKS for t in tasks):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    require_lm_eval()
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import bigtrain.model  # noqa: F401  (registers the per-layer-sized model with the Auto classes)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    tok = AutoTokenizer.from_pretrained(tokenizer or model_dir)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device=device)
    specs = [LOCAL_TASKS[t]() if t in LOCAL_TASKS else t for t in tasks]
    results = simple_evaluate(
        model=lm,
        tasks=specs,
        limit=limit,
        task_manager=TaskManager(),
        log_samples=False,
        bootstrap_iters=0,
    )
    if results is None:
        raise BigtrainError("lm-eval returned no results")
    metrics = {
        name: {k: v for k, v in m.items() if isinstance(v, (int, float))} for name, m in results["results"].items()
    }
    scores = {}
    for name, m in metrics.items():
        key = next((k for k in ("acc,none", "acc_norm,none", "exact_match,none") if k in m), None)
        if key is not None:
            scores[name] = float(m[key])
    return {"tasks": tasks, "limit": limit, "scores": scores, "metrics": metrics, "model": str(model_dir)}


def write_scores(run_dir: Path, result: dict[str, Any], step: int | None) -> Path:
    """`eval/downstream.json` in the run (atomically) and the scores in its TensorBoard at `step`."""
    from bigtrain.ckpt.atomic import write_text_atomic

    path = run_dir / DOWNSTREAM_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({**result, "step": step}, indent=2))
    if (run_dir / "tb").is_dir() or (run_dir / "run.json").is_file():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
        for name, value in result["scores"].items():
            writer.add_scalar(f"downstream/{name}", value, step or 0)
        writer.close()
    return path
