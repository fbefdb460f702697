#!/usr/bin/env bash
# One GPU run that checks and times everything (used through the device tool on an H100):
#   bash scripts/gpu_suite.sh [stage ...]
#   stages: tests attention profile build miss zero_copy gather_span store_decode e2e
#   (default: tests attention miss store_decode e2e)
# Results land in $OUT (default ./gpu_out): JSON per benchmark plus a log per stage; copy the
# JSON to benchmarks/results/ to commit it. Extra flags: TESTS (test paths), ATTN_ARGS,
# PROFILE_ARGS, STORE_DECODE_ARGS, E2E_ARGS; TESTS_LIMIT (seconds, default 540).
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
[ ${#stages[@]} -eq 0 ] && stages=(tests attention miss store_decode e2e)
nvidia-smi -L >"$OUT/gpu.txt" 2>&1
# the tests with a CUDA part (the CPU-interpreted ones are deselected: CI runs them)
GPU_TESTS="tests/inference_worker/retroinfer/kernels/test_kernels.py
  tests/inference_worker/retroinfer/kernels/test_bookkeeping.py
  tests/inference_worker/retroinfer/kernels/test_step_io.py
  tests/inference_worker/retroinfer/kernels/test_assign.py
  tests/inference_worker/retroinfer/test_layer_cuda.py
  tests/inference_worker/model/test_retro_graph.py
  tests/inference_worker/model/test_cuda_graph.py
  tests/inference_worker/engine/test_grpc_link.py::test_direct_path_reads_the_store_arena_gpu
  tests/inference_worker/engine/test_engine_cuda.py
  tests/client/test_gather_kernel.py tests/client/test_packed_descriptors.py
  tests/client/test_resolve_kernel.py tests/client/test_resolver.py"
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
    # shellcheck disable=SC2086  # word splitting of the test list and *_ARGS is intended
    tests) run tests "${TESTS_LIMIT:-540}" python3 -m pytest -q -p no:cacheprovider -k "not interpreted" \
      --durations=12 ${TESTS:-$GPU_TESTS} ;;
    attention) run attention 540 python3 -m benchmarks.attention \
      --out "$OUT/attention_cuda.json" ${ATTN_ARGS:-} ;;
    profile) run profile 400 python3 -m benchmarks.step_profile \
      --out "$OUT/step_profile_cuda.json" ${PROFILE_ARGS:-} ;;
    build) run build 150 python3 -m benchmarks.index_build \
      --out "$OUT/index_build_cuda.json" ;;
    miss) run miss 200 python3 -m benchmarks.miss_path \
      --contexts 32768 131072 --batches 1 16 --reps 5 --out "$OUT/miss_path_cuda.json" ;;
    zero_copy) run zero_copy 150 python3 -m benchmarks.zero_copy \
      --out "$OUT/zero_copy_cuda.json" ;;
    gather_span) run gather_span 150 python3 -m benchmarks.gather_span \
      --out "$OUT/gather_span_cuda.json" ;;
    store_decode) run store_decode 240 python3 -m benchmarks.store_decode \
      --device cuda ${STORE_DECODE_ARGS:---model random-llama8b --prompt 16384 --new 32 --batches 1 4} \
      --out "$OUT/store_decode_cuda.json" ;;
    e2e) run e2e 540 python3 -m benchmarks.e2e \
      --out "$OUT/e2e_cuda.json" ${E2E_ARGS:-} ;;
    *) echo "unknown stage $s" ;;
  esac
done
