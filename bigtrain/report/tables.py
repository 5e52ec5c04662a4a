"""`report.json` and `report.md`: per run, the final numbers; against the baseline, the cost of reaching its loss.

Every number is read or derived from the runs' files (`run.json`, `metrics.jsonl`, `eval/downstream.json`).
Runs whose names differ only by a trailing `-seed<N>` are also summarised as one arm (mean, min, max).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from bigtrain.report.runs import Run, model_state_bytes
from bigtrain.report.target import cost_to_reach, frontier_cost, saving, value_at

SEED_SUFFIX = re.compile(r"-seed\d+$")
DOWNSTREAM_FILE = Path("eval") / "downstream.json"


def read_downstream(run: Run) -> dict[str, float]:
    """Scores `bigtrain-eval` wrote into the run (the last stage's for a staged run)."""
    for d in (run.path, run.parts[-1].path):
        path = d / DOWNSTREAM_FILE
        if path.is_file():
            return {k: float(v) for k, v in json.loads(path.read_text()).get("scores", {}).items()}
    return {}


def run_entry(run: Run) -> dict[str, Any]:
    final = run.final_eval_loss
    return {
        "name": run.name,
        "path": str(run.path),
        "staged": run.staged,
        "final_eval_loss": final,
        "final_eval_ppl": math.exp(min(final, 50.0)) if final is not None else None,
        "eval_points": len(run.eval),
        "tokens": run.tokens,
        "flops": run.flops,
        "wall_s": run.wall_s,
        "inherited_from": shown(run.inherited.path) if run.inherited else None,
        "inherited_flops": run.inherited.flops if run.inherited else 0.0,
        "inherited_note": run.inherited_note,
        "peak_memory_bytes": run.peak_memory_bytes,
        "model_state_bytes": run.model_state_bytes,
        "stages": [
            {
                "name": p.name,
                "tokens": p.tokens,
                "flops": p.tokens * p.flops_per_token,
                "wall_s": p.wall_s,
                "start_tokens": p.tokens_before,
                "start_flops": p.flops_before,
                "params_total": p.info.get("params_total"),
                "params_trainable": p.info.get("params_trainable"),
                "peak_memory_bytes": p.info.get("memory", {}).get("peak_bytes"),
                "model_state_bytes": model_state_bytes(p.info),
                "final_eval_loss": (p.info.get("final_eval") or {}).get("eval_loss"),
            }
            for p in run.parts
        ],
        "downstream": read_downstream(run),
    }


def against_baseline(run: Run, baseline: Run) -> dict[str, Any]:
    target = baseline.final_eval_loss
    if target is None or not baseline.eval:
        return {"target_loss": None, "note": f"baseline {baseline.name} has no eval points"}
    if not run.eval:
        return {"target_loss": target, "note": f"{run.name} has no eval points"}

    def cost(r: Run, axis: str) -> float | None:
        return cost_to_reach([getattr(p, axis) for p in r.eval], [p.value for p in r.eval], target)

    tokens, flops = cost(run, "tokens"), cost(run, "flops")
    base_tokens, base_flops = cost(baseline, "tokens"), cost(baseline, "flops")
    # the other reading of the same curves: the baseline's loss after the run's FLOPs (equal compute)
    at_equal = value_at([p.flops for p in baseline.eval], [p.value for p in baseline.eval], run.eval[-1].flops)
    return {
        "baseline_loss_at_equal_flops": at_equal,
        "loss_gain_at_equal_flops": None if at_equal is None else at_equal - run.eval[-1].value,
        "target_loss": target,
        "tokens_to_target": tokens,
        "flops_to_target": flops,
        "baseline_tokens_to_target": base_tokens,
        "baseline_flops_to_target": base_flops,
        "token_saving_pct": saving(tokens, base_tokens),
        "flops_saving_pct": saving(flops, base_flops),
        "note": None if tokens is not None else "does not reach the baseline's final held-out loss",
    }


def frontier_points(runs: list[Run]) -> list[dict[str, Any]]:
    """The baseline frontier: one point per budget (runs differing only by `-seed<N>` are one budget), at the
    seeds' mean final FLOPs and mean final held-out loss."""
    budgets: dict[str, list[Run]] = {}
    for r in runs:
        if r.final_eval_loss is not None:
            budgets.setdefault(arm_name(r.name), []).append(r)
    return sorted(
        (
            {
                "budget": name,
                "seeds": len(members),
                "flops": statistics.fmean(r.flops for r in members),
                "loss": statistics.fmean(r.final_eval_loss for r in members),  # type: ignore[misc]
            }
            for name, members in budgets.items()
        ),
        key=lambda p: p["flops"],
    )


def against_frontier(run: Run, frontier: list[dict[str, Any]]) -> dict[str, Any]:
    """The FLOPs the frontier needs for the run's final loss against the run's FLOPs (never a baseline's
    mid-schedule point: every frontier point is a complete schedule)."""
    loss = run.final_eval_loss
    if loss is None:
        return {"frontier_flops": None, "frontier_saving_pct": None, "note": f"{run.name} has no eval points"}
    needed = frontier_cost([(p["flops"], p["loss"]) for p in frontier], loss)
    return {
        "final_loss": loss,
        "flops": run.flops,
        "frontier_flops": needed,
        "frontier_saving_pct": saving(run.flops, needed),
        "note": None if needed is not None else "the run's final loss lies outside the frontier",
    }


def shown(path: Path) -> str:
    """A path as the report prints it: relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def arm_name(name: str) -> str:
    """The arm a run belongs to: its name without a trailing `-seed<N>`."""
    return SEED_SUFFIX.sub("", name)


def seed_of(name: str) -> str | None:
    found = SEED_SUFFIX.search(name)
    return found.group(0) if found else None


def arm_groups(entries: list[dict[str, Any]], baseline: str | None = None) -> list[dict[str, Any]]:
    """Seeds of one arm (`NAME-seed<N>`) summarised: mean, min and max of the final loss and savings, and,
    with a baseline, of each seed's final loss minus the baseline arm's of the same seed (paired: a shared
    seed shares the initialisation and the data order, so the pairs cancel what the seed alone explains)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        groups.setdefault(arm_name(e["name"]), []).append(e)
    base_by_seed: dict[str, float] = {}
    if baseline is not None:
        for m in groups.get(arm_name(baseline), []):
            if (seed := seed_of(m["name"])) and m["final_eval_loss"] is not None:
                base_by_seed[seed] = m["final_eval_loss"]

    def paired(m: dict[str, Any]) -> float | None:
        base = base_by_seed.get(seed_of(m["name"]) or "")
        return None if base is None or m["final_eval_loss"] is None else m["final_eval_loss"] - base

    out = []
    for arm, members in groups.items():
        if len(members) < 2:
            continue
        row: dict[str, Any] = {"arm": arm, "seeds": len(members), "runs": [m["name"] for m in members]}
        for key, get in (
            ("final_eval_loss", lambda m: m["final_eval_loss"]),
            ("flops_saving_pct", lambda m: (m.get("vs_baseline") or {}).get("flops_saving_pct")),
            ("token_saving_pct", lambda m: (m.get("vs_baseline") or {}).get("token_saving_pct")),
            ("loss_gain_at_equal_flops", lambda m: (m.get("vs_baseline") or {}).get("loss_gain_at_equal_flops")),
            ("frontier_saving_pct", lambda m: (m.get("vs_frontier") or {}).get("frontier_saving_pct")),
            ("paired_loss_diff", paired),
        ):
            values = [v for m in members if (v := get(m)) is not None]
            row[key] = (
                {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}
                if values
                else None
            )
        out.append(row)
    return out


def build_report(runs: list[Run], baseline: Run | None, frontier_runs: list[Run] | None = None) -> dict[str, Any]:
    frontier = frontier_points(frontier_runs) if frontier_runs else []
    entries = []
    for run in runs:
        entry = run_entry(run)
        if baseline is not None:
            entry["vs_baseline"] = against_baseline(run, baseline)
        if frontier:
            entry["vs_frontier"] = against_frontier(run, frontier)
        entries.append(entry)
    return {
        "baseline": baseline.name if baseline is not None else None,
        "frontier": frontier,
        "runs": entries,
        "arms": arm_groups(entries, baseline.name if baseline is not None else None),
    }


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "—" if v is None else format(v, fmt)


def _mib(b: int | None) -> str:
    if b is None:
        return "—"
    mib = b / 2**20
    return f"{mib:.0f}" if mib >= 100 else f"{mib:.1f}"


def spread(s: dict[str, float] | None, fmt: str) -> str:
    """A statistic as `mean [min, max]` in `fmt`, or — when there is none."""
    if not s:
        return "—"
    return f"{format(s['mean'], fmt)} [{format(s['min'], fmt)}, {format(s['max'], fmt)}]"


def format_markdown(report: dict[str, Any], plots: list[str]) -> str:
    lines = ["# bigtrain report", ""]
    if report["baseline"]:
        lines += [f"Baseline: **{report['baseline']}**. Target: its final held-out loss.", ""]
    lines += [
        "| run | final held-out loss | ppl | eval points | tokens | FLOPs | wall (s) | peak mem (MiB) "
        "| model states (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["runs"]:
        loss = _num(e["final_eval_loss"]) if e["final_eval_loss"] is not None else "no eval points"
        lines.append(
            f"| {e['name']} | {loss} | {_num(e['final_eval_ppl'], '.2f')} | {e['eval_points']} | {e['tokens']:.4g} | "
            f"{e['flops']:.4g} | {e['wall_s']:.0f} | {_mib(e['peak_memory_bytes'])} | {_mib(e['model_state_bytes'])} |"
        )
    grown_from = [e for e in report["runs"] if e.get("inherited_from") or e.get("inherited_note")]
    if grown_from:
        lines += ["", "Tokens, FLOPs and wall time count the run each of these grew from (its `init_from`):", ""]
        for e in grown_from:
            what = e["inherited_note"] or f"{e['inherited_from']} ({e['inherited_flops']:.4g} FLOPs)"
            lines.append(f"- {e['name']}: {what}")
    if report["baseline"]:
        lines += [
            "",
            "To reach the baseline's final held-out loss (interpolated on each eval curve), and the baseline's "
            "held-out loss after as many FLOPs as the run spent (gain: how much lower the run ends; positive: "
            "better than the baseline at equal compute):",
            "",
            "| run | target loss | tokens | FLOPs | token saving % | FLOPs saving % | baseline's loss at the run's "
            "final FLOPs | gain (nats) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in report["runs"]:
            v = e["vs_baseline"]
            if v.get("target_loss") is None or "tokens_to_target" not in v:
                lines.append(f"| {e['name']} | {_num(v.get('target_loss'))} | {v['note']} | | | | | |")
                continue
            if v["tokens_to_target"] is None:
                lines.append(
                    f"| {e['name']} | {_num(v['target_loss'])} | not reached | not reached | — | — | "
                    f"{_num(v['baseline_loss_at_equal_flops'])} | {_num(v['loss_gain_at_equal_flops'], '+.4f')} |"
                )
                continue
            lines.append(
                f"| {e['name']} | {_num(v['target_loss'])} | {v['tokens_to_target']:.4g} | {v['flops_to_target']:.4g} | "
                f"{_num(v['token_saving_pct'], '+.1f')} | {_num(v['flops_saving_pct'], '+.1f')} | "
                f"{_num(v['baseline_loss_at_equal_flops'])} | {_num(v['loss_gain_at_equal_flops'], '+.4f')} |"
            )
    if report.get("frontier"):
        points = ", ".join(f"{p['budget']} ({p['flops']:.4g} FLOPs, {p['loss']:.4f})" for p in report["frontier"])
        lines += [
            "",
            f"Against the baseline frontier ({points}; each a complete schedule, seeds averaged): the FLOPs the "
            "frontier needs for the run's final loss (interpolated in log FLOPs) and the saving against the "
            "run's own FLOPs:",
            "",
            "| run | final loss | FLOPs | frontier FLOPs for that loss | saving % |",
            "|---|---|---|---|---|",
        ]
        for e in report["runs"]:
            v = e["vs_frontier"]
            needed = _num(v["frontier_flops"], ".4g") if v["frontier_flops"] is not None else v["note"]
            lines.append(
                f"| {e['name']} | {_num(v.get('final_loss'))} | {e['flops']:.4g} | {needed} | "
                f"{_num(v['frontier_saving_pct'], '+.1f')} |"
            )
    staged = [e for e in report["runs"] if len(e["stages"]) > 1]
    if staged:
        lines += [
            "",
            "Per stage:",
            "",
            "| run / stage | starts at tokens | tokens | FLOPs | trainable params | peak mem (MiB) | held-out loss "
            "| model states (MiB) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in staged:
            for s in e["stages"]:
                lines.append(
                    f"| {e['name']} / {s['name']} | {s['start_tokens']:.4g} | {s['tokens']:.4g} | {s['flops']:.4g} | "
                    f"{s['params_trainable'] or 0:,} | {_mib(s['peak_memory_bytes'])} | {_num(s['final_eval_loss'])} "
                    f"| {_mib(s['model_state_bytes'])} |"
                )
    if report["arms"]:
        lines += [
            "",
            "Arms over seeds (mean [min, max]):",
            "",
            "| arm | seeds | final held-out loss | FLOPs saving % | token saving % | gain at equal FLOPs (nats) "
            "| saving vs frontier % | loss − baseline's, same seed (nats) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for a in report["arms"]:
            lines.append(
                f"| {a['arm']} | {a['seeds']} | {spread(a['final_eval_loss'], '.4f')} | "
                f"{spread(a['flops_saving_pct'], '+.1f')} | {spread(a['token_saving_pct'], '+.1f')} | "
                f"{spread(a.get('loss_gain_at_equal_flops'), '+.4f')} | {spread(a.get('frontier_saving_pct'), '+.1f')} | "
                f"{spread(a.get('paired_loss_diff'), '+.4f')} |"
            )
    tasks = sorted({t for e in report["runs"] for t in e["downstream"]})
    if tasks:
        lines += ["", "Downstream (`bigtrain-eval`, accuracy):", "", "| run | " + " | ".join(tasks) + " |"]
        lines.append("|---|" + "---|" * len(tasks))
        for e in report["runs"]:
            lines.append(f"| {e['name']} | " + " | ".join(_num(e["downstream"].get(t), ".3f") for t in tasks) + " |")
    lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in plots], ""]
    return "\n".join(lines)
