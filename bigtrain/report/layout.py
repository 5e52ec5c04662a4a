"""What `bigtrain-layout` shows: a model's per-layer sizes and parameters against its uniform reference."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from bigtrain.config import ModelSpec
from bigtrain.model.counting import embedding_params, layer_params, total_params
from bigtrain.model.layout import plan_layers


def layout_report(spec: ModelSpec, vocab_size: int | None = None, vocab_from: str | None = None) -> dict[str, Any]:
    """Per-layer sizes and counts, totals, and the uniform reference's total (same vocab and embeddings).
    `vocab_size`: the embedding rows when `spec` leaves them to the tokenizer (`vocab_from` says whose);
    without either, 32,000 is assumed and the report says so."""
    plan = plan_layers(spec)
    cfg = spec.build_config(vocab_size)
    reference = spec.model_copy(update={"layout": type(spec.layout)()}).build_config(vocab_size)
    layers = []
    for i in range(cfg.num_hidden_layers):
        row: dict[str, Any] = {
            "layer": i,
            "ffn": cfg.layer_intermediate_sizes[i],
            "q_heads": cfg.layer_num_attention_heads[i],
            "kv_heads": cfg.layer_num_key_value_heads[i],
            "params": layer_params(cfg, i),
        }
        if plan.ffn_mult is not None and plan.attn_mult is not None and i not in plan.pinned:
            row["ffn_mult"], row["attn_mult"] = plan.ffn_mult[i], plan.attn_mult[i]
        row["pinned"] = i in plan.pinned
        layers.append(row)
    total, ref = total_params(cfg), total_params(reference)
    return {
        "scheme": spec.layout.scheme,
        "hidden_size": cfg.hidden_size,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "vocab_assumed": spec.vocab_size is None and vocab_size is None,
        "vocab_from": None if spec.vocab_size else vocab_from,
        "total_params": total,
        "reference_params": ref,
        "difference_pct": 100.0 * (total - ref) / ref,
        "embedding_params": embedding_params(cfg),
        "match_scale": plan.scale,
        "reference": {
            "ffn": spec.intermediate_size,
            "q_heads": spec.num_heads,
            "kv_heads": spec.num_kv_heads or spec.num_heads,
        },
        "layers": layers,
    }


def format_layout(report: dict[str, Any]) -> str:
    """The per-layer table and the totals, as plain text."""
    scaled = any("ffn_mult" in row for row in report["layers"])
    head = f"{'layer':>5} {'ffn':>7} {'q_heads':>7} {'kv_heads':>8} {'params':>13}"
    head += f" {'beta':>5} {'alpha':>5}" if scaled else ""
    lines = [head]
    for row in report["layers"]:
        line = f"{row['layer']:>5} {row['ffn']:>7} {row['q_heads']:>7} {row['kv_heads']:>8} {row['params']:>13,}"
        if "ffn_mult" in row:
            line += f" {row['ffn_mult']:>5.2f} {row['attn_mult']:>5.2f}"
        elif row["pinned"]:
            line += "  (frame)"
        lines.append(line)
    ref = report["reference"]
    vocab = f"{report['vocab_size']}"
    if report["vocab_assumed"]:
        vocab += " (assumed: the recipe leaves it to the tokenizer)"
    elif report.get("vocab_from"):
        vocab += f" ({report['vocab_from']})"
    lines += [
        "",
        f"scheme {report['scheme']}; hidden {report['hidden_size']}, head_dim {report['head_dim']}, vocab {vocab}",
        f"reference (uniform): ffn {ref['ffn']}, q_heads {ref['q_heads']}, kv_heads {ref['kv_heads']} per layer",
    ]
    if report["match_scale"] is not None:
        lines.append(f"match_params: multipliers scaled by {report['match_scale']:.4f}")
    lines += [
        f"embeddings + head: {report['embedding_params']:>15,}",
        f"total parameters:  {report['total_params']:>15,}",
        f"uniform reference: {report['reference_params']:>15,}  ({report['difference_pct']:+.3f}%)",
    ]
    return "\n".join(lines)


def plot_layout(report: dict[str, Any], path: str | Path) -> None:
    """Per-layer FFN width and query / kv width as bars, the reference as dashed lines; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [row["layer"] for row in report["layers"]]
    head_dim = report["head_dim"]
    ffn = [row["ffn"] for row in report["layers"]]
    query = [row["q_heads"] * head_dim for row in report["layers"]]
    kv = [row["kv_heads"] * head_dim for row in report["layers"]]
    ref = report["reference"]

    fig, (ax_ffn, ax_attn) = plt.subplots(2, 1, sharex=True, figsize=(max(7.0, 0.32 * len(layers) + 4), 5.5))
    ax_ffn.bar(layers, ffn, color="tab:blue", label="FFN width")
    ax_ffn.axhline(ref["ffn"], color="black", ls="--", lw=1, label=f"uniform ({ref['ffn']})")
    no_ffn = [i for i, w in zip(layers, ffn) if w == 0]
    if no_ffn:
        ax_ffn.plot(no_ffn, [0] * len(no_ffn), "x", color="tab:red", ms=8, clip_on=False, label="no FFN")
    ax_ffn.set_ylabel("FFN width")
    width = 0.4
    ax_attn.bar([i - width / 2 for i in layers], query, width, color="tab:orange", label="query width")
    ax_attn.bar([i + width / 2 for i in layers], kv, width, color="tab:green", label="kv width")
    ax_attn.axhline(ref["q_heads"] * head_dim, color="black", ls="--", lw=1, label="uniform query width")
    ax_attn.set_ylabel(f"width (heads x {head_dim})")
    ax_attn.set_xlabel("layer")
    ax_attn.set_xticks(layers)
    for ax in (ax_ffn, ax_attn):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(
        f"{report['scheme']}: {report['total_params'] / 1e6:,.1f}M parameters "
        f"({report['difference_pct']:+.3f}% vs uniform {report['reference_params'] / 1e6:,.1f}M)"
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".").lower() or "png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
