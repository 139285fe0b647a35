#!/usr/bin/env bash
# The GPU measurements in one script, for one call on a lent H100/H200 (at most 10 minutes, one try): for
# resnet18 and vgg16_bn, the real training loop end to end (compiled, bf16, channels_last, 224; the median
# images/s of the steady epochs, compile time apart), then in the same process the loop's own compiled step
# on batches kept on the device (model only) alternating with loader-fed rounds, and the batch transform
# against the forward; then, if time allows, the forward-latency benchmark and `archbench bench` of the
# other models. benchmarks/gpu_check.py holds the steps; each writes its numbers the moment it has them.
#
# What comes back (the GPU machine hands back at most 8 files, two folders deep, 16 MiB each): DIR holds
#   gpu-results.json   every goal met / not met / not measured and why, each step's outcome, the device,
#                      versions and the code measured (read by `archbench report`)
#   summary.txt        the same in a few lines
#   results.tar.gz     every log and result file of every step (never a checkpoint or data array)
#   bench/             `archbench bench`'s two result files
# All three are rewritten after every step, so a call cut short still returns what was measured.
#
# Plan (estimated for one H100, from ~13-14k images/s for ResNet-18 and ~3k for VGG16-BN end to end and
# 40-60 s per model for torch.compile's training graph): device and versions 15 s; the throughput set
# (200 classes x 100 train + 10 test images, written as arrays) 10 s; each model's loop step about
# 2 minutes (start-up 10 s, compile about 60 s, 4 epochs of 20,000 images: 7 s for ResNet-18, 30 s for
# VGG16-BN, the evaluation graph's compile 20 s, rounds 3 + 11 s); collect 3 s after each step. The
# required steps with compile: about 5.5 minutes, within 6. The optional steps start only if the deadline
# (480 s) still leaves room, so the whole call stays under 8 minutes plus the machine's start.
#
# The working tree's code is measured: it is put first on PYTHONPATH (before any carried wheel), the device
# step records archbench.__file__, a hash of the tree's sources and (where there is git metadata) the
# commit and dirty state, and stops the script when an installed archbench wheel differs from the tree.
#
#   bash benchmarks/gpu.sh [DIR]          on a CUDA machine; DIR defaults to benchmarks/gpu
#   PYTHON=.venv/bin/python bash ...      the interpreter to use (default: python3, as on the GPU image)
#   ARCHBENCH_GPU_DEADLINE=SECONDS        the whole script's deadline for optional steps (default 480 on a GPU)
#   bash benchmarks/gpu.sh --cpu-check [DIR]   the very same steps on the CPU at a tiny size, into DIR (default
#                                         a temporary folder, never benchmarks/gpu), in exactly the same layout,
#                                         marked as a CPU check
set -uo pipefail
cd "$(dirname "$0")/.."
tree=$PWD
python=${PYTHON:-python3}
export PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}"  # the tree's archbench before any installed copy
mode=gpu
if [ "${1:-}" = "--cpu-check" ]; then mode=cpu; shift; fi
if [ "$mode" = cpu ]; then
  out=${1:-$(mktemp -d -t archbench-gpu-check-XXXX)}
  export ARCHBENCH_COMPILE_BACKEND=${ARCHBENCH_COMPILE_BACKEND:-eager}  # dynamo's capture, no code generation
  device=cpu; classes=10; per_class=5; test=4; check=--cpu-check  # 3 steps an epoch at batch 16
  # `bench` of one small model at a tiny size; the latency benchmark of one model at batch 1, briefly.
  extra_models="resnet18_plain"; bench_size=32; bench_batch=8; bench_steps=1; bench_precision=fp32
  latency_select=(-k "test_forward_latency and resnet18-b1-" --benchmark-max-time 0.2)
  deadline=${ARCHBENCH_GPU_DEADLINE:-900}  # the check proves every step; none is skipped for time
  # per-step timeouts: device, data, loop (each model), collect, latency, bench
  t_device=60; t_data=60; t_loop=300; t_collect=30; t_latency=60; t_bench=90
