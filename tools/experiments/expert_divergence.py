"""How far apart a bigtrain MoE export's experts are: per MoE layer, the mean over expert pairs of
||W_i - W_j|| / ||W_i|| for the experts' gate projection (w1). Copies (a fresh upcycle) read 0; independent
random initialisations read about sqrt(2).

    .venv/bin/python tools/experiments/expert_divergence.py runs/experiments/upcycle/upcycle-8x2-seed*/moe/hf

Prints one line per export and one for all of them (mean [min, max] over layers and exports).
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
from pathlib import Path

from safetensors.torch import load_file

EXPERT_W1 = re.compile(r"layers\.(\d+)\..*experts\.(\d+)\.w1\.weight$")


def layer_divergence(export: Path) -> list[float]:
    weights: dict[int, dict[int, object]] = {}
    for name, tensor in load_file(export / "model.safetensors").items():
        if m := EXPERT_W1.search(name):
            weights.setdefault(int(m.group(1)), {})[int(m.group(2))] = tensor.float()
    if not weights:
        raise SystemExit(f"error: {export}: no MoE experts (…experts.N.w1.weight) in model.safetensors")
    out = []
    for layer in sorted(weights):
        ws = [weights[layer][e] for e in sorted(weights[layer])]
        out.append(statistics.fmean(float((a - b).norm() / a.norm()) for a, b in itertools.combinations(ws, 2)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", type=Path)
    args = parser.parse_args()
    every = []
    for export in args.exports:
        values = layer_divergence(export)
        every += values
        print(f"{export}: " + " ".join(f"{v:.3f}" for v in values))
    print(f"all: {statistics.fmean(every):.3f} [{min(every):.3f}, {max(every):.3f}] over {len(every)} layers")


if __name__ == "__main__":
    main()
