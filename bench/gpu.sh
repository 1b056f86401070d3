#!/usr/bin/env bash
# The GPU benchmark (issue 7): one prepared script, under 8 minutes on one H100.
#
#   bench/gpu.sh                  on a CUDA machine (torch CUDA build + this project installed)
#   bench/gpu.sh --cpu-smoke      (or EMMIL_GPU_SMOKE=1) the same steps shrunk to seconds, on CPU
#
# Steps, each under its own time limit (a failed or timed-out step is recorded, the rest still run):
#   1. pytest -m cuda                  the CUDA-marked tests (tests/test_cuda.py)
#   2. semi-synthetic THUMOS14         dim 1024 per stream, every video (smoke: dim 16, 24 videos)
#   3. bench/gpu_bench.py train        `full`, paper schedule: seconds per run, FLOP/s vs the GPU's matmul
#                                      rate measured in the same process, bf16 autocast / torch.compile
#   4. emmil ablate table3             5 seeds, 0.25 GPU per trial (4 trials per GPU), with nvidia-smi
#                                      sampled every 0.5 s in the background: wall time, GPU utilisation
#   5. emmil ablate table3 --pack 5    the same 20 runs as 4 packs of 5 seeds (issue 11), same sampling:
#                                      the wall ratio step 4 / step 5 is what packing buys on this GPU
#   6. emmil sweep --pack 8            a 64-trial Optuna search of ablations/spaces/thumos14.yaml, 8 trials
#                                      per pack, ASHA per member, quick preset, same sampling
#   7. collect                         gpu_results.json, one summary line per step (bench/gpu_bench.py)
# Results go under $OUT if set, else bench/out/gpu/: gpu_results.json (all figures), *.log; the data and
# the ablation's results dir go under $GPU_WORK_DIR (default $TMPDIR or /tmp, emmil-gpu-work/).
# Environment: PYTHON (interpreter; default .venv/bin/python if present, else python3),
# GPU_CPUS_PER_TRIAL (default 3), GPU_MAX_CONCURRENT (default 4), STEP_TIMEOUT_SCALE (default 1).
set -u -o pipefail

SMOKE="${EMMIL_GPU_SMOKE:-0}"
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $arg (use --cpu-smoke or --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="${OUT:-$ROOT/bench/out/gpu}"
mkdir -p "$OUTDIR"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3 || command -v python)"; fi
if [[ -x "$(dirname "$PY")/emmil" ]]; then EMMIL=("$(dirname "$PY")/emmil")
else EMMIL=("$PY" -c "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))"); fi
export RAY_USAGE_STATS_ENABLED=0 RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1 PYTHONUNBUFFERED=1
SCALE="${STEP_TIMEOUT_SCALE:-1}"

if [[ "$SMOKE" == 1 ]]; then
  DIM=16; MAXV=24; DEVICE=cpu; PRESET=quick; TRAIN_EPOCHS="--epochs 2"; MATMUL_N=256; REPEATS=3
  SEEDS=2; GPUS=0; CPUS=1; CONC=2; ABL_PRESET=quick; ABL_EPOCHS=1
  T_PYTEST=60; T_DATA=60; T_TRAIN=90; T_ABLATE=120; T_PACKED=120
  SEARCH_TRIALS=4; SEARCH_PACK=2; SEARCH_SET="--set train.epochs=2"; T_SEARCH=120
else
  DIM=1024; MAXV=""; DEVICE=cuda; PRESET=paper; TRAIN_EPOCHS=""; MATMUL_N=8192; REPEATS=50
  SEEDS=5; GPUS=0.25; CPUS="${GPU_CPUS_PER_TRIAL:-3}"; CONC="${GPU_MAX_CONCURRENT:-4}"; ABL_PRESET=paper; ABL_EPOCHS=""
  # 445 s of step limits: the script ends within 8 minutes on one GPU (a step that runs out of time is
  # recorded with what it finished, and the next one starts)
  T_PYTEST=30; T_DATA=45; T_TRAIN=100; T_ABLATE=120; T_PACKED=70
  SEARCH_TRIALS=64; SEARCH_PACK=8; SEARCH_SET=""; T_SEARCH=80