else
  out=${1:-benchmarks/gpu}
  device=cuda; classes=200; per_class=100; test=10; check=""
  extra_models="resnet18_plain vgg11 vgg11_bn vgg16"; bench_size=224; bench_batch=256; bench_steps=20
  bench_precision=bf16; latency_select=(--benchmark-max-time 0.5)
  deadline=${ARCHBENCH_GPU_DEADLINE:-480}  # 8 minutes
  # per-step timeouts (seconds): the required steps' sum to 460 with their collects' 20 each, so even a
  # call in which every one runs to its limit ends inside 10 minutes
  t_device=60; t_data=60; t_loop=170; t_collect=20; t_latency=60; t_bench=120
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d -t archbench-gpu-work-XXXX)  # logs, step files, run records: packed into $out after each step
export PYTHONUNBUFFERED=1 ARCHBENCH_CACHE=${ARCHBENCH_CACHE:-/tmp/archbench-cache}
data="$ARCHBENCH_CACHE/gpu-check-c$classes-t$per_class-arrays"
end=$((SECONDS + deadline))
failed=0 skipped=0
note() { echo "$1" >> "$work/steps.jsonl"; }
collect() {  # gpu-results.json, summary.txt and results.tar.gz into $out from whatever the steps left so far
  timeout $t_collect "$python" benchmarks/gpu_check.py collect "$work" --into "$out" $check > "$work/collect.log" 2>&1
}
step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to NAME.log, never stop the script, then collect
  local name=$1 limit=$2; shift 2
  local began=$SECONDS
  echo "== $name (timeout ${limit}s, $((end - SECONDS))s of the deadline left)"
  note "{\"step\": \"$name\", \"exit\": null, \"timeout\": $limit}"
  timeout "$limit" "$@" > "$work/$name.log" 2>&1
  local code=$?
  echo "   $((SECONDS - began))s"
  note "{\"step\": \"$name\", \"exit\": $code, \"seconds\": $((SECONDS - began)), \"timeout\": $limit}"
  if [ $code -ne 0 ]; then
    echo "   FAILED (exit $code): see $name.log in $out/results.tar.gz"; tail -n 5 "$work/$name.log"
    failed=$((failed + 1))
  fi
  collect
  return $code
}
optional() {  # optional NAME SECONDS MIN COMMAND...: a step run only if MIN seconds of the deadline are left
  local name=$1 limit=$2 least=$3; shift 3  # after the collect step's share, and cut to what is left
  local left=$((end - SECONDS - t_collect))
  if [ $left -lt "$least" ]; then
    echo "== $name skipped: ${left}s left before the deadline, it needs ${least}s"; skipped=$((skipped + 1))
    note "{\"step\": \"$name\", \"skipped\": \"${left} s left before the deadline, it needs ${least} s\"}"
    collect
    return
  fi
  step "$name" $((left < limit ? left : limit)) "$@"
}

step device $t_device "$python" benchmarks/gpu_check.py device "$work" $check
code=$?
cat "$work/device.log"
if [ $code -ne 0 ] && [ $code -ne 124 ]; then  # not the tree's code, or no device: nothing worth measuring
  echo "stopped: the device step failed; results in $out"
  exit 1
fi
step data $t_data "$python" benchmarks/gpu_check.py data "$data" --classes $classes --train-per-class $per_class \
  --test-per-class $test
for model in resnet18 vgg16_bn; do
  step "loop-$model" $t_loop "$python" benchmarks/gpu_check.py loop $model --data "$data" --out "$work" $check
done
# Optional, if time allows: the latency benchmark writes its JSON only at its end, so it starts only with its
# whole timeout left; the bench writes its files after every model, so it may start with less.
optional latency $t_latency $t_latency "$python" -m pytest benchmarks/test_forward_latency.py -q -p no:randomly \
  "${latency_select[@]}" --benchmark-json "$work/forward_latency.json"
optional bench $t_bench 45 "$python" -m archbench bench $extra_models --device $device --image-size $bench_size \
  --batch-size $bench_batch --steps $bench_steps --precision $bench_precision --channels-last --compile \
  --data "$data" --out "$out/bench"
cat "$out/summary.txt" 2>/dev/null
echo "results in $out ($failed step(s) failed, $skipped skipped for time)"
exit $((failed > 0))
