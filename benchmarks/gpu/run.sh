#!/usr/bin/env bash
# Run ON the lent GPU machine, from the repository root, in two device calls of under 10 minutes each:
#   bash benchmarks/gpu/run.sh A   # fast-path checks, visible-only ratios, MoMo-Large stage 1 (the 3,000 img/s target)
#   bash benchmarks/gpu/run.sh B   # every stage's CMGA step for Base and Large, MoMo vs FLAVA, Large peak memory
# with `carry: [".whl"]` (see prepare_wheels.sh). JSON reports and a log go to $OUT (at most 8 files come back).
# QUICK=1 runs every script in its --quick mode (a smoke test of this script on any machine).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/gpu}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! "$PY" -c "import deepspeed, webdataset" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
q=${QUICK:+--quick}
full() { [ -n "$q" ] || echo "$@"; }  # arguments only for the real (not --quick) run
log="$OUT/run_${1:-A}.log"
step() {  # step NAME SECONDS CMD...: run with a time limit; a failure is logged and the rest still runs
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log" | tail -n 25
    echo "=== $name exit ${PIPESTATUS[0]}" | tee -a "$log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"; "$PY" -c \
  "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__)"; } \
  2>&1 | tee "$log"
case "${1:-A}" in
A)
    step check_gpu 180 "$PY" benchmarks/check_gpu.py $q --json "$OUT/check_gpu.json"
    step encoder 180 "$PY" benchmarks/bench_encoder.py $q --json "$OUT/encoder.json"
    step step_large_s1 200 "$PY" benchmarks/bench_step.py $q $(full --presets large --stages 1) \
        --json "$OUT/step_large_s1.json"
    ;;
B)
    step step_all 240 "$PY" benchmarks/bench_step.py $q $(full --presets base,large) --json "$OUT/step.json"
    step peers 150 "$PY" benchmarks/bench_peers.py $q $(full --presets base) --json "$OUT/peers.json"
    step memory_large 120 "$PY" benchmarks/bench_memory.py $q $(full --preset large --ranks 1) \
        --json "$OUT/memory_large.json"
    ;;
*) echo "usage: run.sh A|B" >&2; exit 2 ;;
esac
ls -la "$OUT"
