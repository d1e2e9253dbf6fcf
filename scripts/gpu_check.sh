#!/bin/sh
# The kernels' GPU check in one command, on a machine with an NVIDIA GPU (sm_80+ for the
# tensor-core kernels) and a python3 with CUDA torch and cuda-python (onnx and onnxruntime
# for the ViT's tolerance), run from the repository root:
#
#     sh scripts/gpu_check.sh [OUT_DIR]     (default: $OUT, else artifacts/gpu-check)
#
# Each step has a time limit; together at most 8.5 minutes (about 3 expected on an H100).
# In OUT_DIR:
#   gpu_check.json   e2edge bench kernels --vit: every kernel against its NumPy reference,
#                    the benchmarks against cuBLAS fp16 (decode, BitMed ViT and prefill GEMMs
#                    with a tile sweep, sparse FFN) and the whole BitMed ViT forward; written
#                    after every step, so a run cut short keeps what it measured
#   bench.log        its output (the summary at the end)
#   sanitizer.json   the small tensor-core cases again under compute-sanitizer's memcheck
#   sanitizer.log    (out-of-bounds or misaligned accesses are reported there)
#   pytest.log       tests/e2edge/test_bench_kernels_gpu.py
#   gpu.txt          nvidia-smi's view of the GPU
#   steps.txt        each step's exit status
# Exit status: the first failing step's, else 0.
set -u
out=${1:-${OUT:-artifacts/gpu-check}}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export E2EDGE_KERNEL_CACHE="${E2EDGE_KERNEL_CACHE:-/tmp/e2edge-kernel-cache}"
status=0

step() {  # step NAME LOG SECONDS COMMAND...: run it bounded, keep the first failure
    name=$1 log=$2 limit=$3
    shift 3
    timeout "$limit" "$@" >"$log" 2>&1
    rc=$?
    echo "$name: exit $rc" >>"$out/steps.txt"
    if [ "$status" -eq 0 ]; then status=$rc; fi
}

: >"$out/steps.txt"
nvidia-smi --query-gpu=name,compute_cap,driver_version,clocks.max.sm,memory.total \
    --format=csv >"$out/gpu.txt" 2>&1
step bench "$out/bench.log" 300 \
    "$python" -m e2edge.cli bench kernels --vit --out "$out/gpu_check.json"
if command -v compute-sanitizer >/dev/null 2>&1; then
    step sanitizer "$out/sanitizer.log" 120 \
        compute-sanitizer --tool memcheck --error-exitcode 97 \
        "$python" -m e2edge.cli bench kernels --skip-bench \
        --only mma_f16_exact,mma_w2a8_f32_exact,_tile_ --out "$out/sanitizer.json"
fi
step pytest "$out/pytest.log" 90 \
    "$python" -m pytest -q -p no:cacheprovider tests/e2edge/test_bench_kernels_gpu.py
cat "$out/steps.txt"
tail -n 60 "$out/bench.log"
exit "$status"
