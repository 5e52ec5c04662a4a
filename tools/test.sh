#!/usr/bin/env bash
# The test command (README, .ci/run): set up (tools/setup.sh), bring up the local Slurm test
# cluster (tools/slurm-cluster.sh; needs root, as in CI), and run the whole suite on
# BIGTRAIN_TEST_WORKERS pytest-xdist workers (default 2; 0: in this process), one test file to a
# worker. Extra arguments go to pytest, e.g. `bash tools/test.sh -k trainer`.
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

bash tools/setup.sh
# DeepSpeed's CPU ops compile on a machine's first use (~2.5 min): build them while the cluster comes up
ops_log=$(mktemp)
.venv/bin/python tools/build_ds_ops.py > "$ops_log" 2>&1 &
build_ops=$!
if [ "${BIGTRAIN_NO_SLURM:-0}" != 1 ]; then
  if ! bash tools/slurm-cluster.sh status >/dev/null 2>&1 && [ $keep_cluster = 0 ]; then
    # ours to stop: set before `up`, so a cluster that fails half way up is stopped as well
    trap 'bash tools/slurm-cluster.sh down || true' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi
  bash tools/slurm-cluster.sh up
  eval "$(bash tools/slurm-cluster.sh env)"
fi
.venv/bin/ruff check bigtrain tests tools
.venv/bin/ruff format --check bigtrain tests tools
# /dev/shm is RAM: shm all-reduce files left by killed ranks of earlier runs would starve this one
.venv/bin/python tools/clean_shm.py
wait $build_ops || { echo "tools/build_ds_ops.py failed:" >&2; cat "$ops_log" >&2; exit 1; }
grep build_ds_ops "$ops_log" || true
status=0
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${BIGTRAIN_TEST_WORKERS:-2}" --dist loadfile \
  --durations 25 ${args[@]+"${args[@]}"} || status=$?
.venv/bin/python tools/clean_shm.py || true
exit $status