fi

STATUS_FILE="$OUTDIR/steps.tsv"
: > "$STATUS_FILE"
step() {  # step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to $OUTDIR/NAME.log, record status
  local name="$1" limit="$2"; shift 2
  limit=$(awk -v l="$limit" -v s="$SCALE" 'BEGIN{printf "%d", l*s}')
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  local dt=$((SECONDS - t0))
  printf '%s\t%s\t%s\n' "$name" "$rc" "$dt" >> "$STATUS_FILE"
  echo "   exit $rc after ${dt}s; last lines:"; tail -n 3 "$OUTDIR/$name.log" | sed 's/^/   | /'
  return $rc
}

smi_start() {  # smi_start FILE: sample GPU utilisation and memory every 0.5 s into FILE; SMI_PID is its pid
  SMI_PID=""
  if command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader,nounits \
      -lms 500 > "$1" 2>/dev/null &
    SMI_PID=$!
  fi
}
smi_stop() { if [[ -n "$SMI_PID" ]]; then kill "$SMI_PID" 2>/dev/null; wait "$SMI_PID" 2>/dev/null; fi; }

echo "gpu.sh: smoke=$SMOKE python=$PY out=$OUTDIR"
{ nvidia-smi 2>/dev/null || echo "no nvidia-smi"; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } > "$OUTDIR/environment.log" 2>&1
cat "$OUTDIR/environment.log" | tail -n 1

# 1. CUDA-marked tests (skipped without CUDA: in smoke mode they only prove collection works).
if [[ "${GPU_SKIP_PYTEST:-0}" != 1 ]]; then
  step pytest_cuda "$T_PYTEST" "$PY" -m pytest -q -m cuda -p no:cacheprovider tests
fi

# 2. Data.
# Data and the ablation's results dir (checkpoints, MLflow store) stay OUT of $OUT: the dim-1024 array
# is 1.1 GB, and everything under $OUT is copied back from a device machine.
WORK="${GPU_WORK_DIR:-${TMPDIR:-/tmp}/emmil-gpu-work}"
mkdir -p "$WORK"
DATA="$WORK/data/thumos14-d$DIM"
step data "$T_DATA" "$PY" -c "
import sys; from pathlib import Path
from emmil.data.synth import write_synthetic
maxv = int(sys.argv[3]) if sys.argv[3] else None
write_synthetic('thumos14', Path(sys.argv[1]), dim=int(sys.argv[2]), seed=0, max_videos=maxv)
print('written', sys.argv[1])" "$DATA" "$DIM" "$MAXV"

# 3. One paper-schedule run: seconds, FLOP/s vs matmul, AMP / compile around the model.
step train "$T_TRAIN" "$PY" bench/gpu_bench.py train --data-dir "$DATA" --variant full --preset "$PRESET" \
  $TRAIN_EPOCHS --device "$DEVICE" --matmul-n "$MATMUL_N" --step-repeats "$REPEATS" --json "$OUTDIR/gpu_train.json"

# 4. Table-3 ablation, 5 seeds, fractional GPUs, utilisation sampled in the background.
EXP="table3"
if [[ -n "$ABL_EPOCHS" ]]; then
  EXP="$WORK/bench-gpu-table3.yaml"
  "$PY" -c "
import sys; from pathlib import Path; sys.path.insert(0, '.')
from bench.common import write_experiment
write_experiment(Path(sys.argv[1]), overrides={'train.epochs': int(sys.argv[2])})" "$EXP" "$ABL_EPOCHS"
fi
smi_start "$OUTDIR/nvidia_smi.csv"
rm -rf "$WORK/ablate_results"
T0=$SECONDS
step ablate "$T_ABLATE" "${EMMIL[@]}" ablate "$EXP" --dataset thumos14 --data-dir "$DATA" --preset "$ABL_PRESET" \
  --seeds "$SEEDS" --max-concurrent "$CONC" --results "$WORK/ablate_results" \
  --cpus-per-trial "$CPUS" --gpus-per-trial "$GPUS" --no-report
