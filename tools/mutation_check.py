"""Mutation check: would the test suite notice the bugs that matter?

Each entry of `MUTATIONS` is a plausible bug (one file, the exact original text, its replacement) and the
README promise it breaks. For each one this script copies archbench/, tests/, registry/, benchmarks/ and
pyproject.toml into a fresh temporary folder, applies the bug there, and runs

    python -m pytest -x -q -p no:randomly <the mutation's tests>

in that folder with PYTHONPATH pointing at the copy (so neither the checkout nor the installed editable
package is what the tests import; subprocesses the tests start inherit it). A mutation is

- caught   when pytest fails (or runs past --timeout),
- MISSED   when pytest passes: the suite does not hold the promise; add or strengthen a test,
- STALE    when its original text is no longer in the file: the code moved on; update the entry,
- skipped  when its file does not exist (e.g. archbench/report/stats.py while the report is reworked),
- BROKEN   when the mutated file does not compile: the entry is wrong, not the suite.

First the unmutated copy must pass every test the mutations name (the baseline; --no-baseline skips it),
else no verdict means anything. Usage, from the repository root:

    .venv/bin/python tools/mutation_check.py                    # everything: about 15 minutes on 2 CPU cores
    .venv/bin/python tools/mutation_check.py --list             # the mutations and the promise each breaks
    .venv/bin/python tools/mutation_check.py --only flip-rate --only crop-range
    .venv/bin/python tools/mutation_check.py --dry-run          # does every entry still apply? (seconds)

It is a development tool, not a test: CI's default `pytest` run does not collect it (testpaths is tests/).
Exit code 0 when every mutation is caught, 1 when one is missed, stale or broken, 2 when the baseline fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("archbench", "tests", "registry", "benchmarks", "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    mutated: str
    promise: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions


PROMISES = "tests/test_promises.py"
DATA = "tests/test_data.py"
TRAIN = "tests/test_train.py"
DIST = "tests/test_distributed.py"
MODELS = "tests/test_models.py"
STATS = ("tests/test_stats.py", "tests/test_promises_report.py")
GRADIENT_REFERENCE = f"{PROMISES}::test_gradient_records_are_the_true_gradient_before_clipping"
TWO_RANKS = f"{DIST}::test_two_ranks_train_on_disjoint_halves_like_one_process_at_twice_the_batch"
TWO_RANK_RESUME = f"{DIST}::test_a_killed_two_rank_job_resumes_to_the_uninterrupted_records"
SYNC_BN = (
    f"{DIST}::test_gloo_sync_bn_over_two_ranks_is_batch_norm_over_the_whole_batch",
    f"{DIST}::test_sync_bn_two_ranks_match_one_process_at_twice_the_batch",
)
CIFAR = "tests/test_source_cifar.py"
IMAGEFOLDER = "tests/test_source_imagefolder.py"
LOADER = (DATA, "-k", "flips or plan or shards or batches or evaluation or transform or eval")

RECORD_THEN_CLIP = """\
    if record:
        t.gradients.record(step)
    t.clipping.step(t.model, step)
"""
CLIP_THEN_RECORD = """\
    t.clipping.step(t.model, step)
    if record:
        t.gradients.record(step)
