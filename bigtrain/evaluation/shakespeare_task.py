"""The offline demo task: next-line multiple choice over held-out Shakespeare.

Each item gives two consecutive lines of a held-out text (Hamlet, The Tempest, the Sonnets: the demo's eval
split, never trained on) and asks which of four lines comes next: the true one or three lines drawn from
elsewhere in the same text. Chance is 0.25; a model that has learned verse and dialogue does better.
`python -m bigtrain.evaluation.shakespeare_task data/shakespeare/eval OUT.jsonl` rebuilds the shipped file.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "tasks" / "shakespeare_next_line.jsonl"


def text_lines(path: Path) -> list[str]:
    """Lines of verse/dialogue: non-blank, not stage directions or headings, of some length."""
    out = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if len(line) < 20 or line.isupper() or line.startswith(("[", "*", "ACT", "SCENE", "Enter", "Exit")):
            continue
        out.append(line)
    return out


def build(eval_dir: Path, per_file: int = 100, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for path in sorted(eval_dir.glob("*.txt")):
        lines = text_lines(path)
        # skip the Gutenberg front and back matter: keep the middle 80% of the text
        lo, hi = len(lines) // 10, len(lines) * 9 // 10
        starts = rng.sample(range(lo, hi - 3), min(per_file, hi - lo - 3))
        for i in starts:
            context, answer = lines[i] + "\n" + lines[i + 1] + "\n", lines[i + 2]
            far = [j for j in range(lo, hi) if abs(j - i) > 20 and lines[j] != answer]
            choices = [answer, *(lines[j] for j in rng.sample(far, 3))]
            rng.shuffle(choices)
            items.append({"source": path.stem, "context": context, "choices": choices, "label": choices.index(answer)})
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path, help="directory of held-out .txt files (data/shakespeare/eval)")
    parser.add_argument("out", type=Path, nargs="?", default=SHIPPED)
    parser.add_argument("--per-file", type=int, default=100)
    args = parser.parse_args()
    items = build(args.eval_dir, args.per_file)
    args.out.write_text("".join(json.dumps(x) + "\n" for x in items))
    print(f"{args.out}: {len(items)} items")


if __name__ == "__main__":
    main()
