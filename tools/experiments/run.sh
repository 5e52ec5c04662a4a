#!/usr/bin/env bash
# Run the arms of a paired experiment, then `bigtrain-report` on them.
#
#   tools/experiments/run.sh NAME [--seeds N] [--size cpu|gpu] [--nproc N] [--runs DIR] [--out DIR] [--arms A,B] [--set KEY=VALUE]...
#
# NAME is a directory of recipes/experiments/ (gstack, step, ffn-middle, family, width): its arms.txt lists
# the arms in run order (`ARM [baseline] [frontier] [source]`: `source`, an arm others grow from;
# `frontier` arms are the baseline frontier, complete schedules at several budgets), and <size>/<ARM>.yaml
# is each arm's recipe. Every arm runs once per seed S=1..N (train.seed=S for the initialisation and the
# growth's draws, data.seed=S for the order of the data, in every stage) into <runs>/<ARM>-seed<S> through
# `bigtrain-run` (finished stages are skipped, so a rerun resumes); the report goes to <out> (default
# <runs>/report). An arm that grows from another arm's run (its init_from under runs/experiments/NAME/,
# e.g. .../base-seed1/hf) grows from that arm's run of the same seed under <runs>: each seed is a whole
# replicate. `--arms A,B`: only those arms, with the baseline, the frontier and the source arms (a new arm
# next to published ones). `--set KEY=VALUE` (repeatable): a recipe override for every arm, e.g. the
# G_stack size trend, the same arms at another width:
#   run.sh gstack --seeds 3 --arms stack,stack-grow50 --runs runs/experiments/gstack-d192 \
#     --set model.hidden_size=192 --set model.num_heads=6 --set model.num_kv_heads=6 --set model.intermediate_size=528
# Environment: NICE (default 5) for the training processes.
set -euo pipefail
cd "$(dirname "$0")/../.."
usage() { sed -n 4p "$0" | sed 's/^# *//' >&2; exit 2; }
[ $# -ge 1 ] || usage
NAME=$1; shift
SEEDS=1 SIZE=cpu NPROC=1 RUNS="" OUT="" ARMS="" SETS=()
while [ $# -gt 0 ]; do
  case $1 in
    --seeds) SEEDS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --nproc) NPROC=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --arms) ARMS=",$2,"; shift 2 ;;
    --set)
      [[ ${2:-} == ?*=* ]] || { echo "error: --set ${2:-}: expected KEY=VALUE" >&2; exit 2; }
      SETS+=("$2"); shift 2 ;;
    *) usage ;;
  esac
done
DIR=recipes/experiments/$NAME
if [ ! -f "$DIR/arms.txt" ]; then
  echo "error: $DIR/arms.txt: no such experiment (known: $(ls recipes/experiments | tr '\n' ' '))" >&2
  exit 2
fi
[ "$SIZE" = cpu ] || [ "$SIZE" = gpu ] || { echo "error: --size $SIZE: cpu or gpu" >&2; exit 2; }
DEFAULT_RUNS=runs/experiments/$NAME$([ "$SIZE" = gpu ] && echo -gpu || true)
RUNS=${RUNS:-$DEFAULT_RUNS}
OUT=${OUT:-$RUNS/report}
BIN=${BIGTRAIN_BIN:-.venv/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false

for arm in ${ARMS//,/ }; do
  grep -qE "^$arm( |$)" "$DIR/arms.txt" || { echo "error: --arms: $arm: not an arm of $DIR/arms.txt" >&2; exit 2; }
done

runs=() frontier=() baseline=""
while read -r arm rest; do
  [ -n "$arm" ] && [ "${arm:0:1}" != "#" ] || continue
  recipe=$DIR/$SIZE/$arm.yaml
  [ -f "$recipe" ] || { echo "error: $recipe: no such arm recipe (listed in $DIR/arms.txt)" >&2; exit 2; }
  is_baseline=0 is_frontier=0 is_source=0
  for word in $rest; do
    case $word in
      baseline) is_baseline=1 ;;
      frontier) is_frontier=1 ;;
      source) is_source=1 ;;
      *) echo "error: $DIR/arms.txt: arm $arm: unknown word $word (baseline, frontier, source)" >&2; exit 2 ;;
    esac
  done
  listed=${ARMS/,$arm,/,}
  if [ -n "$ARMS" ] && [ "$listed" = "$ARMS" ] && [ $is_baseline$is_frontier$is_source = 000 ]; then
    continue
  fi
  # an arm that grows from another arm's run (init_from under the default runs directory, written for seed 1)
  # grows from that arm's run of the same seed, under --runs
  init=$(sed -n 's/^init_from: *\([^ #]*\).*/\1/p' "$recipe")
  from_arm="" from_rest=""
  if [ -n "$init" ] && [ "${init#"$DEFAULT_RUNS"/}" != "$init" ]; then
    rel=${init#"$DEFAULT_RUNS"/}          # e.g. base-seed1/hf, or base-seed1 (the run directory)
    from_run=${rel%%/*} from_rest=${rel#"${rel%%/*}"}
    from_arm=${from_run%-seed*}
  fi
  for seed in $(seq 1 "$SEEDS"); do
    out=$RUNS/$arm-seed$seed
    follow=()
    [ -n "$from_arm" ] && follow=("init_from=$RUNS/$from_arm-seed$seed$from_rest")
    echo "[run.sh] $NAME/$arm seed $seed -> $out"
    nice -n "${NICE:-5}" "$BIN/bigtrain-run" "$recipe" --nproc "$NPROC" ${SETS[@]:+"${SETS[@]}"} ${follow[@]:+"${follow[@]}"} output_dir="$out" train.seed="$seed" data.seed="$seed"
    runs+=("$out")
    [ $is_baseline = 1 ] && [ -z "$baseline" ] && baseline=$out
    [ $is_frontier = 1 ] && frontier+=("$out")
  done
done < "$DIR/arms.txt"

"$BIN/bigtrain-report" "${runs[@]}" ${baseline:+--baseline "$baseline"} ${frontier[@]:+--frontier "${frontier[@]}"} --out "$OUT"
