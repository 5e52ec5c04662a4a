#!/usr/bin/env bash
# Issue 11 section 3: the GPU session in one script (~10 minutes on one H100/H200). Every output goes under $OUT.
#
# Before the session, on the development machine (registry access; the device has none):
#   bash tools/gpu/prepare.sh          # .whl/ (gpu-wheels.sh + liger-kernel) and .gpu_data/ (demo data, real files)
# Then one device call, carrying both:
#   run(command="bash tools/gpu/run_gpu_checks.sh", carry=[".whl", ".gpu_data"], timeout_s=600)
# A rerun can name sections (in this order by default): install env demo smoke bench profile stepmem
#   bash tools/gpu/run_gpu_checks.sh install bench
# Dry mode (any machine, no GPU): checks the plumbing — every recipe override parses against this checkout's
# schema, the python entry points answer --help, the commands are printed, nothing is trained:
#   bash tools/gpu/run_gpu_checks.sh --dry
#
# A failing section is recorded (summary.tsv: section, exit code, seconds) and the next one runs.
set -uo pipefail

cd "$(dirname "$0")/../.."
DRY=0
if [[ "${1:-}" == "--dry" ]]; then DRY=1; shift; fi
SECTIONS=("$@")
[[ ${#SECTIONS[@]} -eq 0 ]] && SECTIONS=(install env demo smoke bench profile stepmem)
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [[ $DRY -eq 1 && -x .venv/bin/python ]]; then PY=.venv/bin/python; fi
SCRATCH=${SCRATCH:-/tmp/bigtrain-gpu}  # checkpoints and weights: large, never under $OUT
mkdir -p "$SCRATCH"
SUMMARY="$OUT/summary.tsv"
[[ -f "$SUMMARY" ]] || printf 'section\trc\tseconds\n' > "$SUMMARY"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# the wheels land in /tmp/site (gpu-wheels.sh's header); the checkout itself is bigtrain
[[ $DRY -eq 0 ]] && export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

# section NAME TIMEOUT_S COMMAND...: run (or, dry, print) with a time limit; its output to $OUT/NAME.log
section() {
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$OUT/commands.txt"
  if [[ $DRY -eq 1 ]]; then return 0; fi
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$SUMMARY"
  echo "    -> rc=$rc in $((SECONDS - t0))s; last lines:"; tail -n 5 "$OUT/$name.log" | sed 's/^/    /'
  return 0
}

# overrides are checked against the schema in dry mode: a key this checkout does not know is reported
check_overrides() {
  local recipe=$1; shift
  "$PY" - "$recipe" "$@" <<'EOF'
import sys
from bigtrain.config import load_recipe
try:
    load_recipe(sys.argv[1], sys.argv[2:])
    print("    overrides ok:", " ".join(sys.argv[2:]))
except Exception as e:  # noqa: BLE001 - report, the dry run goes on
    print("    OVERRIDES REJECTED:", str(e).splitlines()[0])
    sys.exit(1)
EOF
}

DRY_PROBLEMS=0
dry_check() { if [[ $DRY -eq 1 ]]; then check_overrides "$@" || DRY_PROBLEMS=$((DRY_PROBLEMS + 1)); fi; }

SHAKESPEARE='data.train_files=[data/shakespeare/train/*.txt]'
SMALL=(train.export=false train.progress=false train.log_every=1 train.save_every=0 train.eval_every=0)

for s in "${SECTIONS[@]}"; do
  case $s in
  install)
    if [[ $DRY -eq 1 ]]; then
      echo "=== install: pip install .whl/*.whl into /tmp/site; link .gpu_data as data/ if data/ is missing"
      continue
    fi
    if [[ ! -f data/tokenizer/tokenizer.json && -f .gpu_data/tokenizer/tokenizer.json ]]; then
      rm -rf data && ln -s .gpu_data data
    fi
    section install 300 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    ;;
  env)
    # DeepSpeed's FusedAdam (optimizer type AdamW) JIT-builds with nvcc + ninja: without them it cannot start
    section env 60 bash -c "nvidia-smi; nvcc --version || echo 'NO NVCC: DeepSpeed ops cannot JIT-build'; ninja --version; $PY - <<'EOF'
import torch, importlib.metadata as md
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('device', p.name, 'SMs', p.multi_processor_count, 'memory GiB', round(p.total_memory / 2**30, 1))
    from bigtrain.train.metrics import detect_peak
    print('peak', detect_peak())
for n in ('deepspeed', 'transformers', 'accelerate', 'peft', 'liger-kernel', 'triton', 'pydantic'):
    try:
        print(n, md.version(n))
    except md.PackageNotFoundError:
        print(n, 'MISSING')
import deepspeed, transformers, bigtrain.train.loop  # noqa: F401 - the imports themselves are the check
print('imports ok')
EOF"
    ;;
  demo)
    dry_check recipes/demo.yaml "output_dir=$SCRATCH/demo"
    section demo 240 "$PY" bigtrain/train.py "output_dir=$SCRATCH/demo"
    [[ $DRY -eq 0 ]] && mkdir -p "$OUT/demo" && cp "$SCRATCH"/demo/{run.json,metrics.jsonl} "$OUT/demo/" 2>/dev/null
    ;;
  smoke)
    # every fast-path option (issue 11 section 2) in 2 steps on the demo model; four runs share the GPU at once
    declare -A SMOKES=(
      [plain]="train.zero_stage=0 train.kernels=torch train.loss=plain"
      [z3_liger_fused]="train.zero_stage=3 train.kernels=liger train.loss=fused"
      [z2_chunked_compile]="train.zero_stage=2 train.loss=chunked train.compile=true"
      [z1_ckpt_sync]="train.zero_stage=1 train.activation_checkpointing=true train.checkpoint_every_n_layers=2 train.sync_every=2"
    )
    pids=()
    for name in "${!SMOKES[@]}"; do
      # shellcheck disable=SC2206 - the option string splits into overrides on purpose
      opts=(${SMOKES[$name]})
      args=("output_dir=$SCRATCH/smoke/$name" train.max_steps=2 "${SMALL[@]}" "${opts[@]}")
      dry_check recipes/demo.yaml "${args[@]}"
      section "smoke_$name" 240 "$PY" bigtrain/train.py "${args[@]}" &
      pids+=($!)
    done
    wait "${pids[@]}"
    if [[ $DRY -eq 0 ]]; then
      for name in "${!SMOKES[@]}"; do
        mkdir -p "$OUT/smoke/$name" && cp "$SCRATCH/smoke/$name"/{run.json,metrics.jsonl} "$OUT/smoke/$name/" 2>/dev/null
      done
    fi
    ;;
  bench)
    if [[ $DRY -eq 1 ]]; then
      "$PY" tools/bench/bench_peers.py --help > /dev/null && echo "    bench_peers.py --help ok" || DRY_PROBLEMS=$((DRY_PROBLEMS + 1))
    fi
    section bench 420 "$PY" tools/bench/bench_peers.py --preset 1b --steps 10 --warmup 5 \
      --work "$SCRATCH/peers" --out "$OUT/peers"
    rm -rf "$SCRATCH/peers"  # 1B weights + a 17 GB final checkpoint: the disk is 64 GB
    ;;
  profile)
    # the 1B target shape, one micro batch per step (seq 2048, micro 4): 2 steps skipped, 1 warm-up, 3 traced
    P=(model.hidden_size=2048 model.num_layers=16 model.head_dim=64 model.num_heads=32 model.num_kv_heads=8
      model.intermediate_size=8192 model.vocab_size=128256 model.tie_embeddings=true model.rope_theta=500000
      "$SHAKESPEARE" data.seq_len=2048 data.eval_fraction=0.0 'data.eval_files=[]' train.micro_batch_size=4
      train.global_batch_size=4 train.save_every=0 train.eval_every=0 "output_dir=$SCRATCH/profile")
    dry_check recipes/demo.yaml "${P[@]}"
    if [[ $DRY -eq 1 ]]; then
      "$PY" tools/gpu/profile_step.py --help > /dev/null && echo "    profile_step.py --help ok" || DRY_PROBLEMS=$((DRY_PROBLEMS + 1))
    fi
    section profile 300 "$PY" tools/gpu/profile_step.py --out "$OUT/profile" "${P[@]}"
    rm -rf "$SCRATCH/profile"
    ;;
  stepmem)
    # recipes/step-1b.yaml's three stages, 2 steps each on local text (the device has no hub access), against the plan
    M=('data.dataset=null' 'data.dataset_config=null' 'data.streaming=false' "$SHAKESPEARE" 'data.eval_files=[]'
      data.eval_fraction=0.0 train.precision=bf16 train.max_steps=2 train.global_batch_size=2 "output_dir=$SCRATCH/step1b"
      "${SMALL[@]}" train.export=true)
    dry_check recipes/step-1b.yaml "${M[@]}"
    if [[ $DRY -eq 1 ]]; then
      "$PY" tools/gpu/compare_plan.py --help > /dev/null && echo "    compare_plan.py --help ok" || DRY_PROBLEMS=$((DRY_PROBLEMS + 1))
    fi
    section stepmem_plan 120 bash -c "$PY -m bigtrain.cli.plan recipes/step-1b.yaml ${M[*]@Q} --json > $OUT/step1b_plan.json"
    section stepmem_run 420 "$PY" -m bigtrain.cli.run recipes/step-1b.yaml --nproc 1 "${M[@]}"
    section stepmem_compare 60 "$PY" tools/gpu/compare_plan.py "$OUT/step1b_plan.json" "$SCRATCH/step1b" \
      --out "$OUT/step1b_memory.md"
    if [[ $DRY -eq 0 ]]; then
      for st in s1 s2 s3; do
        mkdir -p "$OUT/step1b/$st" && cp "$SCRATCH/step1b/$st"/{run.json,metrics.jsonl} "$OUT/step1b/$st/" 2>/dev/null
      done
    fi
    ;;
  *)
    echo "unknown section $s (known: install env demo smoke bench profile stepmem)" >&2
    exit 2
    ;;
  esac
done

if [[ $DRY -eq 1 ]]; then
  echo "dry run: $DRY_PROBLEMS problem(s)"
  exit $((DRY_PROBLEMS > 0))
fi
echo "summary ($SUMMARY):"; cat "$SUMMARY"
