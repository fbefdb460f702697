#!/usr/bin/env bash
# One GPU run that checks and times everything (used through the device tool on an H100):
#   bash scripts/gpu_suite.sh [stage ...]
#   stages: tests kernels attention profile build miss store_decode e2e
# Results land in $OUT (default ./gpu_out): JSON per benchmark plus a log per stage.
# Wheels the device image lacks (gguf, grpcio health/reflection) are installed from .whl/ if present.
set -uo pipefail
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests kernels attention miss store_decode e2e)
nvidia-smi -L >"$OUT/gpu.txt" 2>&1
run() {  # run NAME TIMEOUT CMD...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" | tee -a "$OUT/suite.log"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "== $name rc=$? in $((SECONDS - t0)) s" | tee -a "$OUT/suite.log"
  tail -25 "$OUT/$name.log"
}
for s in "${stages[@]}"; do
  case $s in
    tests) run tests 420 python3 -m pytest -q -p no:cacheprovider -k "not interpreted" \
      --durations=12 ${TESTS:-tests/inference_worker/retroinfer/kernels/test_kernels.py tests/inference_worker/retroinfer/test_layer_cuda.py \
      tests/inference_worker/retroinfer/kernels/test_bookkeeping.py tests/inference_worker/retroinfer/kernels/test_step_io.py tests/inference_worker/retroinfer/test_source.py \
      tests/inference_worker/model/test_retro_graph.py tests/client/test_gather_kernel.py \
      tests/client/test_packed_descriptors.py tests/client/test_resolve_kernel.py \
      tests/client/test_resolver.py tests/inference_worker/model/test_cuda_graph.py} ;;
    kernels) run kernels 150 python3 -m benchmarks.retro_kernels \
      --out "$OUT/retro_kernels_cuda.json" ;;
    attention) run attention 540 python3 -m benchmarks.attention \
      --out "$OUT/attention_cuda.json" ${ATTN_ARGS:-} ;;
    profile) run profile 400 python3 -m benchmarks.step_profile \
      --out "$OUT/step_profile_cuda.json" ${PROFILE_ARGS:-} ;;
    build) run build 150 python3 -m benchmarks.index_build \
      --out "$OUT/index_build_cuda.json" ;;
    miss) run miss 200 python3 -m benchmarks.miss_path \
      --contexts 32768 131072 --batches 1 16 --reps 5 --out "$OUT/miss_path_cuda.json" ;;
    store_decode) run store_decode 240 python3 -m benchmarks.store_decode \
      --device cuda ${STORE_DECODE_ARGS:---model random-llama8b --prompt 16384 --new 32 --batches 1 4} \
      --out "$OUT/store_decode_cuda.json" ;;
    e2e) run e2e 540 python3 -m benchmarks.decode_e2e \
      --out "$OUT/decode_e2e_cuda.json" ${E2E_ARGS:-} ;;
    *) echo "unknown stage $s" ;;
  esac
done