ABL_WALL=$((SECONDS - T0))
smi_stop
if [[ -s "$OUTDIR/nvidia_smi.csv" ]]; then
  "$PY" bench/gpu_bench.py gpu-util "$OUTDIR/nvidia_smi.csv" --wall "$ABL_WALL" --json "$OUTDIR/gpu_util.json" \
    > "$OUTDIR/gpu_util.log" 2>&1
fi

# 5. The same ablation packed: --pack SEEDS (one pack per variant), same resources per trial.
smi_start "$OUTDIR/nvidia_smi_packed.csv"
rm -rf "$WORK/ablate_packed_results"
T0=$SECONDS
step ablate_packed "$T_PACKED" "${EMMIL[@]}" ablate "$EXP" --dataset thumos14 --data-dir "$DATA" --preset "$ABL_PRESET" \
  --seeds "$SEEDS" --pack "$SEEDS" --max-concurrent "$CONC" --results "$WORK/ablate_packed_results" \
  --cpus-per-trial "$CPUS" --gpus-per-trial "$GPUS" --no-report
PACKED_WALL=$((SECONDS - T0))
smi_stop
if [[ -s "$OUTDIR/nvidia_smi_packed.csv" ]]; then
  "$PY" bench/gpu_bench.py gpu-util "$OUTDIR/nvidia_smi_packed.csv" --wall "$PACKED_WALL" \
    --json "$OUTDIR/gpu_util_packed.json" > "$OUTDIR/gpu_util_packed.log" 2>&1
fi

# 6. A 64-trial Optuna search, packed (issue 11): 8 packs of 8 Optuna trials asked at once, ASHA stopping
#    members, quick preset (the search's objective is the held-out TRAINING videos; no final retrain).
smi_start "$OUTDIR/nvidia_smi_search.csv"
rm -rf "$WORK/search_packed_results"
T0=$SECONDS
step search_packed "$T_SEARCH" "${EMMIL[@]}" sweep --space thumos14 --dataset thumos14 --data-dir "$DATA" \
  --preset quick --trials "$SEARCH_TRIALS" --pack "$SEARCH_PACK" --final-seeds 0 --scheduler asha \
  --max-concurrent "$CONC" --results "$WORK/search_packed_results" --cpus-per-trial "$CPUS" \
  --gpus-per-trial "$GPUS" --no-report $SEARCH_SET
SEARCH_WALL=$((SECONDS - T0))
smi_stop
if [[ -s "$OUTDIR/nvidia_smi_search.csv" ]]; then
  "$PY" bench/gpu_bench.py gpu-util "$OUTDIR/nvidia_smi_search.csv" --wall "$SEARCH_WALL" \
    --json "$OUTDIR/gpu_util_search.json" > "$OUTDIR/gpu_util_search.log" 2>&1
fi

# 7. Collect: gpu_results.json and one line per step.
printf 'ablate\t%s\nablate_packed\t%s\nsearch_packed\t%s\n' "$ABL_WALL" "$PACKED_WALL" "$SEARCH_WALL" > "$OUTDIR/walls.tsv"
"$PY" bench/gpu_bench.py collect "$OUTDIR" $([[ "$SMOKE" == 1 ]] && echo --smoke)
FAILED=$(awk -F'\t' '$2 != 0 {print $1}' "$STATUS_FILE" | tr '\n' ' ')
if [[ -n "$FAILED" ]]; then echo "gpu.sh: failed steps: $FAILED (see $OUTDIR/*.log)"; exit 1; fi
echo "gpu.sh: all steps passed; results in $OUTDIR/gpu_results.json"
