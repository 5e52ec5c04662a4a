#!/usr/bin/env bash
# The test command (README, .ci/run): set up (tools/setup.sh) while the local Slurm test cluster
# comes up (tools/slurm-cluster.sh; needs root, as in CI), and run the whole suite on
# BIGTRAIN_TEST_WORKERS pytest-xdist workers (default 2; 0: in this process), one test file to a
# worker, the longest files first (tests/conftest.py). Extra arguments go to pytest, e.g.
# `bash tools/test.sh -k trainer`.
#
# A cluster this script brought up is stopped when the suite ends (pass or fail, or Ctrl-C), unless
# `--keep-cluster` is given (e.g. to rerun single tests against it); one that was already up before is
# left as it was.
set -euo pipefail
cd "$(dirname "$0")/.."

keep_cluster=0
args=()
for a in "$@"; do
  if [ "$a" = --keep-cluster ]; then keep_cluster=1; else args+=("$a"); fi
done

# the Slurm test cluster comes up (packages, daemons) while tools/setup.sh installs
cluster_log=$(mktemp)
cluster_up=""
if [ "${BIGTRAIN_NO_SLURM:-0}" != 1 ]; then
  if ! bash tools/slurm-cluster.sh status >/dev/null 2>&1 && [ $keep_cluster = 0 ]; then
    # ours to stop: set before `up`, so a cluster that fails half way up is stopped as well
    trap 'bash tools/slurm-cluster.sh down || true' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi
  bash tools/slurm-cluster.sh up >"$cluster_log" 2>&1 &
  cluster_up=$!
fi
bash tools/setup.sh # also builds DeepSpeed's CPU op, which the first ranks would otherwise wait on
if [ -n "$cluster_up" ]; then
  wait $cluster_up || { cat "$cluster_log" >&2; exit 1; }
  cat "$cluster_log" >&2
  eval "$(bash tools/slurm-cluster.sh env)"
fi
rm -f "$cluster_log"
.venv/bin/ruff check bigtrain tests tools
.venv/bin/ruff format --check bigtrain tests tools
# /dev/shm is RAM: DeepSpeed shm all-reduce files left by earlier runs' processes would starve this one
.venv/bin/python tools/clean_shm.py
status=0
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${BIGTRAIN_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder \
  --durations 25 ${args[@]+"${args[@]}"} || status=$?
.venv/bin/python tools/clean_shm.py || true
exit $status
