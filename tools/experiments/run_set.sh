#!/usr/bin/env bash
# The CPU evidence set: every experiment of docs/results.md, each through run.sh, J at a time.
#
#   tools/experiments/run_set.sh [--seeds N] [--jobs J] [NAME ...]
#
# Default: the five experiments issue 16 reruns (gstack width ffn-middle step family), 3 seeds, 2 at a time
# (one rank per run, one core each: the 2-core machine's whole). Longest first, so that the lanes end
# together. Each experiment's log goes to runs/experiments/NAME.log and its report to
# runs/experiments/NAME/report; finished runs are skipped, so a rerun resumes. Any other run.sh option
# (--size, --runs, --set) belongs to one experiment: use run.sh for those.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=3 JOBS=2 NAMES=()
while [ $# -gt 0 ]; do
  case $1 in
    --seeds) SEEDS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    -*) sed -n 4p "$0" | sed 's/^# *//' >&2; exit 2 ;;
    *) NAMES+=("$1"); shift ;;
  esac
done
[ ${#NAMES[@]} -gt 0 ] || NAMES=(gstack width ffn-middle step family)
for name in "${NAMES[@]}"; do
  [ -f "recipes/experiments/$name/arms.txt" ] || { echo "error: recipes/experiments/$name: no such experiment" >&2; exit 2; }
done
mkdir -p runs/experiments
export SEEDS
printf '%s\n' "${NAMES[@]}" | xargs -P "$JOBS" -I{} sh -c \
  'echo "[run_set] {} -> runs/experiments/{}.log"; tools/experiments/run.sh {} --seeds "$SEEDS" >runs/experiments/{}.log 2>&1 || { echo "[run_set] {} failed: see runs/experiments/{}.log" >&2; exit 255; }'
echo "[run_set] done: runs/experiments/{$(IFS=,; echo "${NAMES[*]}")}/report"
