#!/usr/bin/env bash
# The GPU session in one script: one device call of at most 10 minutes on one H100/H200. The default
# sections (install env smoke profile bench) end inside DEADLINE_S (540 s): a section that cannot start with
# its minimum time left is skipped and recorded as such; one that starts gets min(its limit, the time left).
#
# Before the session, on the development machine (registry access; the device has none):
#   bash tools/gpu/prepare.sh          # .whl/ (gpu-wheels.sh + liger-kernel) and .gpu_data/ (demo data, real files)
# Then one device call, carrying both:
#   run(command="bash tools/gpu/run_gpu_checks.sh", carry=[".whl", ".gpu_data"], timeout_s=600)
# Second calls, each on its own (each starts with install): the STEP memory check, the G_stack mini pair
#   bash tools/gpu/run_gpu_checks.sh install stepmem        bash tools/gpu/run_gpu_checks.sh install gstack
# Sections: install env demo smoke profile bench stepmem gstack.
# Dry mode (any machine, no GPU): checks the plumbing — every recipe override parses against this checkout's
# schema, the python entry points answer --help, the commands and the deadline plan are printed (each section
# taking its full limit), nothing is trained:
#   bash tools/gpu/run_gpu_checks.sh --dry
#
# What comes back: the device returns only a few files from $OUT, two folders deep, so every section writes
# under $WORK and, after each section, $WORK is packed into $OUT/results.tar.gz (a killed call still returns
# what finished) next to $OUT/summary.tsv (section, exit code or "skipped", seconds).
set -uo pipefail

cd "$(dirname "$0")/../.."
DRY=0
if [[ "${1:-}" == "--dry" ]]; then DRY=1; shift; fi
SECTIONS=("$@")
[[ ${#SECTIONS[@]} -eq 0 ]] && SECTIONS=(install env smoke profile bench)
OUT=${OUT:-$PWD/gpu-out}
DEADLINE_S=${DEADLINE_S:-540}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# dry mode: $PYTHON if given (the suite's tests/python), else this checkout's venv
if [[ $DRY -eq 1 && -z ${PYTHON:-} && -x .venv/bin/python ]]; then PY=.venv/bin/python; fi
SCRATCH=${SCRATCH:-/tmp/bigtrain-gpu}  # checkpoints and weights: large, never under $OUT
WORK=$SCRATCH/out                       # small results, packed into $OUT/results.tar.gz
mkdir -p "$WORK"
SUMMARY="$OUT/summary.tsv"
[[ -f "$SUMMARY" ]] || printf 'section\trc\tseconds\n' > "$SUMMARY"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# the wheels land in /tmp/site (gpu-wheels.sh's header); the checkout itself is bigtrain
[[ $DRY -eq 0 ]] && export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
CLOCK=0  # dry mode: the simulated seconds used so far

elapsed() { if [[ $DRY -eq 1 ]]; then echo "$CLOCK"; else echo "$SECONDS"; fi; }

pack() {  # everything so far into one archive, replaced atomically
  [[ $DRY -eq 1 ]] && return 0
  local tmp="$OUT/.results.$BASHPID.tmp"
  tar -czf "$tmp" -C "$WORK" . 2>/dev/null && mv "$tmp" "$OUT/results.tar.gz"
}

# section NAME LIMIT_S MIN_S COMMAND...: run with min(LIMIT_S, time left) if at least MIN_S are left, else
# skip; its output to $WORK/NAME.log. Dry: print the plan, the section taking its full limit.
section() {
  local name=$1 limit=$2 min=$3; shift 3
  local left=$((DEADLINE_S - $(elapsed)))
  if (( left < min )); then
    echo "=== $name: SKIPPED (${left}s left of ${DEADLINE_S}s, needs ${min}s)" | tee -a "$WORK/commands.txt"
    printf '%s\tskipped\t0\n' "$name" >> "$SUMMARY"
    return 0
  fi
  (( limit > left )) && limit=$left
  echo "=== $name (at $(elapsed)s, limit ${limit}s): $*" | tee -a "$WORK/commands.txt"
  if [[ $DRY -eq 1 ]]; then CLOCK=$((CLOCK + limit)); return 0; fi
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$SUMMARY"
  echo "    -> rc=$rc in $((SECONDS - t0))s; last lines:"; tail -n 5 "$WORK/$name.log" | sed 's/^/    /'
  pack
  return 0
}

keep() {  # keep DEST SRC_DIR FILE...: a run's small files into $WORK/DEST
  [[ $DRY -eq 1 ]] && return 0
  local dest=$WORK/$1 src=$2; shift 2
  mkdir -p "$dest"
  for f in "$@"; do cp "$src/$f" "$dest/" 2>/dev/null; done
  pack
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
SMALL=(train.export=false train.save_final=false train.progress=false train.log_every=1 train.save_every=0 train.eval_every=0)

for s in "${SECTIONS[@]}"; do
  case $s in
  install)
    if [[ $DRY -eq 1 ]]; then
      echo "=== install: pip install .whl/*.whl into /tmp/site; link .gpu_data as data/ if data/ is missing"
      CLOCK=$((CLOCK + 60))
      continue
    fi
    if [[ ! -f data/tokenizer/tokenizer.json && -f .gpu_data/tokenizer/tokenizer.json ]]; then
      rm -rf data && ln -s .gpu_data data
    fi
    section install 180 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    ;;
  env)
    # DeepSpeed's FusedAdam JIT-builds with nvcc + ninja: built once here (the other sections find it cached),
    # or the reason it cannot be
    section env 90 30 bash -c "nvidia-smi; nvcc --version || echo 'NO NVCC: DeepSpeed ops cannot JIT-build'; ninja --version; $PY - <<'EOF'
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
try:
    from deepspeed.ops.op_builder import FusedAdamBuilder
    FusedAdamBuilder().load()
    print('FusedAdam built')
except Exception as e:  # noqa: BLE001 - say why; the trainer falls back to torch's AdamW
    print('FusedAdam NOT built:', type(e).__name__, str(e).splitlines()[0] if str(e) else '')
EOF"
    ;;
  demo)
    dry_check recipes/demo.yaml "output_dir=$SCRATCH/demo"
    section demo 240 120 "$PY" bigtrain/train.py "output_dir=$SCRATCH/demo"
    keep demo "$SCRATCH/demo" run.json metrics.jsonl
    ;;
  smoke)
    # every fast-path option in 2 steps on the demo model, four runs sharing the GPU at once (graph breaks and
    # recompiles logged); then their first-step losses side by side: same data and init, so they should agree
    declare -A SMOKES=(
      [plain]="train.zero_stage=0 train.kernels=torch train.loss=plain"
      [z3_liger_fused]="train.zero_stage=3 train.kernels=liger train.loss=fused"
      [z2_chunked_compile]="train.zero_stage=2 train.loss=chunked train.compile=true"
      [z1_ckpt_sync]="train.zero_stage=1 train.activation_checkpointing=true train.checkpoint_every_n_layers=2 train.sync_every=2"
    )
    start=$(elapsed) pids=()
    for name in "${!SMOKES[@]}"; do
      # shellcheck disable=SC2206 - the option string splits into overrides on purpose
      opts=(${SMOKES[$name]})
      args=("output_dir=$SCRATCH/smoke/$name" train.max_steps=2 "${SMALL[@]}" "${opts[@]}")
      dry_check recipes/demo.yaml "${args[@]}"
      TORCH_LOGS="graph_breaks,recompiles" section "smoke_$name" 150 90 "$PY" bigtrain/train.py "${args[@]}" &
      pids+=($!)
    done
    wait "${pids[@]}"
    [[ $DRY -eq 1 ]] && CLOCK=$((start + 150))  # the four ran side by side
    for name in "${!SMOKES[@]}"; do keep "smoke/$name" "$SCRATCH/smoke/$name" run.json metrics.jsonl; done
    if [[ $DRY -eq 0 ]]; then
      "$PY" - "$SCRATCH/smoke" > "$WORK/smoke_losses.txt" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
