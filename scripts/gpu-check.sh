#!/usr/bin/env bash
# Every GPU check of farm, sized for one 10-minute call on a borrowed GPU machine.
#
# The machine needs python3 with torch, torchvision, onnx and onnxruntime (the device image has
# them) and the wheels scripts/device-wheels.sh puts in .whl/ (Ray, SQLAlchemy, torchao, ...):
#
#   here:   scripts/device-wheels.sh                    # once; carry .whl with the call
#   there:  scripts/gpu-check.sh [PART ...]             # default: tests autotune
#
# PART is one of (times as measured on an H100 on 2026-12-06, or estimated where it says so):
#   tests     the GPU tests (tests/test_gpu.py, tests/test_gpu_torch_engines.py: no dashboard imports): 19 tests in
#             216 s (cut at TESTS_LIMIT, default 540)
#   autotune  sweeps/gpu-autotune.yaml cold, then warm from the store alone (benchmarks/warm_sweep.py),
#             the placement tests on its store, and the plain-PyTorch anchor against its winner: 6.9 min
#             (cold sweep 304 s, warm 73 s): a call of its own
#   lowp      sweeps/gpu-lowp.yaml: ViT-B/16 bf16 against torchao fp8 rowwise and tensorwise, and its anchor: 5.3 min
#             (with int8_dynamic, whose build did not end in 4.5 min, it did not finish); cut at $LOWP_LIMIT s (default 420), then `farm status`
#             and the Ray workers' logs show how far it got
#   gap       benchmarks/compile_gap_probe.py: the farm's compiled ResNet-50 against the same compile by hand, in
#             and out of Ray; each variant compiles cold for 3-6 min, so cut by $GAP_LIMIT s (default 300)
#   vit       benchmarks/vit_lowp_probe.py: ViT-B/16 batch 256 by hand (eager fp16/bf16 CUDA graphs, compile default and
#             max-autotune-no-cudagraphs, torchao fp8 rowwise/tensorwise and int8): does the farm or the model limit the
#             low-precision gain? No way starts after $VIT_LIMIT s (default 400): 495 s on an H100.
#             VIT_ONLY="int8_dynamic fp8_tensorwise_compile_max" runs only the two ways the 2026-12-06 window did
#             not reach, with the anchor and compiled bf16 (--only: parts of the ways' names, spaces as underscores)
#   aoti      benchmarks/aoti_probe.py: which way of loading an AOTInductor package works, ~2 min (60 s a way at most)
#   scaling   benchmarks/fleet_scaling.py on the machine's CPUs: a head and 4 nodes, each its own host and pinned to CPUs
#             of its own: 6.7 min; then benchmarks/placement_sim.py on its result (what the scheduling alone would
#             reach) and benchmarks/disk_probe.py (the disk the driver writes to)
#
# Results go to benchmarks/results/<gpu>/ (h100, h200, ...) and, where $OUT is set (the device
# tool's folder that comes back), to $OUT as well, with one log per part. The last lines say what
# to commit. A part that fails is reported and the next one still runs; the exit code is the
# number of parts that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PARTS=("$@")
(( ${#PARTS[@]} )) || PARTS=(tests autotune)

if [[ -d .whl ]] && ! python3 -c "import ray, sqlalchemy, torchao" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 100
fi
export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

GPU=$(python3 -c "
import re, torch
name = torch.cuda.get_device_name(0).lower()
found = re.search(r'\b([a-z]\d{2,4}[a-z]?)\b', name.replace('nvidia', ''))
print(found.group(1) if found else re.sub(r'[^a-z0-9]+', '-', name).strip('-'))") || { echo "gpu-check: no CUDA GPU visible" >&2; exit 100; }
RESULTS="benchmarks/results/$GPU"
LOGS="${OUT:-/tmp/farm-gpu-check}"
mkdir -p "$RESULTS" "$LOGS"
WORK=$(mktemp -d /tmp/farm-gpu-check.XXXX)
echo "gpu-check on $(python3 -c 'import torch; print(torch.cuda.get_device_name(0), "torch", torch.__version__, "CUDA", torch.version.cuda)')," \
     "$(nproc) CPUs, $(date -u +%FT%TZ); results in $RESULTS"

failed=0
summary=()
run_part() {  # run_part NAME COMMAND...: time it, log it, keep going
  local name=$1; shift
  local started=$SECONDS
  echo "=== $name: $*"
  if "$@" > >(tee "$LOGS/$name.log") 2>&1; then
    summary+=("$name ok in $((SECONDS - started)) s")
  else
    summary+=("$name FAILED (exit $?) after $((SECONDS - started)) s: see $LOGS/$name.log")
    failed=$((failed + 1))
  fi
}
keep() {  # keep FILE...: copy results to $OUT too, so they come back with the call
  [[ -n "${OUT:-}" ]] && cp "$@" "$OUT"/ 2>/dev/null
  return 0
}

for part in "${PARTS[@]}"; do
  case $part in
    tests)
      run_part tests timeout "${TESTS_LIMIT:-540}" python3 -m pytest -m gpu -v -p no:cacheprovider --durations=10 \
        tests/test_gpu.py tests/test_gpu_torch_engines.py
      ;;
    autotune)
      run_part autotune_sweep python3 benchmarks/warm_sweep.py sweeps/gpu-autotune.yaml --data-dir "$WORK/autotune" \
        --out "$RESULTS/warm_sweep.json"
      run_part autotune_placement env FARM_GPU_SWEEP_DB="$WORK/autotune/farm.db" \
        python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu_placement.py
      run_part autotune_anchor python3 benchmarks/gpu_anchor.py --models resnet50 --batches 256 \
        --data-dir "$WORK/autotune" --out "$RESULTS/gpu_anchor_autotune.json"
      python3 -m farm.cli best --json --objective throughput --data-dir "$WORK/autotune" > "$RESULTS/gpu_autotune_best.json"
      keep "$RESULTS/warm_sweep.json" "$RESULTS/gpu_anchor_autotune.json" "$RESULTS/gpu_autotune_best.json"
      ;;
    lowp)
      # cut with SIGABRT so that faulthandler prints where the driver waited; the workers' own logs follow
      run_part lowp_sweep env PYTHONFAULTHANDLER=1 timeout -s ABRT "${LOWP_LIMIT:-420}" \
        python3 -m farm.cli sweep sweeps/gpu-lowp.yaml --data-dir "$WORK/lowp"
      { python3 -m farm.cli status --data-dir "$WORK/lowp"  # how far it got, if cut
        for log in $(find /tmp -name 'worker-*.err' -newer "$WORK" -size +0 2>/dev/null); do echo "--- $log"; tail -n 40 "$log"; done
      } > "$LOGS/lowp_status.log" 2>&1
      run_part lowp_anchor python3 benchmarks/gpu_anchor.py --models vit_b_16 --batches 256 \
        --data-dir "$WORK/lowp" --out "$RESULTS/gpu_anchor_lowp.json"
      python3 -m farm.cli best --json --objective throughput --data-dir "$WORK/lowp" > "$RESULTS/gpu_lowp_best.json"
      keep "$RESULTS/gpu_anchor_lowp.json" "$RESULTS/gpu_lowp_best.json"
      ;;
    gap)
      run_part gap python3 benchmarks/compile_gap_probe.py --budget-s "${GAP_LIMIT:-300}" --out "$RESULTS/compile_gap_probe.json"
      keep "$RESULTS/compile_gap_probe.json"
      ;;
    vit)
      # written straight into $LOGS ($OUT on the device), after every way: a call cut by its limit still brings it back
      run_part vit python3 benchmarks/vit_lowp_probe.py --budget-s "${VIT_LIMIT:-400}" --out "$LOGS/vit_lowp_probe.json" \
        ${VIT_ONLY:+--only $VIT_ONLY}
      cp "$LOGS/vit_lowp_probe.json" "$RESULTS/" 2>/dev/null
      ;;
    aoti)
      run_part aoti python3 benchmarks/aoti_probe.py --out "$RESULTS/aoti_probe.json"
      keep "$RESULTS/aoti_probe.json"
      ;;
    scaling)
      python3 benchmarks/disk_probe.py /tmp | tee "$LOGS/disk_probe.log"  # the driver's commits and artifacts go there
      run_part scaling python3 benchmarks/fleet_scaling.py --device-hosts --out "$RESULTS/fleet_scaling_16core.json"
      # what the scheduling alone would reach with the job seconds just measured (no GPU; seconds)
      python3 benchmarks/placement_sim.py "$RESULTS/fleet_scaling_16core.json" | tee "$LOGS/placement_sim.log"
      keep "$RESULTS/fleet_scaling_16core.json" "$RESULTS/fleet_scaling_16core_sim.json"
      ;;
    *)
      echo "gpu-check: unknown part '$part' (tests, autotune, lowp, vit, gap, aoti, scaling)" >&2
      failed=$((failed + 1))
      ;;
  esac
done

echo "=== summary ($GPU)"
printf '  %s\n' "${summary[@]}"
echo "commit: git add $RESULTS && git commit -m 'GPU check on $GPU, $(date -u +%F)'; then put the figures in docs/gpu.md"
[[ -n "${OUT:-}" ]] && echo "(results and logs also in \$OUT: copy them into $RESULTS here)"
exit $failed
