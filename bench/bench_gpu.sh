#!/usr/bin/env bash
# The NVIDIA GPU check of the torch backend: fp32/fp16/bf16 with CUDA-graph replay and fp16 with torch.compile
# (default mode), against timm eager fp32, at batch 1, 16 and 64, in one interleaved run that ends within about
# 5 minutes including compilation. Writes bench.md, bench.json, bench.png and bench_gpu.log into $OUT when set
# (the device tool's result folder), else into out/bench_gpu.
#
#   bash bench/bench_gpu.sh                               # on the GPU machine
#   bash bench/bench_gpu.sh --device cpu --seconds 1      # the same flow tried on a CPU (no fp16, no compile)
#
# Python: $PYTHON if set; else the repository's .venv when its torch sees a GPU (or --device cpu); else `python3`
# when it has torch and timm (the GPU machine's image has both); else `python3 -m pip install -r requirements.txt`
# (needs network access). On a GPU, compiled kernels are cached in out/compile_cache, so a rerun on the same machine
# skips most compilation.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"

device=cuda
seconds=3
rounds=3
warmup=0.5
batch_sizes=
backends=
gpu_batch_sizes=1,16,64
gpu_backends="timm-eager,torch:fp32,torch:fp16,torch:bf16,torch:fp16+compile"
# on a CPU, a try of the flow: no fp16 (no CPU here computes it natively) and no compilation (minutes on a CPU)
cpu_batch_sizes=1,2
cpu_backends="timm-eager,torch:fp32,torch:bf16"
time_limit=240  # no new point starts after this many seconds; compilation of a started point still finishes
out="${OUT:-$root/out/bench_gpu}"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    cat <<EOF

Options (defaults in brackets):
  --device cuda|cpu      [$device]
  --seconds S            timed seconds per backend and batch size [$seconds]
  --rounds N             interleaved rounds per point [$rounds]
  --warmup S             warm-up seconds per backend and batch size [$warmup]
  --batch_sizes LIST     [$gpu_batch_sizes; with --device cpu $cpu_batch_sizes]
  --backends LIST        subjects, see bench/bench_backends.py
                         [$gpu_backends;
                          with --device cpu $cpu_backends]
  --time_limit S         start no new point after S seconds [$time_limit]
  --out DIR              result folder [\$OUT or out/bench_gpu]
EOF
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --device|--seconds|--rounds|--warmup|--batch_sizes|--backends|--time_limit|--out)
            if [ "$#" -lt 2 ]; then
                echo "error: $1 needs a value (see --help)" >&2
                exit 2
            fi ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    case "$1" in
        --device) device="$2" ;;
        --seconds) seconds="$2" ;;
        --rounds) rounds="$2" ;;
        --warmup) warmup="$2" ;;
        --batch_sizes) batch_sizes="$2" ;;
        --backends) backends="$2" ;;
        --time_limit) time_limit="$2" ;;
        --out) out="$2" ;;
    esac
    shift 2
done
case "$device" in
    cuda) batch_sizes="${batch_sizes:-$gpu_batch_sizes}"; backends="${backends:-$gpu_backends}" ;;
    cpu) batch_sizes="${batch_sizes:-$cpu_batch_sizes}"; backends="${backends:-$cpu_backends}" ;;
    *) echo "error: --device must be cuda or cpu, got '$device'" >&2; exit 2 ;;
esac

has_torch() {  # has_torch PYTHON: torch and timm import, and torch sees a GPU unless --device cpu
    "$1" - "$device" >/dev/null 2>&1 <<'EOF'
import sys
import timm, torch
sys.exit(0 if sys.argv[1] == "cpu" or torch.cuda.is_available() else 1)
EOF
}

if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif [ -x "$root/.venv/bin/python" ] && has_torch "$root/.venv/bin/python"; then
    python="$root/.venv/bin/python"
elif has_torch python3; then
    python=python3
else
    echo "torch/timm with a usable device not found: installing requirements.txt with python3 -m pip" >&2
    python3 -m pip install -q -r "$root/requirements.txt"
    python=python3
fi

mkdir -p "$out"
if [ "$device" = cuda ]; then
    mkdir -p "$root/out/compile_cache"
    export TORCHINDUCTOR_CACHE_DIR="$root/out/compile_cache/inductor"
    export TRITON_CACHE_DIR="$root/out/compile_cache/triton"
fi
export PYTHONUNBUFFERED=1
log="$out/bench_gpu.log"
{
    echo "python: $(command -v "$python") ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
    if [ "$device" = cuda ] && command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
            --format=csv || true
    fi
} 2>&1 | tee "$log"

started=$SECONDS
status=0
"$python" "$root/bench/bench_backends.py" --device "$device" --batch_sizes "$batch_sizes" --seconds "$seconds" \
    --rounds "$rounds" --warmup "$warmup" --backends "$backends" --time_limit "$time_limit" --out "$out" \
    2>&1 | tee -a "$log" || status=$?
echo "bench_gpu.sh: finished in $((SECONDS - started)) s with status $status; results in $out" | tee -a "$log"
exit "$status"