"""
STEP = "    t.scaler.step(t.optimizer)\n"

MUTATIONS = [
    # ---------------------------------------------------------------------------------------- the loop
    Mutation(
        "grad-record-after-clip",
        "archbench/train.py",
        RECORD_THEN_CLIP,
        CLIP_THEN_RECORD,
        "gradient norms are recorded before clipping",
        (GRADIENT_REFERENCE,),
    ),
    Mutation(
        "grad-record-after-step",
        "archbench/train.py",
        RECORD_THEN_CLIP + STEP,
        CLIP_THEN_RECORD.replace("    if record:\n        t.gradients.record(step)\n", "")
        + STEP
        + "    if record:\n        t.gradients.record(step)\n",
        "weight norms are read before the step (and gradients before clipping)",
        (GRADIENT_REFERENCE,),
    ),
    Mutation(
        "autocast-not-entered",
        "archbench/train.py",
        "    with t.autocast():\n        logits = t.forward(x)",
        "    with torch.autograd.enable_grad():\n        logits = t.forward(x)",
        "bf16/fp16 train under autocast",
        (PROMISES, "-k", "autocast"),
    ),
    Mutation(
        "autocast-off-on-cpu",
        "archbench/devices.py",
        "    if dtype is None:\n        return contextlib.nullcontext",
        '    if dtype is None or device.type == "cpu":\n        return contextlib.nullcontext',
        "bf16 autocast is entered on every device",
        (PROMISES, "-k", "autocast"),
    ),
    Mutation(
        "train-loss-over-one-rank",
        "archbench/train.py",
        "        loss_sum / samples,\n        correct / samples,",
        "        loss_sum / seen,\n        correct / samples,",
        "the train loss is averaged over all ranks' images",
        (TWO_RANKS,),
    ),
    Mutation(
        "no-gradient-averaging",
        "archbench/train.py",
        "forward = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)",
        "forward = model",
        "DDP averages the ranks' gradients",
        (TWO_RANKS,),
    ),
    Mutation(
        "loader-rank-not-passed",
        "archbench/train.py",
        "rank=dist.rank,",
        "rank=0,",
        "each rank trains on its own shard",
        (TWO_RANKS,),
    ),
    Mutation(
        "divergence-step-off-by-one",
        "archbench/train.py",
        "first_bad.clamp(max=step))",
        "first_bad.clamp(max=step + 1))",
        "a divergence is recorded at the step it happened",
        (PROMISES, "-k", "divergence"),
    ),
    Mutation(
        "exit-code-only-if-all-diverged",
        "archbench/cli.py",
        'if any(r["status"] != "completed" for r in results):',
        'if all(r["status"] != "completed" for r in results):',
        "`archbench run` exits 3 when a run diverged",
        (PROMISES, "-k", "divergence"),
    ),
    Mutation(
        "resume-rank0-rng-everywhere",
        "archbench/train.py",
        'set_rng_state(ckpt["rng"][dist.rank], device)',
        'set_rng_state(ckpt["rng"][0], device)',
        "a two-rank resume equals an uninterrupted run",
        (TWO_RANK_RESUME,),
    ),
    Mutation(
        "no-bn-broadcast-before-eval",
        "archbench/train.py",
        "        dist.broadcast_buffers(t.model)  # every",
        "        None  # every",
        "every rank evaluates rank 0's (the checkpointed) BN statistics",
        (TWO_RANK_RESUME,),
    ),
    Mutation(
        "resume-loses-previous-gradient",
        "archbench/gradients.py",
        '        if self.previous is not None:\n            state["previous"]',
        '        if False:\n            state["previous"]',
        "a resumed run's records equal an uninterrupted one's",
        (f"{TRAIN}::test_a_killed_run_resumes_and_matches_an_uninterrupted_one",),
    ),
    Mutation(
        "fp16-scaler-disabled",
        "archbench/train.py",
        'enabled=config.precision == "fp16")',
        "enabled=False)",
        "fp16 trains with an enabled GradScaler",
        (PROMISES, "-k", "fp16"),
    ),
    Mutation(
        "fp16-records-scaled-gradient",
        "archbench/train.py",
        "    if record or t.recipe.clip_grad_norm:",
        "    if t.recipe.clip_grad_norm:",
        "recorded gradients are unscaled under fp16",
        (PROMISES, "-k", "fp16"),
    ),
    # ---------------------------------------------------------------------------------------- the schedule
    Mutation(
        "warmup-rounded-up-to-epochs",
        "archbench/train.py",
        "warmup = int(recipe.warmup_epochs * steps_per_epoch)",
        "warmup = math.ceil(recipe.warmup_epochs) * steps_per_epoch",
        "the smoke preset warms up over half an epoch",
        (PROMISES, "-k", "warms_up or true_gradient"),
    ),
    Mutation(
        "warmup-truncated-to-epochs",
        "archbench/train.py",
        "warmup = int(recipe.warmup_epochs * steps_per_epoch)",
        "warmup = int(recipe.warmup_epochs) * steps_per_epoch",
        "the smoke preset warms up over half an epoch",
        (PROMISES, "-k", "warms_up or true_gradient"),
    ),
    # ---------------------------------------------------------------------------------------- the loader
    Mutation(
        "flip-rate",
        "archbench/data/loader.py",
        "flips = torch.rand(n, generator=generator) < 0.5",
        "flips = torch.rand(n, generator=generator) < 0.1",
        "horizontal flips with probability 0.5",
        LOADER,
    ),
    Mutation(
        "crop-range",
        "archbench/data/loader.py",
        "torch.randint(0, room + 1, (n, 2), generator=generator)",
        "torch.randint(0, room, (n, 2), generator=generator)",
        "random crops take every offset 0..room",
        LOADER,
    ),
    Mutation(
        "flip-wrong-axis",
        "archbench/data/loader.py",
        "gx = torch.where(flips.to(offsets.device).view(-1, 1), gx.flip(1), gx)",
        "gy = torch.where(flips.to(offsets.device).view(-1, 1), gy.flip(1), gy)",
        "the flip is horizontal",
        LOADER,
    ),
    Mutation(
        "half-pixel-shift",
        "archbench/data/loader.py",
        "gy = (2 * (k + top) + 1) / upscaled - 1",
        "gy = (2 * (k + top)) / upscaled - 1",
        "the transform equals torchvision's resize + crop + flip",
        LOADER,
    ),
    Mutation(
        "shard-same-for-every-rank",
        "archbench/data/loader.py",
        "used = slice(self.rank, self.num_batches * self.batch_size * self.world_size, self.world_size)",
        "used = slice(0, self.num_batches * self.batch_size * self.world_size, self.world_size)",
        "each rank takes every world-size-th image of one shuffle",
        LOADER,
    ),
    Mutation(
        "shard-contiguous-blocks",
        "archbench/data/loader.py",
        "used = slice(self.rank, self.num_batches * self.batch_size * self.world_size, self.world_size)",
        "used = slice(self.rank * self.num_batches * self.batch_size,"
        " (self.rank + 1) * self.num_batches * self.batch_size)",
        "each rank takes every world-size-th image of one shuffle",
        LOADER,
    ),
    Mutation(
        "remainder-kept",
        "archbench/data/loader.py",
        "        if self.full_batches:\n            return self.dataset_size // global_batch",
        "        if self.full_batches:\n            return math.ceil(self.dataset_size / global_batch)",
        "training batches are all full (the remainder waits for a later epoch)",
        LOADER,
    ),
    Mutation(
        "eval-not-sharded",
        "archbench/data/loader.py",
        "torch.arange(used)[self.rank :: self.world_size]",
        "torch.arange(used)",
        "evaluation is sharded across ranks",
        LOADER,
    ),
    # ---------------------------------------------------------------------------------------- gradient records
    Mutation(
        "cosine-normalised-by-this-step-twice",
        "archbench/gradients.py",
        "dots / (grad_norms * self.grad_norms[step - 1])",
        "dots / (grad_norms * grad_norms)",
        "the cosine is to the previous step's gradient",
        (GRADIENT_REFERENCE,),
    ),
    Mutation(
        "cosine-against-first-step",
        "archbench/gradients.py",
        "        self.previous = self.hold(grads)\n",
        "        self.previous = self.previous or self.hold(grads)\n",
        "the cosine is to the previous step's gradient",
        (GRADIENT_REFERENCE,),
    ),
    Mutation(
        "grad-rms-over-n",
        "archbench/gradients.py",
        "grad_rms=grad[step][i] / math.sqrt(sizes[i]),",
        "grad_rms=grad[step][i] / sizes[i],",
        "grad_rms is ‖g‖/√n",
        (GRADIENT_REFERENCE,),
    ),
    # ---------------------------------------------------------------------------------------- models
    Mutation(
        "zero-init-default-true",
        "archbench/models/resnet.py",
        "        zero_init_last_bn = residual",
        "        zero_init_last_bn = True",
        "a plain net keeps its last BN gamma at 1",
        (MODELS,),
    ),
    Mutation(
        "residual-add-missing",
        "archbench/models/resnet.py",
        "out += x if self.downsample is None else self.downsample(x)",
        "out += 0 if self.downsample is None else self.downsample(x)",
        "ResNet-18 is torchvision's resnet18",
        (MODELS,),
    ),
    Mutation(
        "vgg-bn-missing",
        "archbench/models/vgg.py",
        "[conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if",
        "[conv, nn.ReLU(inplace=True)] if",
        "VGG-BN is torchvision's vgg*_bn",
        (MODELS,),
    ),
    # ---------------------------------------------------------------------------------------- report statistics
    Mutation(
        "t-interval-normal-quantile",
        "archbench/report/stats.py",
        "t = float(scipy_stats.t.ppf((1 + confidence) / 2, len(v) - 1))",
        "t = float(scipy_stats.norm.ppf((1 + confidence) / 2))",
        "intervals are Student's t over seeds",
        STATS,
    ),
    Mutation(
        "t-interval-population-sd",
        "archbench/report/stats.py",
        "sd = float(np.std(v, ddof=1))",
        "sd = float(np.std(v, ddof=0))",
        "intervals use the sample standard deviation",
        STATS,
    ),
    Mutation(
        "student-instead-of-welch",
        "archbench/report/stats.py",
        "ttest_ind(va, vb, equal_var=False)",
        "ttest_ind(va, vb, equal_var=True)",
        "different seeds are compared with Welch's t-test",
        STATS,
    ),
    Mutation(
        "unpaired-same-seeds",
        "archbench/report/stats.py",
        "result = scipy_stats.ttest_rel(va, vb)",
        "result = scipy_stats.ttest_ind(va, vb, equal_var=False)",
        "the same seeds are compared with a paired t-test",
        STATS,
    ),
    Mutation(
        "constant-differences-to-welch",
        "archbench/report/stats.py",
        "            if _no_spread(differences):\n",
        "            if False:\n",
        "constant paired differences are decided by the exact sign-flip test, never Welch",
        STATS,
    ),
    Mutation(
        "holm-as-bonferroni",
        "archbench/report/stats.py",
        "running = max(running, min(1.0, (m - k) * x))",
        "running = max(running, min(1.0, m * x))",
        "p-values are adjusted with Holm's step-down procedure within each family",
        STATS,
    ),
    Mutation(
        "never-reached-dropped",
        "archbench/report/thresholds.py",
        "out[int(r.seed)] = math.inf if e is None else float(e)",
        "out[int(r.seed)] = math.nan if e is None else float(e)",
        "a seed that never reaches a threshold counts as infinite time, never as a dropped seed",
        ("tests/test_report_claims.py", "-k", "never_reaches"),
    ),
    Mutation(
        "clip-bound-inverted",
        "archbench/train.py",
        "bound = self.max_norm / (norm + 1e-6) < 1.0",
        "bound = self.max_norm / (norm + 1e-6) > 1.0",
        "each epoch records the fraction of optimiser steps whose gradient clipping bound",
        ("tests/test_clipping_record.py",),
    ),
    Mutation(
        "threshold-strict",
        "archbench/runs.py",
        "if acc >= t), None)",
        "if acc > t), None)",
        "epochs to threshold count reaching it",
        (TRAIN, "-k", "epochs_to_threshold"),
    ),
    Mutation(
        "locked-run-resumed",
        "archbench/runs.py",
        "            if fd is None:  # another process is running it right now\n                continue",
        "            if fd is None:  # another process is running it right now\n                pass",
        "a second process never writes into the run another one is writing",
        (f"{TRAIN}::test_a_second_process_beside_a_running_one_gets_a_run_of_its_own",),
    ),
    # ---------------------------------------------------------------------------------------- devices
    Mutation(
        "precision-auto-ignores-bf16-support",
        "archbench/devices.py",
        'return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"',
        'return "bf16" if device.type == "cuda" else "fp32"',
        "precision auto is bf16 only where the GPU supports it",
        (PROMISES, "-k", "precision"),
    ),
    Mutation(
        "channels-last-off-on-cuda",
        "archbench/devices.py",
        'return requested if requested is not None else device.type == "cuda"',
        "return requested if requested is not None else False",
        "channels_last is on by default for CUDA",
        (PROMISES, "-k", "channels_last or cuda_run"),
    ),
    Mutation(
        "fused-sgd-inverted",
        "archbench/devices.py",
        'if device.type == "cuda" and precision != "fp16":',
        'if device.type == "cuda" and precision == "fp16":',
        "the fused SGD kernel on CUDA, except under fp16",
        (PROMISES, "-k", "sgd"),
    ),
    # ---------------------------------------------------------------------------------------- distributed
    Mutation(
        "syncbn-gloo-on-cuda",
        "archbench/distributed.py",
        '    if device.type != "cpu":',
        '    if device.type not in ("cpu", "cuda"):',
        "nn.SyncBatchNorm on CUDA, GlooSyncBatchNorm on the CPU",
        (PROMISES, "-k", "sync_bn"),
    ),
    Mutation(
        "gloo-syncbn-local-statistics",
        "archbench/distributed.py",
        "stats = dist_fn.all_reduce(torch.cat(",
        "stats = (torch.cat(",
        "--sync-bn reduces BN statistics over ranks",
        SYNC_BN,
    ),
    Mutation(
        "gloo-syncbn-biased-running-var",
        "archbench/distributed.py",
        "add_(var * n / (n - 1), alpha=m)",
        "add_(var, alpha=m)",
        "SyncBN's running variance is BatchNorm's (unbiased)",
        SYNC_BN,
    ),
    # ---------------------------------------------------------------------------------------- --gpus
    Mutation(
        "gpus-all-on-first",
        "archbench/launch.py",
        "        env, device = slots[gpu]",
        "        env, device = slots[slots_wanted[0]]",
        "--gpus runs one job per GPU at a time",
        (DIST, "-k", "gpus_runs_each_job"),
    ),
    Mutation(
        "gpu-slot-ignores-visible-devices",
        "archbench/launch.py",
        'physical = visible.split(",")[int(gpu)].strip() if visible else gpu',
        "physical = gpu",
        "--gpus ids index the GPUs this process sees",
        (DIST, "-k", "gpu"),
    ),
    # ---------------------------------------------------------------------------------------- validate first
    Mutation(
        "jobs-not-planned-first",
        "archbench/train.py",
        '            plan_runs(request, data, split, torch.device("cpu"), max(1, world_size))',
        "            pass",
        "--gpus and --launcher refuse a request that cannot run before any job is queued",
        ("tests/test_cluster.py", "-k", "before_any_job"),
    ),
    Mutation(
        "tuned-rate-recipe-unchecked",
        "archbench/train.py",
        "            tuned.check_recipe(base)",
        "            pass",
        "--lr tuned refuses a run whose image size or recipe changes what a rate means",
        ("tests/test_tune.py", "-k", "recipe or image_size"),
    ),
    Mutation(
        "bench-inference-training-transform",
        "archbench/data/loader.py",
        "        view.train = False\n",
        "        view.train = True\n",
        "the bench's inference stream is the evaluation transform in full batches",
        (DATA, "-k", "as_evaluation"),
    ),
    Mutation(
        "sign-flip-one-sided",
        "archbench/report/stats.py",
        "return 1.0 if difference == 0 else min(1.0, 2.0 / 2**n)",
        "return 1.0 if difference == 0 else min(1.0, 1.0 / 2**n)",
        "the exact sign-flip p is two-sided: 2 / 2^n",
        STATS,
    ),
    # ---------------------------------------------------------------------------------------- CIFAR, ImageFolder
    Mutation(
        "cifar-unpickler-allows-any-global",
        "archbench/data/cifar.py",
        "        allowed = _ARRAY_GLOBALS.get((module, name))\n",
        "        allowed = _ARRAY_GLOBALS.get((module, name)) or super().find_class(module, name)\n",
        "a CIFAR pickle that names any callable but numpy's array helpers is refused before it runs",
        (CIFAR, "-k", "runs_code"),
    ),
    Mutation(
        "cifar-pad-not-zero",
        "archbench/data/cifar.py",
        "    padded = F.pad(x, (0, 0, PADDING, PADDING, PADDING, PADDING))\n",
        "    padded = F.pad(x, (0, 0, PADDING, PADDING, PADDING, PADDING), value=255)\n",
        "CIFAR's augmentation pads with zeros, as torchvision's pad + crop + flip",
        (CIFAR, "-k", "torchvision"),
    ),
    Mutation(
        "step-schedule-late",
        "archbench/train.py",
        "            return STEP_FACTOR ** sum(step >= milestone for milestone in milestones)\n",
        "            return STEP_FACTOR ** sum(step > milestone for milestone in milestones)\n",
        "the step schedule divides the rate by 10 at 1/2 and 3/4 of training, as MultiStepLR does",
        (CIFAR, "-k", "multisteplr"),
    ),
    Mutation(
        "imagefolder-16-bit-clipped",
        "archbench/data/imagefolder.py",
        "np.round(values / 257)",
        "np.round(values)",
        "16-bit images are scaled to 8 bits, not clipped",
        (IMAGEFOLDER, "-k", "16_bit"),
    ),
    # ---------------------------------------------------------------------------------------- cheap diagnostics
    Mutation(
        "gradient-buffers-reallocated",
        "archbench/gradients.py",
        "        if self.buffers is None:\n",
        "        if True:\n",
        "the previous step's gradients go into buffers allocated once, not per step",
        ("tests/test_gradients.py", "-k", "buffers"),
    ),
    Mutation(
        "checkpoint-aliases-gradient-buffers",
        "archbench/gradients.py",
        'g.to("cpu", copy=True)',
        "g.cpu()",
        "a checkpoint's previous gradients are a copy, not the buffers the next step overwrites",
        ("tests/test_gradients.py", "-k", "restored"),
    ),
    Mutation(
        "dot-ignores-memory-order",
        "archbench/gradients.py",
        "torch.dot(memory_order(a), memory_order(b))",
        "torch.dot(a.reshape(-1), memory_order(b))",
        "cosines read in place are exact for channels-last weights too",
        ("tests/test_gradients.py", "-k", "reference"),
    ),
    Mutation(
        "bench-ratio-warning-silent",
        "archbench/bench.py",
        'if row[mode]["ratio"] > 1.0',
        'if row[mode]["ratio"] > 2.0',
        "`archbench bench` flags an end-to-end / model-only ratio above 1",
        ("tests/test_bench.py", "-k", "ratio_above"),
    ),
    Mutation(
        "digits-flipped",
        "archbench/data/loader.py",
        '"upscale to S*256/224, random S crop, no flip", False,',
        '"upscale to S*256/224, random S crop, no flip", True,',
        "the digits train without a horizontal flip",
        ("tests/test_data_sources.py", "-k", "never_flipped"),
    ),
    Mutation(
        "statistics-of-the-test-split",
        "archbench/data/packed.py",
        'train_images = np.load(packed / "train_images.npy", mmap_mode="r")',
        'train_images = np.load(packed / "test_images.npy", mmap_mode="r")',
        "the manifest's mean and std are the training split's",
        ("tests/test_data_sources.py", "-k", "numpys_over_the_training_split"),
    ),
    Mutation(
        "unverified-archive-silent",
        "archbench/data/tinyimagenet.py",
        "    if checksum != OFFICIAL_CHECKSUM:\n        say(",
        "    if False:\n        say(",
        "a Tiny-ImageNet archive that is not the official one is said in one line",
        ("tests/test_download.py", "-k", "local_zip"),
    ),
    Mutation(
        "gpu-collect-hides-timeouts",
        "benchmarks/gpu_check.py",
        "    if code == 124:\n",
        "    if code == -124:\n",
        "a goal not measured says which step timed out",
        ("tests/test_gpu_path.py", "-k", "any_subset"),
    ),
]


def make_copy(into: Path) -> Path:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        elif source.exists():
            shutil.copy2(source, into / name)
    return into


def apply(mutation: Mutation, root: Path) -> str | None:
    """Apply the mutation inside `root`; None if applied, else why not ("stale" or "skipped")."""
    path = root / mutation.file
    if not path.exists():
        return "skipped"
    text = path.read_text()
    count = text.count(mutation.original)
    if count != 1:
        return "stale" if count == 0 else f"stale (original found {count} times)"
    mutated = text.replace(mutation.original, mutation.mutated)
    try:
        compile(mutated, str(path), "exec")
    except SyntaxError as e:
        return f"broken (the mutated file does not compile: {e.msg}, line {e.lineno})"
    path.write_text(mutated)
    return None


def pytest_in(root: Path, args: tuple[str, ...], env: dict, timeout: float) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout', seconds, output tail) of `python -m pytest -x -q -p no:randomly args`."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", *args]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started, ""
    outcome = "passed" if done.returncode == 0 else "failed"
    return outcome, time.monotonic() - started, (done.stdout + done.stderr)[-2000:]


def baseline_selections(mutations) -> list[tuple[str, ...]]:
    """The pytest selections the mutations use, each once: files and node ids together in one run (a node id
    whose file runs whole left out), every `-k` selection on its own."""
    paths, keyed = set(), []
    for m in mutations:
        if "-k" in m.tests:
            if m.tests not in keyed:
                keyed.append(m.tests)
        else:
            paths.update(m.tests)
    whole = {p for p in paths if "::" not in p}
    plain = tuple(sorted(p for p in paths if p in whole or p.split("::")[0] not in whole))
    return ([plain] if plain else []) + keyed


def first_failure(output: str) -> str:
    """The node id of the first FAILED or ERROR line of pytest's short summary ('?' if none)."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split()[1].split("/")[-1]
    return "?"


