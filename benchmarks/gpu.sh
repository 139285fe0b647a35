#!/usr/bin/env bash
# The GPU measurements, in one script for a CUDA machine: training and inference throughput of all six
# models at 224 (bf16, channels_last), model-only against end-to-end with the device-resident pipeline,
# then forward latency against torchvision. Results go to $OUT (default benchmarks/gpu/), with the GPU,
# driver and versions beside them. Usage: bash benchmarks/gpu.sh
set -euo pipefail
out=${OUT:-benchmarks/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 ARCHBENCH_CACHE=${ARCHBENCH_CACHE:-/tmp/archbench-cache}
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__)"
} | tee "$out/device.txt"
python -m archbench bench resnet18 resnet18_plain vgg11 vgg11_bn vgg16 vgg16_bn --device cuda --image-size 224 \
  --batch-size 256 --precision bf16 --channels-last --steps 30 --out "$out/bench.json" | tee "$out/bench.txt"
python -m pytest benchmarks/test_forward_latency.py -q --benchmark-json "$out/forward_latency.json" | tail -n 30
