"""Staged recipes: validation at load (one line naming the file and the stage) and stage resolution."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bigtrain.config import RecipeError, load_recipe
from bigtrain.pipeline import runner
from bigtrain.pipeline.lr_scaling import lr_by_size
from bigtrain.pipeline.stages import resolve_stages

REPO = Path(__file__).resolve().parents[1]

BASE = """
output_dir: {out}
model: {{hidden_size: 64, num_layers: 2, head_dim: 16, num_heads: 4, intermediate_size: 176, vocab_size: 320}}
train: {{max_steps: 3, lr: 1.0e-3}}
"""


def write(tmp_path: Path, stages: str, head: str = "") -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(BASE.format(out=tmp_path / "run") + head + "stages:\n" + stages)
    return path


GOOD = """
  - name: s1
  - name: s2
    grow: {op: step, layers: 3, init: mean}
    step: {lora_rank: 4}
    train: {max_steps: 5}
  - name: s3
    grow: {op: net2net, hidden: 128, heads: 8}
    lr: by-size
"""


def test_stages_resolve_into_flat_recipes(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    stages = resolve_stages(load_recipe(path), source=str(path))
    assert [s.name for s in stages] == ["s1", "s2", "s3"]
    s1, s2, s3 = stages
    root = tmp_path / "run"
    assert s1.recipe.output_dir == str(root / "s1") and s1.recipe.init_from is None and s1.grow is None
    # s1 hands over its last training checkpoint (fp32 masters); s2, a STEP stage, its export (LoRA folded in)
    assert s2.recipe.init_from == str(root / "s2" / "init") and s2.grow_from == str(root / "s1")
    assert s2.recipe.step is not None and s2.recipe.step.lora_rank == 4
    assert s2.inherited == (0, 2)  # STEP interpolation puts the new layer between the two it averages
    assert s2.recipe.model.num_layers == 3 and s2.recipe.train.max_steps == 5
    assert s3.recipe.model.hidden_size == 128 and s3.recipe.model.num_heads == 8 and s3.recipe.step is None
    assert s3.recipe.model.num_layers == 3 and s3.grow_from == str(root / "s2" / "hf")
    assert s3.recipe.train.lr == pytest.approx(lr_by_size(1e-3, s1.recipe.model, s3.recipe.model, 0.5))
    assert s3.recipe.train.lr < s1.recipe.train.lr
    assert not any(s.finished for s in stages)


def fake_trained(out: Path, run: dict[str, Any] | None) -> None:
    """What a trained stage leaves that `finished` reads: the export's config.json and run.json."""
    (out / "hf").mkdir(parents=True, exist_ok=True)
    (out / "hf" / "config.json").write_text("{}")
    if run is not None:
        (out / "run.json").write_text(json.dumps(run))


@pytest.mark.parametrize(
    ("train", "run", "finished"),
    [
        ("{max_steps: 3}", {"status": "finished", "step": 3, "tokens": 3072}, True),
        ("{max_steps: 5}", {"status": "finished", "step": 3, "tokens": 3072}, False),  # the recipe grew
        ("{max_steps: 2}", {"status": "finished", "step": 3, "tokens": 3072}, True),
        ("{max_steps: null, tokens: 3072}", {"status": "finished", "step": 3, "tokens": 3072}, True),
        ("{max_steps: null, tokens: 4000}", {"status": "finished", "step": 3, "tokens": 3072}, False),
        ("{max_steps: 3}", {"status": "preempted", "step": 3, "tokens": 3072}, False),  # an extension cut short
        ("{max_steps: 3}", {"world_size": 1}, False),  # an extension that has just started
        ("{max_steps: 3}", None, False),  # no record: the trainer decides
    ],
)
def test_a_stage_is_finished_when_exported_at_the_recipes_length(
    tmp_path: Path, train: str, run: dict[str, Any] | None, finished: bool
) -> None:
    path = write(tmp_path, f"  - name: s1\n    train: {train}\n")
    (stage,) = resolve_stages(load_recipe(path), source=str(path))
    assert not stage.finished
    fake_trained(stage.output_dir, run)
    assert stage.finished is finished