rows = {}
for run in sorted(Path(sys.argv[1]).iterdir()):
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    first = next((json.loads(x) for x in lines if '"loss"' in x), None)
    rows[run.name] = first["loss"] if first else None
print("first-step loss per smoke run:", json.dumps(rows, indent=1))
vals = [v for v in rows.values() if v is not None]
print("spread (max - min):", max(vals) - min(vals) if vals else None)
EOF
      pack
    fi
    ;;
  bench)
    if [[ $DRY -eq 1 ]]; then
      "$PY" tools/bench/bench_peers.py --help > /dev/null && echo "    bench_peers.py --help ok" || DRY_PROBLEMS=$((DRY_PROBLEMS + 1))
    fi
    # bigtrain and the compiled plain loop first; the HF Trainer peer only with the time left
    section bench 150 100 "$PY" tools/bench/bench_peers.py --preset 1b --steps 8 --warmup 4 \
      --runners bigtrain,torch_compile --work "$SCRATCH/peers" --out "$WORK/peers" --bigtrain train.save_final=false
    section bench_hf 150 120 "$PY" tools/bench/bench_peers.py --preset 1b --steps 8 --warmup 4 \
      --runners hf_deepspeed --work "$SCRATCH/peers" --out "$WORK/peers_hf"
    [[ $DRY -eq 0 ]] && rm -rf "$SCRATCH/peers"  # 1B weights: the disk is 64 GB
    ;;
  profile)
    # the 1B target shape, one micro batch per step (seq 2048, micro 4): 2 steps skipped, 1 warm-up, 3 traced
    P=(model.hidden_size=2048 model.num_layers=16 model.head_dim=64 model.num_heads=32 model.num_kv_heads=8
      model.intermediate_size=8192 model.vocab_size=128256 model.tie_embeddings=true model.rope_theta=500000
      "$SHAKESPEARE" data.seq_len=2048 data.eval_fraction=0.0 'data.eval_files=[]' train.micro_batch_size=4
      train.global_batch_size=4 train.save_every=0 train.eval_every=0 train.save_final=false "output_dir=$SCRATCH/profile")
    dry_check recipes/demo.yaml "${P[@]}"
    if [[ $DRY -eq 1 ]]; then
      "$PY" tools/gpu/profile_step.py --help > /dev/null && echo "    profile_step.py --help ok" || DRY_PROBLEMS=$((DRY_PROBLEMS + 1))
    fi
    section profile 120 90 "$PY" tools/gpu/profile_step.py --out "$WORK/profile" "${P[@]}"
    [[ $DRY -eq 0 ]] && rm -rf "$SCRATCH/profile"
    ;;
  stepmem)
    # its own call: recipes/step-1b.yaml's three stages at ZeRO-3, 2 steps each on local text (the device has
    # no hub access), against the plan; a stage's checkpoints go once the next stage has grown from them
    M=('data.dataset=null' 'data.dataset_config=null' 'data.streaming=false' "$SHAKESPEARE" 'data.eval_files=[]'
      data.eval_fraction=0.0 train.precision=bf16 train.zero_stage=3 train.max_steps=2 train.global_batch_size=2
      "output_dir=$SCRATCH/step1b" "${SMALL[@]}" train.export=true train.save_final=true)
    dry_check recipes/step-1b.yaml "${M[@]}"
    if [[ $DRY -eq 1 ]]; then
      "$PY" tools/gpu/compare_plan.py --help > /dev/null && echo "    compare_plan.py --help ok" || DRY_PROBLEMS=$((DRY_PROBLEMS + 1))
    fi
    section stepmem_plan 60 20 bash -c "$PY -m bigtrain.cli.plan recipes/step-1b.yaml ${M[*]@Q} --json > $WORK/step1b_plan.json"
    cleaner=""
    if [[ $DRY -eq 0 ]]; then
      ( prev=s1; for st in s2 s3; do
          until [[ -f "$SCRATCH/step1b/$st/init/config.json" ]]; do sleep 5; done
          rm -rf "$SCRATCH/step1b/$prev/checkpoints"; prev=$st
        done ) &
      cleaner=$!
    fi
    section stepmem_run 420 240 "$PY" -m bigtrain.cli.run recipes/step-1b.yaml --nproc 1 "${M[@]}"
    [[ -n $cleaner ]] && kill "$cleaner" 2>/dev/null
    section stepmem_compare 30 10 "$PY" tools/gpu/compare_plan.py "$WORK/step1b_plan.json" "$SCRATCH/step1b" \
      --out "$WORK/step1b_memory.md"
    for st in s1 s2 s3; do keep "step1b/$st" "$SCRATCH/step1b/$st" run.json metrics.jsonl; done
    ;;
  gstack)
    # its own call: recipes/experiments/gstack's CPU arms at ~100M parameters (d=1024; the small model 2 layers,
    # stacked to 8) with 64 x 512 tokens per step: ~10M tokens per 300 steps. One seed: the frontier at 0.5, 1
    # and 1.5x (scratch), stack and stack-carry, then the report. The corpus is the demo's, in repeated epochs.
    G=(model.hidden_size=1024 model.num_heads=16 model.head_dim=64 model.num_kv_heads=16 model.intermediate_size=2816
      data.seq_len=512 train.micro_batch_size=32 train.global_batch_size=64 train.precision=bf16 train.lr=1.0e-3
      train.eval_every=50 train.eval_batches=8 train.log_every=10 "data.cache_dir=$SCRATCH/gstack/cache")
    for arm in scratch-0.5x scratch stack stack-carry scratch-1.5x; do
      args=("${G[@]}" "output_dir=$SCRATCH/gstack/$arm")
      dry_check "recipes/experiments/gstack/cpu/$arm.yaml" "${args[@]}"
      section "gstack_$arm" 150 60 "$PY" -m bigtrain.cli.run "recipes/experiments/gstack/cpu/$arm.yaml" --nproc 1 "${args[@]}"
      [[ $DRY -eq 0 ]] && find "$SCRATCH/gstack/$arm" -maxdepth 2 -type d \( -name checkpoints -o -name hf -o -name init \) \
        -exec rm -rf {} +  # the disk; run.json and metrics.jsonl are what the report reads
    done
    section gstack_report 60 10 "$PY" -m bigtrain.cli.report "$SCRATCH/gstack/stack" "$SCRATCH/gstack/stack-carry" \
      --baseline "$SCRATCH/gstack/scratch" --frontier "$SCRATCH/gstack/scratch-0.5x" "$SCRATCH/gstack/scratch" \
      "$SCRATCH/gstack/scratch-1.5x" --out "$WORK/gstack_report"
    ;;
  *)
    echo "unknown section $s (known: install env demo smoke profile bench stepmem gstack)" >&2
    exit 2
    ;;
  esac
done

pack
if [[ $DRY -eq 1 ]]; then
  echo "dry run: $DRY_PROBLEMS problem(s); planned end at ${CLOCK}s of ${DEADLINE_S}s"
  exit $((DRY_PROBLEMS > 0))
fi
echo "summary ($SUMMARY):"; cat "$SUMMARY"
