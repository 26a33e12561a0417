#!/usr/bin/env bash
# The second GPU session's extra figures (bf16 and channels_last apart; packing with both, with and without MPS).
#     bash benchmarks/gpu_extra.sh [OUT_DIR]
set -u
cd "$(dirname "$0")/.."
out=${1:-gpu-logs}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
engine() { timeout 40 python3 benchmarks/engine.py --dataset random-cifar100 --images 20000 --epochs 3 --methods iakd \
  --graphs on --extra "$1"; }
{
  engine compute.bf16=true
  engine compute.channels_last=true
  timeout 60 python3 benchmarks/packing.py --graphs on --bf16 --channels-last --counts 1,2,4 --seconds 5
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/iakd-mps CUDA_MPS_LOG_DIRECTORY=/tmp/iakd-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d && echo "MPS started"
  timeout 45 python3 benchmarks/packing.py --graphs on --bf16 --channels-last --counts 2,4 --seconds 5
  echo quit | nvidia-cuda-mps-control
} 2>&1 | tee "$out/extra.log"
