"""The report's figures (matplotlib, Agg): one colour per arm (the seeds of an arm share it and one legend
entry), growth points as dotted lines, units on axes, the legend beside the axes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bigtrain.report.runs import Point, Run, model_state_bytes
from bigtrain.report.tables import arm_name

# x axes of the loss plots: (file stem, Point attribute, axis label, log-x)
LOSS_AXES = (
    ("loss_vs_tokens", "tokens", "training tokens", True),
    ("loss_vs_flops", "flops", "training FLOPs (from run.json flops_per_token x tokens)", True),
    ("loss_vs_wall", "wall_s", "training wall time (s, logged step times)", False),
)
GROWTH_INDEX = {"tokens": 1, "flops": 2, "wall_s": 3}
FAINT_TRAIN_LOSS_UP_TO = 8  # runs; past that the training-loss traces only hide the held-out curves


def colours(n: int) -> list:
    """n distinct colours: matplotlib's default cycle, or tab20's 20 when there are more than its 10."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if n > len(cycle):
        cycle = list(plt.get_cmap("tab20").colors)
    return [cycle[i % len(cycle)] for i in range(n)]


def arm_styles(runs: list[Run]) -> list[tuple[str, str]]:
    """(colour, legend label) per run: one colour per arm in order of first appearance; the label names the
    arm and its number of seeds (the run's own name when it is alone)."""
    counts = Counter(arm_name(r.name) for r in runs)  # insertion-ordered: arms in order of first appearance
    palette = dict(zip(counts, colours(len(counts)), strict=True))
    styles = []
    for run in runs:
        arm = arm_name(run.name)
        styles.append((palette[arm], f"{arm} ({counts[arm]} seeds)" if counts[arm] > 1 else run.name))
    return styles


def _xy(points: list[Point], axis: str) -> tuple[list[float], list[float]]:
    return [getattr(p, axis) for p in points], [p.value for p in points]


def _growth_lines(ax: plt.Axes, run: Run, axis: str, colour: str) -> None:
    for i, point in enumerate(run.growth_points):
        ax.axvline(
            point[GROWTH_INDEX[axis]], color=colour, linestyle=":", linewidth=1.2, label="growth" if i == 0 else None
        )


def loss_plot(runs: list[Run], axis: str, label: str, log_x: bool, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    faint = len(runs) <= FAINT_TRAIN_LOSS_UP_TO
    for run, (colour, name) in zip(runs, arm_styles(runs), strict=True):
        x, y = _xy(run.train, axis)
        if x and faint:
            ax.plot(x, y, color=colour, alpha=0.35, linewidth=1.0)
        x, y = _xy(run.eval, axis)
        if x:
            ax.plot(x, y, color=colour, marker="o", markersize=3.5, linewidth=1.5, label=f"{name} (held-out)")
        else:
            ax.plot([], [], color=colour, label=f"{name} (no eval points)")
        x, y = _xy(run.grown_eval, axis)
        if x:
            ax.plot(x, y, color=colour, marker="*", markersize=11, linestyle="none", label="as grown (before step 1)")
        _growth_lines(ax, run, axis, colour)
    if log_x and any(getattr(p, axis) > 0 for r in runs for p in r.train):
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("held-out loss (markers)" + (" and training loss (faint)" if faint else ""))
    ax.grid(True, alpha=0.3, which="both")
    _dedup_legend(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def lr_plot(runs: list[Run], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 4), dpi=110)
    for run, (colour, name) in zip(runs, arm_styles(runs), strict=True):
        x, y = _xy(run.lr, "tokens")
        ax.plot(x, y, color=colour, linewidth=1.5, label=name)
        _growth_lines(ax, run, "tokens", colour)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate")
    ax.grid(True, alpha=0.3)
    _dedup_legend(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def stages_plot(runs: list[Run], path: Path) -> None:
    """Peak memory, model states and trainable parameters per stage (a plain run is one stage)."""
    labels, memory, states, trainable, bar_colours = [], [], [], [], []
    for run, (colour, _) in zip(runs, arm_styles(runs), strict=True):
        for part in run.parts:
            labels.append(run.name if not run.staged else f"{run.name}/{part.name}")
            memory.append((part.info.get("memory", {}).get("peak_bytes") or 0) / 2**20)
            states.append((model_state_bytes(part.info) or 0) / 2**20)
            trainable.append((part.info.get("params_trainable") or 0) / 1e6)
            bar_colours.append(colour)
    fig, axes = plt.subplots(1, 3, figsize=(15, max(3.0, 0.35 * len(labels) + 1.5)), dpi=110)
    xlabels = (
        "peak memory per rank (MiB; CPU: peak RSS, GPU: max allocated)",
        "model states per rank (MiB: parameters,\ngradients, optimizer states)",
        "trainable parameters (millions)",
    )
    ys = list(range(len(labels)))
    for i, (ax, values, xlabel) in enumerate(zip(axes, (memory, states, trainable), xlabels, strict=True)):
        ax.barh(ys, values, color=bar_colours)
        ax.set_yticks(ys, labels if i == 0 else [])
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("per stage: peak memory, model states and trainable parameters")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _dedup_legend(ax: plt.Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, object] = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    if seen:
        ax.legend(list(seen.values()), list(seen.keys()), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def write_plots(runs: list[Run], out: Path) -> list[Path]:
    paths = []
    for stem, axis, label, log_x in LOSS_AXES:
        paths.append(out / f"{stem}.png")
        loss_plot(runs, axis, label, log_x, paths[-1])
    paths.append(out / "lr.png")
    lr_plot(runs, paths[-1])
    paths.append(out / "stages.png")
    stages_plot(runs, paths[-1])
    return paths