def test_run_continues_a_stage_given_more_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bigtrain-run launches the trainer again for an exported stage whose recipe now asks for more steps
    (the trainer extends it, as bigtrain-train does); stages at their length are skipped."""
    path = write(tmp_path, "  - name: s1\n  - name: s2\n    grow: {op: step, layers: 3}\n")
    launched: list[list[str]] = []

    def fake_run(cmd: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        launched.append(cmd)
        recipe = load_recipe(cmd[-1])
        fake_trained(Path(recipe.output_dir), {"status": "finished", "step": recipe.train.max_steps, "tokens": 1})
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    monkeypatch.setattr(runner, "prepare_stage", lambda st, stages: runner.stage_yaml(st))
    monkeypatch.setattr(runner, "pipeline_summary", lambda root, runs: [])

    def run_all(overrides: list[str]) -> list[str]:
        launched.clear()
        stages = resolve_stages(load_recipe(path, overrides), overrides, source=str(path))
        for st in stages:  # what prepare_stage writes, here without growing
            st.output_dir.mkdir(parents=True, exist_ok=True)
            runner.stage_yaml(st).write_text(runner.dump_recipe(st.recipe))
        assert runner.run_stages(stages, nproc=1, log=False) == 0
        return [Path(cmd[-1]).parent.name for cmd in launched]

    assert run_all([]) == ["s1", "s2"]
    assert run_all([]) == []  # both at their length
    assert run_all(["train.max_steps=5"]) == ["s1", "s2"]  # longer: both continue
    assert run_all(["train.max_steps=5"]) == []


def test_launch_command_default_and_custom(monkeypatch: pytest.MonkeyPatch) -> None:
    """One rank: plain python; more: the deepspeed launcher; $BIGTRAIN_LAUNCHER: the user's own, filled in."""
    monkeypatch.delenv(runner.LAUNCHER_ENV, raising=False)
    stage = Path("/r/s1/stage.yaml")
    assert runner.launch_command(stage, 1)[1:] == [str(runner.TRAIN_SCRIPT), "--recipe", str(stage)]
    assert runner.launch_command(stage, 2)[1:5] == ["-m", "deepspeed.launcher.runner", "--num_gpus", "2"]
    monkeypatch.setenv(runner.LAUNCHER_ENV, "torchrun --nproc-per-node {nproc} --master-port {port} 'a b'")
    cmd = runner.launch_command(stage, 4)
    assert cmd[:3] == ["torchrun", "--nproc-per-node", "4"] and cmd[4].isdigit() and cmd[5] == "a b"
    assert cmd[6:] == [str(runner.TRAIN_SCRIPT), "--recipe", str(stage)]


