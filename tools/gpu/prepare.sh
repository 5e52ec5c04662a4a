#!/usr/bin/env bash
# Run on the development machine (it reaches the package registry; the GPU machine does not) before a GPU
# session: fills .whl/ as /work/shared/tools/gpu-wheels.sh does, adds liger-kernel (pure Python + Triton,
# which the GPU image's torch brings), and copies the demo data into .gpu_data/ as real files (data/ may be a
# symlink that does not travel). Then carry [".whl", ".gpu_data"] in the run call (see run_gpu_checks.sh).
set -eu
cd "$(dirname "$0")/../.."
WHEELS=${GPU_WHEELS:-/work/shared/tools/gpu-wheels.sh}
# gpu-wheels.sh appends /.whl/ to .git/info/exclude, which a worktree does not have (.git is a file there);
# .gitignore already ignores /.whl/, so that one line is dropped
sed '/info\/exclude/d' "$WHEELS" | bash
pin=$(grep -i '^liger[-_]kernel==' tools/constraints.txt 2>/dev/null | cut -d= -f3 || true)
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "liger-kernel==${LIGER_VERSION:-${pin:-0.8.5}}"
rm -rf .gpu_data && cp -rL data .gpu_data && rm -rf .gpu_data/shakespeare/*/__pycache__
grep -qxF '/.gpu_data/' .gitignore || echo "note: add /.gpu_data/ to .gitignore" >&2
du -sh .whl .gpu_data
# every carried wheel's requirements are in .whl/ or in the GPU image: fail here, not minutes into a session
.venv/bin/python tools/gpu/check_wheels.py --wheels .whl
