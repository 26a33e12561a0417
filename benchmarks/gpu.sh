#!/usr/bin/env bash
# The GPU session of benchmarks/, as one script: the CUDA tests, then every benchmark with the figures that
# benchmarks/README.md records. Each part has its own time limit and a failing part does not stop the rest.
# Needs torch (with CUDA), numpy, PyYAML, scikit-learn and pytest; not Ray, MLflow or Optuna.
#
#     bash benchmarks/gpu.sh [OUT_DIR]      (logs: OUT_DIR/*.log, default ./gpu-logs)
#     PARTS="tests packing_mps" bash benchmarks/gpu.sh OUT_DIR      (only some parts)
set -u
cd "$(dirname "$0")/.."
out=${1:-gpu-logs}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
parts=" ${PARTS:-tests step_time engine packing packing_mps more} "

part() {  # part NAME SECONDS COMMAND...: run, log to $out/NAME.log, report the exit status
  local name=$1 limit=$2
  shift 2
  [[ $parts == *" $name "* ]] || return 0
  echo "=== $name ($(date -u +%H:%M:%S)): $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$out/$name.log"
  echo "=== $name: exit $rc"
}

# Packed processes with NVIDIA's Multi-Process Service, which lets kernels of several processes run at once
# (without it the processes take turns on the GPU).
packing_mps() {
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/iakd-mps CUDA_MPS_LOG_DIRECTORY=/tmp/iakd-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d || { echo "MPS could not be started"; return 1; }
  echo "MPS started"
  python3 benchmarks/packing.py --graphs both --counts 1,2,4,8 --seconds 6
  local rc=$?
  echo quit | nvidia-cuda-mps-control
  return $rc
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name(0))"
} | tee "$out/machine.log"

part tests 100 python3 -m pytest -q -p no:cacheprovider tests/test_step.py
part step_time 110 python3 benchmarks/step_time.py --pairs resnet56:resnet20 --repeats 3 --steps 10
part engine 140 python3 benchmarks/engine.py --dataset random-cifar100 --images 20000 --epochs 3 \
  --methods ce,kd,iakd --graphs both
part packing 150 bash -c "python3 benchmarks/packing.py --graphs on --counts 1,2,4,8 --seconds 6 &&
  python3 benchmarks/packing.py --graphs off --counts 1,4 --seconds 6"
export -f packing_mps
part packing_mps 200 bash -c packing_mps
part more 80 bash -c "python3 benchmarks/engine.py --dataset random-cifar100 --images 20000 --epochs 3 \
  --methods iakd --graphs on --extra compute.bf16=true,compute.channels_last=true &&
  python3 benchmarks/data.py --device cuda --quick &&
  python3 benchmarks/step_time.py --pairs resnet32x4:resnet8x4 --repeats 3 --steps 10"