def test_overrides_apply_to_every_stage(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    overrides = [f"output_dir={tmp_path / 'elsewhere'}", "train.max_steps=2"]
    stages = resolve_stages(load_recipe(path, overrides), overrides, source=str(path))
    assert all(s.recipe.train.max_steps == 2 for s in stages)  # wins over s2's own max_steps: 5
    assert stages[1].recipe.output_dir == str(tmp_path / "elsewhere" / "s2")


def test_a_growth_draws_from_the_runs_seed_unless_it_sets_its_own(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("heads: 8}", "heads: 8, seed: 5}"))
    stages = resolve_stages(load_recipe(path, ["train.seed=3"]), ["train.seed=3"], source=str(path))
    assert stages[1].grow is not None and stages[1].grow.seed == 3  # unset: the stage's train.seed
    assert stages[2].grow is not None and stages[2].grow.seed == 5  # its own
    assert resolve_stages(load_recipe(path), source=str(path))[1].grow.seed == 1234  # train.seed's default


def test_a_command_line_init_from_is_what_the_first_stage_grows(tmp_path: Path) -> None:
    """Not every stage's init_from: a grown first stage still starts from its grown init/ (bigtrain-run
    ... init_from=runs/base-seed2/hf, as tools/experiments/run.sh passes it)."""
    path = write(
        tmp_path, "  - name: wide\n    grow: {op: net2net, hidden: 128, heads: 8}\n", "init_from: base-seed1/hf\n"
    )
    for overrides in ([], ["init_from=base-seed2/hf"]):
        (wide,) = resolve_stages(load_recipe(path, overrides), overrides, source=str(path))
        assert wide.grow_from == ("base-seed2/hf" if overrides else "base-seed1/hf")
        assert wide.recipe.init_from == str(tmp_path / "run" / "wide" / "init")


def test_a_command_line_lr_is_the_anchor_of_by_size(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    stages = resolve_stages(load_recipe(path, ["train.lr=2e-3"]), ["train.lr=2e-3"])
    assert stages[0].recipe.train.lr == stages[1].recipe.train.lr == 2e-3
    expected = lr_by_size(2e-3, stages[0].recipe.model, stages[2].recipe.model, 0.5)
    assert stages[2].recipe.train.lr == pytest.approx(expected) and expected < 2e-3


def test_lr_by_size_is_inverse_sqrt_of_non_embedding_params(tmp_path: Path) -> None:
    stages = resolve_stages(load_recipe(write(tmp_path, GOOD)))
    from bigtrain.model.counting import non_embedding_params

    p1 = non_embedding_params(stages[0].recipe.model.build_config())
    p3 = non_embedding_params(stages[2].recipe.model.build_config())
    assert stages[2].recipe.train.lr == pytest.approx(1e-3 * (p1 / p3) ** 0.5)


BAD = {
    "shrinks": (
        "  - name: s1\n  - name: s2\n    grow: {op: stack, layers: 1}\n",
        "stage 's2': grow: would shrink num_layers from 2 (stage 's1') to 1",
    ),
    "no model source": (
        "  - name: s1\n  - name: s2\n    model: {num_layers: 4}\n",
        "stage 's2': model.num_layers=4 has no model source",
    ),
    "first stage grows from nothing": (
        "  - name: s1\n    grow: {op: stack, layers: 4}\n",
        "stage 's1': grow: has no model source",
    ),
    "unknown LoRA target": (
        "  - name: s1\n  - name: s2\n    grow: {op: step, layers: 3}\n    step: {targets: [qkv]}\n",
        "stage 's2': step: LoRA target 'qkv' matches no module",
    ),
    "LoRA targets that match nothing": (
        "  - name: s1\n    model: {layout: {scheme: uniform}, intermediate_size: 0}\n"
        "  - name: s2\n    grow: {op: step, layers: 3}\n    step: {targets: [gate_proj]}\n",
        "stage 's2': step.targets: 'gate_proj' matches nothing",
    ),
    "unknown key in a stage": (
        "  - name: s1\n    train: {max_stepz: 3}\n",
        "stage 's1': train: unknown key 'max_stepz'",
    ),
    "unknown stage key": ("  - name: s1\n    modle: {}\n", "stage 's1': unknown key 'modle'"),
    "unknown op": ("  - name: s1\n  - name: s2\n    grow: {op: grow-big, layers: 4}\n", "unknown growth op"),
    "depth without a depth op": (
        "  - name: s1\n  - name: s2\n    grow: {op: net2net, layers: 4}\n",
        "stage 's2': grow: layers=4 needs a depth op",
    ),
    "step without new layers": (
        "  - name: s1\n  - name: s2\n    grow: {op: net2net, hidden: 128, heads: 8}\n    step: {}\n",
        "stage 's2': step: needs grow: to add layers",
    ),
    "duplicate names": ("  - name: s1\n  - name: s1\n", "stage 's1': the name is used by an earlier stage"),
    "by-size first": ("  - name: s1\n    lr: by-size\n", "the first stage cannot use it"),
    "two depth ops": (
        "  - name: s1\n  - name: s2\n    grow: {op: stack+step, layers: 4}\n",
        "at most one depth and one width operator",
    ),
    "no export to grow from": (
        "  - name: s1\n    train: {export: false}\n  - name: s2\n    grow: {op: stack, layers: 4}\n",
        "stage 's1': train.export is false but stage 's2' starts from its export",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_staged_recipes_fail_at_load(tmp_path: Path, case: str) -> None:
    stages, expected = BAD[case]
    path = write(tmp_path, stages)
    with pytest.raises(RecipeError) as err:
        resolve_stages(load_recipe(path), source=str(path))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    assert expected in message, message


def test_a_flat_recipe_is_one_stage(tmp_path: Path) -> None:
    path = tmp_path / "flat.yaml"
    path.write_text(BASE.format(out=tmp_path / "run"))
    (stage,) = resolve_stages(load_recipe(path))
    assert stage.name == "main" and stage.output_dir == tmp_path / "run" and stage.grow is None


def test_flat_step_needs_init_from(tmp_path: Path) -> None:
    path = tmp_path / "flat.yaml"
    path.write_text("step: {lora_rank: 4}\n")
    with pytest.raises(RecipeError, match="step: needs init_from"):
        load_recipe(path)


@pytest.mark.parametrize("name", ["step-demo", "step-1b"])
def test_shipped_recipes_load(name: str) -> None:
    stages = resolve_stages(load_recipe(REPO / "recipes" / f"{name}.yaml"))
    assert len(stages) == 3
    assert [s.recipe.step is not None for s in stages] == [False, True, True]


PIPELINE = """
  - name: s1
    train: {max_steps: 10}
  - name: s2
    grow: {op: stack, layers: 4, rewarm_steps: REWARM}
    train: {max_steps: 20}
  - name: s3
    grow: {op: stack, layers: 8}
    train: {max_steps: 30}
"""


def stage_lrs(stages: list) -> list[float]:
    from bigtrain.train.schedule import lr_multiplier

    out: list[float] = []
    for st in stages:
        t = st.recipe.train
        out += [lr_multiplier(t, t.max_steps)(s) for s in range(t.max_steps)]
    return out


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_pipeline_scope_is_one_schedule_over_every_stage(tmp_path: Path, schedule: str) -> None:
    from bigtrain.config import TrainConfig
    from bigtrain.train.schedule import lr_multiplier

    head = (
        f"train: {{lr: 1.0e-3, warmup_steps: 5, schedule: {schedule}, decay_fraction: 0.2, schedule_scope: pipeline}}\n"
    )
    path = write(tmp_path, PIPELINE.replace("REWARM", "0"), head)
    stages = resolve_stages(load_recipe(path), source=str(path))
    one_run = TrainConfig(max_steps=60, warmup_steps=5, schedule=schedule, decay_fraction=0.2)
    expected = [lr_multiplier(one_run, 60)(s) for s in range(60)]
    assert stage_lrs(stages) == pytest.approx(expected)
    if schedule == "wsd":  # nothing decays before the last stage's 12 decay steps
        assert all(m == 1.0 for m in stage_lrs(stages)[5:48])


def test_wsd_decays_in_the_last_stage_only(tmp_path: Path) -> None:
    head = "train: {lr: 1.0e-3, warmup_steps: 5, schedule: wsd, decay_fraction: 0.8, schedule_scope: pipeline}\n"
    path = write(tmp_path, PIPELINE.replace("REWARM", "0"), head)
    lrs = stage_lrs(resolve_stages(load_recipe(path), source=str(path)))
    # 0.8 x 60 steps would start the decay in s2: it is clipped to the last stage's 30 steps
    assert all(m == 1.0 for m in lrs[5:31]) and lrs[31] < 1.0 and lrs[-1] < lrs[31]


def test_rewarm_after_growth_ramps_to_the_schedule(tmp_path: Path) -> None:
    head = "train: {lr: 1.0e-3, warmup_steps: 5, schedule: cosine, schedule_scope: pipeline}\n"
    plain = write(tmp_path, PIPELINE.replace("REWARM", "0"), head)
    flat = stage_lrs(resolve_stages(load_recipe(plain), source=str(plain)))
    warm = write(tmp_path, PIPELINE.replace("REWARM", "4"), head)
    stages = resolve_stages(load_recipe(warm), source=str(warm))
    assert stages[1].recipe.train.rewarm_steps == 4 and stages[2].recipe.train.rewarm_steps == 0
    lrs = stage_lrs(stages)
    assert lrs[10:14] == pytest.approx([flat[10 + k] * (k + 1) / 5 for k in range(4)])
    assert lrs[:10] == pytest.approx(flat[:10]) and lrs[14:] == pytest.approx(flat[14:])


def test_a_small_model_on_a_longer_schedule_is_not_annealed() -> None:
    """Stage scope with schedule_steps > max_steps: the G_stack authors' small model, stopped mid-cosine."""
    from bigtrain.config import TrainConfig
    from bigtrain.train.schedule import lr_multiplier

    t = TrainConfig(max_steps=10, warmup_steps=2, schedule_steps=100, min_lr_ratio=0.1)
    assert lr_multiplier(t, 10)(9) > 0.95
    assert lr_multiplier(TrainConfig(max_steps=10, warmup_steps=2), 10)(9) < 0.2


def test_pipeline_scope_needs_fixed_stage_lengths(tmp_path: Path) -> None:
    head = "train: {lr: 1.0e-3, schedule_scope: pipeline}\n"
    path = write(
        tmp_path,
        "  - name: s1\n    train: {max_steps: null, tokens: 1000}\n  - name: s2\n    grow: {op: stack, layers: 4}\n",
        head,
    )
    with pytest.raises(RecipeError, match="schedule_scope: pipeline needs every stage's length fixed"):
        resolve_stages(load_recipe(path), source=str(path))


def test_evals_are_dense_right_after_growth() -> None:
    from bigtrain.config import TrainConfig
    from bigtrain.train.loop import eval_due

    t = TrainConfig(eval_every=10, eval_after_growth={"every": 2, "steps": 6})
    assert [s for s in range(1, 31) if eval_due(t, s, grown=True)] == [2, 4, 6, 10, 20, 30]
    assert [s for s in range(1, 31) if eval_due(t, s, grown=False)] == [10, 20, 30]
    assert not any(eval_due(TrainConfig(), s, grown=True) for s in range(1, 30))  # eval_every 0: the end only


def test_inherited_layers_come_from_the_growth_plan(tmp_path: Path) -> None:
    """LLaMA Pro's new blocks sit between the inherited layers: the stage (and so the planner and the
    family table, which freeze and adapt what the trainer will) knows which, from the plan alone."""
    stages = """
  - name: s1
  - name: s2
    grow: {op: block-expand, layers: 4}
    step: {lora_rank: 4}
  - name: s3
    grow: {op: stack, layers: 8}
    step: {lora_rank: 4}
"""
    path = write(tmp_path, stages)
    s1, s2, s3 = resolve_stages(load_recipe(path), source=str(path))
    assert s1.inherited == () and s2.inherited == (0, 2) and s3.inherited == (0, 1, 2, 3)
