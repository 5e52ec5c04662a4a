"""Per-file wall times of a test-suite run, from pytest's JUnit XML, as a Markdown table (docs/testing.md).

    bash tools/test.sh --junitxml=/tmp/suite.xml && python tools/suite_times.py /tmp/suite.xml [--before OLD.xml]
    python tools/suite_times.py /tmp/suite.xml --save tests/file_seconds.json

With two or more xdist workers the files run side by side: the suite's wall time is about the busiest
worker's sum, not the total printed at the bottom. `--save` writes the per-file seconds that
tests/conftest.py hands the files out by, longest first (refresh it when files are added or change much).
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def file_times(xml: Path) -> dict[str, float]:
    """Seconds per test file: the sum of its test cases' times (setup and teardown included)."""
    times: dict[str, float] = defaultdict(float)
    for case in ET.parse(xml).getroot().iter("testcase"):
        parts = (case.get("classname") or "").split(".")  # tests.test_x[.TestClass]
        module = next((i for i, part in enumerate(parts) if part.startswith("test_")), len(parts) - 1)
        name = case.get("file") or "/".join(parts[: module + 1]) + ".py"
        times[name] += float(case.get("time") or 0.0)
    return dict(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("xml", type=Path)
    p.add_argument("--before", type=Path, help="an earlier run's XML: a before/after column")
    p.add_argument("--save", type=Path, help="also write {file: seconds} here (JSON, longest first)")
    args = p.parse_args()
    now = file_times(args.xml)
    if args.save:
        ranked = dict(sorted(((k, round(v)) for k, v in now.items()), key=lambda kv: (-kv[1], kv[0])))
        args.save.write_text(json.dumps(ranked, indent=1) + "\n")
    before = file_times(args.before) if args.before else {}
    head = "| file | before (s) | now (s) |" if before else "| file | seconds |"
    print(head)
    print("|---|---|---|" if before else "|---|---|")
    for name, t in sorted(now.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {before[name]:.0f} | {t:.0f} |" if before and name in before else f"| {name} | {t:.0f} |")
    print(
        f"| total (all files, one after another) | {sum(now.values()):.0f} |"
        if not before
        else f"| total | {sum(before.values()):.0f} | {sum(now.values()):.0f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
