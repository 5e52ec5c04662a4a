#!/usr/bin/env bash
# The test command (README, .ci/run): set up (tools/setup.sh), bring up the local Slurm test
# cluster (tools/slurm-cluster.sh; needs root, as in CI), and run the whole suite on
# BIGTRAIN_TEST_WORKERS pytest-xdist workers (default 2; 0: in this process), one test file to a
# worker. Extra arguments go to pytest, e.g. `bash tools/test.sh -k trainer`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
if [ "${BIGTRAIN_NO_SLURM:-0}" != 1 ]; then
  bash tools/slurm-cluster.sh up
  eval "$(bash tools/slurm-cluster.sh env)"
fi
.venv/bin/ruff check bigtrain tests tools
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${BIGTRAIN_TEST_WORKERS:-2}" --dist loadfile \
  --durations 25 "$@"
