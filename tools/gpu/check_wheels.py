"""Before a GPU session: every requirement of every carried wheel is carried too or already in the GPU image.

The device cannot reach a registry, so a wheel whose dependency is neither in `.whl/` nor in the image fails
there, minutes into a rare session; this fails here instead, listing what is missing. The image's packages
are the "Packages:" list of the device tool's KINDS.md for the kind (default nvidia-h200).

    python tools/gpu/check_wheels.py [--wheels .whl] [--kinds /work/.library/device/KINDS.md] [--python 3.12]
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def image_packages(kinds: Path, kind: str) -> set[str]:
    for line in kinds.read_text().splitlines():
        if line.startswith(f"{kind}:") and "Packages:" in line:
            names = line.split("Packages:", 1)[1].rstrip(".").split(",")
            return {canonicalize_name(n.strip()) for n in names if n.strip()}
    raise SystemExit(f"error: {kinds}: no 'Packages:' line for kind {kind!r}")


def wheel_requirements(wheel: Path) -> tuple[str, list[Requirement]]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    name = re.search(r"^Name: (.+)$", text, re.M).group(1).strip()  # type: ignore[union-attr]
    reqs = [
        Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines() if line.startswith("Requires-Dist:")
    ]
    return canonicalize_name(name), reqs


def missing(wheels: Path, have: set[str], python: str) -> list[str]:
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0", "extra": ""}
    env.update(sys_platform="linux", platform_system="Linux", os_name="posix")
    found = [wheel_requirements(w) for w in sorted(wheels.glob("*.whl"))]
    carried = {name for name, _ in found}
    problems = []
    for name, reqs in found:
        for r in reqs:
            if r.marker is not None and not r.marker.evaluate(env):
                continue  # an extra, another platform or Python
            dep = canonicalize_name(r.name)
            if dep not in carried and dep not in have:
                problems.append(f"{name} needs {r} (not in {wheels}/, not in the image)")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheels", type=Path, default=Path(".whl"))
    p.add_argument("--kinds", type=Path, default=Path("/work/.library/device/KINDS.md"))
    p.add_argument("--kind", default="nvidia-h200")
    p.add_argument("--python", default="3.12", help="the image's Python (KINDS.md: 3.12)")
    args = p.parse_args()
    if not args.kinds.is_file():
        print(f"error: {args.kinds}: no such file (the device tool's list of the image's packages)", file=sys.stderr)
        return 2
    if not any(args.wheels.glob("*.whl")):
        print(f"error: {args.wheels}: no wheels (run tools/gpu/prepare.sh)", file=sys.stderr)
        return 2
    problems = missing(args.wheels, image_packages(args.kinds, args.kind), args.python)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if not problems:
        print(
            f"check_wheels: every requirement of {len(list(args.wheels.glob('*.whl')))} wheels is carried or in the image"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
