#!/usr/bin/env bash
# The GPU measurements in one script, within 8 minutes on one H100/H200: for resnet18 and vgg16_bn, the real
# training loop end to end (compiled, bf16, channels_last, 224; epoch 2's images/s, compile time apart),
# model-only training and inference throughput and the batch transform against the forward, in the same
# process; then, if time allows, the forward-latency benchmark and `archbench bench` of the other models.
# Every step has its own timeout, so one failure loses only that step, and the whole script a deadline:
# an optional step starts only if the time left (less what the last step needs) still allows it, and runs
# at most that long. Device, driver, versions and every number land in one folder, with gpu-results.json
# (read by `archbench report`) listing each goal as met or not; the bench results go to its bench/
# subfolder (benchmarks/gpu/bench by default, which `archbench report` reads beside benchmarks/results).
#
#   bash benchmarks/gpu.sh [DIR]          on a CUDA machine; DIR defaults to benchmarks/gpu
#   PYTHON=.venv/bin/python bash ...      the interpreter to use (default: python on PATH)
#   ARCHBENCH_GPU_DEADLINE=SECONDS        the whole script's deadline (default 480 on a GPU)
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
  device=cpu; classes=10; per_class=5; val=4; check=--cpu-check  # 3 steps an epoch at batch 16
  # `bench` of one small model at a tiny size; the latency benchmark of one model at batch 1, briefly.
  extra_models="resnet18_plain"; bench_size=32; bench_batch=8; bench_steps=1; bench_precision=fp32
  latency_select=(-k "test_forward_latency and resnet18-b1-" --benchmark-max-time 0.2)
  deadline=${ARCHBENCH_GPU_DEADLINE:-600}  # the check proves every step; none is skipped for time
  # per-step timeouts: device, data, loop (each model), collect, latency, bench
  t_device=60; t_data=60; t_loop=150; t_collect=30; t_latency=60; t_bench=90
else
  out=${1:-benchmarks/gpu}
  device=cuda; classes=200; per_class=100; val=10; check=""
  extra_models="resnet18_plain vgg11 vgg11_bn vgg16"; bench_size=224; bench_batch=256; bench_steps=20
  bench_precision=bf16; latency_select=(--benchmark-max-time 0.5)
  deadline=${ARCHBENCH_GPU_DEADLINE:-480}  # 8 minutes
  # per-step timeouts (seconds): the required ones sum to 420 (the 22,000 synthetic JPEGs take about a
  # minute to write); the optional two start only if time allows
  t_device=20; t_data=90; t_loop=145; t_collect=20; t_latency=60; t_bench=120
fi
mkdir -p "$out"
export PYTHONUNBUFFERED=1 ARCHBENCH_CACHE=${ARCHBENCH_CACHE:-/tmp/archbench-cache}
data="$ARCHBENCH_CACHE/gpu-check-c$classes-t$per_class"
end=$((SECONDS + deadline))
failed=0 skipped=0
step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to DIR/NAME.log, never stop the script
  local name=$1 limit=$2; shift 2
  local began=$SECONDS
  echo "== $name (timeout ${limit}s, $((end - SECONDS))s of the deadline left)"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local code=$?
  echo "   $((SECONDS - began))s"
  if [ $code -ne 0 ]; then
    echo "   FAILED (exit $code): see $out/$name.log"; tail -n 5 "$out/$name.log"; failed=$((failed + 1))
  fi
}
optional() {  # optional NAME SECONDS MIN COMMAND...: a step run only if MIN seconds of the deadline are left
  local name=$1 limit=$2 least=$3; shift 3  # after the collect step's share, and cut to what is left
  local left=$((end - SECONDS - t_collect))
  if [ $left -lt "$least" ]; then
    echo "== $name skipped: ${left}s left before the deadline, it needs ${least}s"; skipped=$((skipped + 1))
    return
  fi
  step "$name" $((left < limit ? left : limit)) "$@"
}

step device $t_device "$python" - "$out" "$mode" <<'PY'
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
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if mode == "gpu" else None,
        "archbench": archbench.__version__, "git_commit": commit, "git_dirty": dirty, "cpu_check": mode == "cpu"}
json.dump(info, open(f"{out}/device.json", "w"), indent=2, sort_keys=True)
print(json.dumps(info, indent=2))
PY
cat "$out/device.log"
step data $t_data "$python" -m archbench data synth --root "$data" --classes $classes --train-per-class $per_class \
  --val-per-class $val
for model in resnet18 vgg16_bn; do
  step "loop-$model" $t_loop "$python" benchmarks/gpu_check.py $model --data "$data" --out "$out" $check
done
# Optional, if time allows: the latency benchmark writes its JSON only at its end, so it starts only with its
# whole timeout left; the bench writes its files after every model, so it may start with less.
optional latency $t_latency $t_latency "$python" -m pytest benchmarks/test_forward_latency.py -q -p no:randomly \
  "${latency_select[@]}" --benchmark-json "$out/forward_latency.json"
optional bench $t_bench 45 "$python" -m archbench bench $extra_models --device $device --image-size $bench_size \
  --batch-size $bench_batch --steps $bench_steps --precision $bench_precision --channels-last --compile \
  --data "$data" --out "$out/bench"
step collect $t_collect "$python" benchmarks/gpu_check.py --collect "$out"
cat "$out/collect.log"
echo "results in $out ($failed step(s) failed, $skipped skipped for time)"
exit $((failed > 0))
