#!/usr/bin/env bash
# The GPU measurements in one script, within 8 minutes on one H100/H200: for resnet18 and vgg16_bn, the real
# training loop end to end (compiled, bf16, channels_last, 224; epoch 2's images/s, compile time apart) and
# model-only throughput of the same step in the same process, then `archbench bench` of the other models
# and the forward-latency benchmark if time allows. Every step has its own timeout, so one failure loses
# only that step. Device, driver, versions and every number land in one folder, with gpu-results.json
# (read by `archbench report`) listing each goal as met or not.
#
#   bash benchmarks/gpu.sh [DIR]          on a CUDA machine; DIR defaults to benchmarks/gpu
#   PYTHON=.venv/bin/python bash ...      the interpreter to use (default: python on PATH)
#   bash benchmarks/gpu.sh --cpu-check    the very same steps on the CPU at a tiny size (under 3 minutes),
#                                         into a temporary folder (never benchmarks/gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}  # the interpreter with archbench installed
mode=gpu
if [ "${1:-}" = "--cpu-check" ]; then mode=cpu; shift; fi
if [ "$mode" = cpu ]; then
  out=${1:-$(mktemp -d -t archbench-gpu-check-XXXX)}
  export ARCHBENCH_COMPILE_BACKEND=${ARCHBENCH_COMPILE_BACKEND:-eager}  # dynamo's capture, no code generation
  classes=10; per_class=16; val=4; check=--cpu-check; extra_models=""
else
  out=${1:-benchmarks/gpu}
  classes=200; per_class=100; val=10; check=""; extra_models="resnet18_plain vgg11 vgg11_bn vgg16"
fi
mkdir -p "$out"
export PYTHONUNBUFFERED=1 ARCHBENCH_CACHE=${ARCHBENCH_CACHE:-/tmp/archbench-cache}
data="$ARCHBENCH_CACHE/gpu-check-c$classes-t$per_class"
failed=0
step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to DIR/NAME.log, never stop the script
  local name=$1 limit=$2; shift 2
  echo "== $name (timeout ${limit}s)"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local code=$?
  if [ $code -ne 0 ]; then
    echo "   FAILED (exit $code): see $out/$name.log"; tail -n 5 "$out/$name.log"; failed=$((failed + 1))
  fi
}

step device 60 "$python" - "$out" "$mode" <<'PY'
import datetime, json, subprocess, sys
import torch, torchvision
import archbench
from archbench.provenance import git_state
out, mode = sys.argv[1], sys.argv[2]
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip() if mode == "gpu" else ""
name, driver = ([s.strip() for s in smi.split(",")[:2]] + ["", ""])[:2] if smi else ("cpu", None)
commit, dirty = git_state()
info = {"measured_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": torch.cuda.get_device_name() if mode == "gpu" else "cpu", "driver": driver,
        "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
        "archbench": archbench.__version__, "git_commit": commit, "git_dirty": dirty, "cpu_check": mode == "cpu"}
json.dump(info, open(f"{out}/device.json", "w"), indent=2, sort_keys=True)
print(json.dumps(info, indent=2))
PY
cat "$out/device.log"
step data 120 "$python" -m archbench data synth --root "$data" --classes $classes --train-per-class $per_class \
  --val-per-class $val
for model in resnet18 vgg16_bn; do
  step "loop-$model" 200 "$python" benchmarks/gpu_check.py $model --data "$data" --out "$out" $check
done
step collect 30 "$python" benchmarks/gpu_check.py --collect "$out"
cat "$out/collect.log"
if [ -n "$extra_models" ]; then
  step bench 90 "$python" -m archbench bench $extra_models --device cuda --image-size 224 --batch-size 256 \
    --precision bf16 --channels-last --compile --data "$data" --out "$out/bench"
  step latency 60 "$python" -m pytest benchmarks/test_forward_latency.py -q -p no:randomly \
    --benchmark-json "$out/forward_latency.json"
fi
echo "results in $out ($failed step(s) failed)"
exit $((failed > 0))
