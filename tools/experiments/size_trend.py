"""One experiment's arms at several model sizes, side by side: does the saving grow with size?

    .venv/bin/python tools/experiments/size_trend.py d=64=runs/experiments/gstack-d64/report \
        d=128=runs/experiments/gstack-d128/report d=192=runs/experiments/gstack-d192/report \
        --arms stack,stack-grow50 --out docs/results/gstack-size

Each LABEL=DIR is a `bigtrain-report` output (its report.json), all of one experiment run at one size each
(e.g. `tools/experiments/run.sh gstack --set model.hidden_size=...`). Writes DIR/trend.md, a table per size
of the frontier's 1x loss and, per arm, the saving against that size's frontier (with how many seeds lie
inside the frontier, when not all do) and the loss difference paired by seed (mean [min, max] over
seeds), and DIR/trend.png, the savings against size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bigtrain.report.tables import arm_name, spread


def load(spec: str) -> tuple[str, dict[str, Any]]:
    label, sep, path = spec.rpartition("=")
    if not sep or not label:
        raise SystemExit(f"error: {spec}: expected LABEL=REPORT_DIR")
    report = Path(path) / "report.json" if Path(path).is_dir() else Path(path)
    if not report.is_file():
        raise SystemExit(f"error: {report}: no such report (bigtrain-report --out writes report.json)")
    data = json.loads(report.read_text())
    if not data.get("frontier"):
        raise SystemExit(f"error: {report}: the report has no frontier (bigtrain-report --frontier)")
    return label, data


def saving_cell(arm: dict[str, Any]) -> str:
    """The saving's spread, and how many seeds it covers: a seed whose loss lies outside the frontier (below
    its largest budget's, or above its smallest's) has no saving to average."""
    stat, seeds = arm.get("frontier_saving_pct"), arm.get("seeds", 0)
    if not stat:
        return f"— (all {seeds} seeds outside the frontier)"
    if stat["n"] < seeds:
        return f"{spread(stat, '+.1f')} ({stat['n']} of {seeds} seeds inside the frontier)"
    return spread(stat, "+.1f")


def trend_rows(sizes: list[tuple[str, dict[str, Any]]], arms: list[str]) -> list[dict[str, Any]]:
    """Per size: the frontier point at the baseline's own budget, and each arm's statistics."""
    rows = []
    for label, data in sizes:
        by_arm = {a["arm"]: a for a in data["arms"]}
        missing = [arm for arm in arms if arm not in by_arm]
        if missing:
            raise SystemExit(f"error: {label}: no arm {', '.join(missing)} in the report (has {', '.join(by_arm)})")
        base = arm_name(data.get("baseline") or "")
        point = next((p for p in data["frontier"] if p["budget"] == base), data["frontier"][-1])
        rows.append(dict(label=label, baseline=point, arms={arm: by_arm[arm] for arm in arms}))
    return rows


def markdown(rows: list[dict[str, Any]], arms: list[str]) -> str:
    head = ["size", "baseline: FLOPs, loss (seeds' mean)"]
    for arm in arms:
        head += [f"{arm}: final loss", f"{arm}: vs baseline, same seed (nats)", f"{arm}: saving vs the frontier (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        b = row["baseline"]
        cells = [row["label"], f"{b['flops']:.3g}, {b['loss']:.4f}"]
        for arm in arms:
            a = row["arms"][arm]
            cells += [
                spread(a.get("final_eval_loss"), ".4f"),
                spread(a.get("paired_loss_diff"), "+.3f"),
                saving_cell(a),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], arms: list[str], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = range(len(rows))
    for arm in arms:
        stats = [row["arms"][arm].get("frontier_saving_pct") or {} for row in rows]
        mean = [s.get("mean", float("nan")) for s in stats]
        low = [m - s.get("min", m) for m, s in zip(mean, stats, strict=True)]
        high = [s.get("max", m) - m for m, s in zip(mean, stats, strict=True)]
        drawn = ax.errorbar(xs, mean, yerr=[low, high], marker="o", capsize=4, label=arm)
        for x, row, stat in zip(xs, rows, stats, strict=True):
            seeds = row["arms"][arm].get("seeds", 0)
            if stat and stat.get("n", seeds) < seeds:  # the others lie outside the frontier
                ax.annotate(
                    f"{stat['n']}/{seeds} seeds",
                    (x, stat["mean"]),
                    textcoords="offset points",
                    xytext=(6, -12),
                    fontsize=8,
                    color=drawn.lines[0].get_color(),
                )
        if not any(stats):
            drawn.set_label(f"{arm} (every seed outside the frontier)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(list(xs), [row["label"] for row in rows])
    ax.set_xlabel("model size (bars: min and max over seeds)")
    ax.set_ylabel("FLOPs saving vs the frontier (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="+", metavar="LABEL=REPORT_DIR")
    parser.add_argument("--arms", required=True, help="comma-separated arms to compare across sizes")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    rows = trend_rows([load(spec) for spec in args.sizes], arms)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, arms)
    (args.out / "trend.md").write_text(table)
    plot(rows, arms, args.out / "trend.png")
    print(table, end="")


if __name__ == "__main__":
    main()