def child_env(root: Path, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    return {**env, "PYTHONPATH": str(root), "ARCHBENCH_CACHE": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}


def imports_the_copy(root: Path, env: dict) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", "import archbench; print(archbench.__file__)"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    return done.returncode == 0 and Path(done.stdout.strip()).resolve().is_relative_to(root.resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run this mutation (repeatable)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="only apply each mutation to a copy: report stale, broken and skipped entries",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run (default 900)")
    args = parser.parse_args(argv)

    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
    if args.list:
        for m in chosen:
            print(f"{m.name:40} {m.file:28} {m.promise}")
        return 0

    with tempfile.TemporaryDirectory(prefix="archbench-mutation-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"  # the default synthetic set, generated once for every run
        if not (args.no_baseline or args.dry_run):
            root = make_copy(tmp / "baseline")
            env = child_env(root, cache)
            if not imports_the_copy(root, env):
                print("the copy's archbench is not the one imported; check PYTHONPATH handling", file=sys.stderr)
                return 2
            for selection in baseline_selections(m for m in chosen if (root / m.file).exists()):
                outcome, seconds, tail = pytest_in(root, selection, env, args.timeout * 3)
                print(f"baseline {outcome:7} {seconds:4.0f}s  {' '.join(selection)}", flush=True)
                if outcome != "passed":
                    print(tail, file=sys.stderr)
                    return 2

        verdicts: dict[str, list[str]] = {
            "caught": [],
            "applies": [],
            "MISSED": [],
            "STALE": [],
            "BROKEN": [],
            "skipped": [],
        }
        for i, m in enumerate(chosen, 1):
            root = make_copy(tmp / f"m{i:02d}-{m.name}")
            problem = apply(m, root)
            if problem is not None:
                verdict = {"skipped": "skipped", "broken": "BROKEN"}.get(problem.split()[0], "STALE")
                detail = "file absent" if problem == "skipped" else problem
            elif args.dry_run:
                verdict, detail = "applies", "not run"
            else:
                outcome, seconds, tail = pytest_in(root, m.tests, child_env(root, cache), args.timeout)
                verdict = "MISSED" if outcome == "passed" else "caught"
                detail = f"{outcome}, {seconds:.0f}s"
                if verdict == "caught":
                    detail += f" by {first_failure(tail)}"
            verdicts[verdict].append(m.name)
            print(f"[{i:2}/{len(chosen)}] {verdict:7} {m.name:38} {m.promise}\n        {detail}", flush=True)
            shutil.rmtree(root, ignore_errors=True)

    tested = len(chosen) - len(verdicts["skipped"])
    done = "applies" if args.dry_run else "caught"
    print(f"\n{len(verdicts[done])}/{tested} {done}", end="")
    for kind in ("MISSED", "STALE", "BROKEN", "skipped"):
        if verdicts[kind]:
            print(f"; {kind.lower()}: {', '.join(verdicts[kind])}", end="")
    print()
    return 0 if not (verdicts["MISSED"] or verdicts["STALE"] or verdicts["BROKEN"]) else 1


if __name__ == "__main__":
    sys.exit(main())
