#!/usr/bin/env bash
# sparsecc's GPU checks in one go, for a machine with an NVIDIA GPU (compute capability 8.0+):
# the tests marked gpu/tensorrt, then bench_semi_structured.py (fp16 and bf16 on cuSPARSELt,
# fp16 on CUTLASS where the GPU is 8.x, each with --sweep) and bench_flex_attention.py (block-sparse
# attention through FlexAttention against dense SDPA). Every step runs even if one before it failed; the
# logs and JSON go to OUT_DIR, and the exit status is the number of failed steps. pytest runs
# with -P so that the installed sparsecc, not the source folder of the same name, is imported.
#
#   bash bench/gpu_checks.sh [OUT_DIR]        (PYTHON=... to choose the interpreter; ROUNDS=100)
set -u
out=${1:-gpu-checks}
py=${PYTHON:-python3}
rounds=${ROUNDS:-100}
mkdir -p "$out"
failed=0
step() {  # step NAME COMMAND...: run, log to OUT_DIR/NAME.txt, echo the log, count failures
    local name=$1; shift
    echo "== $name: $*"
    "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    cat "$out/$name.txt"
    [ $rc -eq 0 ] || { echo "== $name failed (exit $rc)"; failed=$((failed + 1)); }
}
step machine sh -c "nvidia-smi; $py -c 'import torch; print(torch.__version__, torch.version.cuda, torch.backends.cusparselt.version())'"
step tests "$py" -P -m pytest -m "gpu or tensorrt" tests/backends/torch_semi_structured tests/backends/tensorrt tests/kernels/test_flex_attention.py -n 0 -rs -p no:cacheprovider
step bench-fp16-cusparselt "$py" bench/bench_semi_structured.py --rounds "$rounds" --sweep --json "$out/fp16-cusparselt.json"
step bench-bf16-cusparselt "$py" bench/bench_semi_structured.py --rounds "$rounds" --sweep --dtype bfloat16 --json "$out/bf16-cusparselt.json"
# torch's CUTLASS 2:4 kernels are for compute capability 8.x only (see the eligibility rules)
if [ "$("$py" -c 'import torch; print(torch.cuda.get_device_capability()[0])' 2>/dev/null)" = 8 ]; then
    step bench-fp16-cutlass "$py" bench/bench_semi_structured.py --rounds "$rounds" --sweep --backend cutlass --json "$out/fp16-cutlass.json"
else
    echo "== bench-fp16-cutlass: skipped, torch's CUTLASS 2:4 kernels need compute capability 8.x"
fi
step bench-flex-attention "$py" bench/bench_flex_attention.py --rounds "$rounds" --out "$out/flex-attention.json"
echo "== $failed step(s) failed"
exit $failed
