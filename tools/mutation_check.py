"""Mutation check: would the test suite notice the bugs that matter?

Each entry of `MUTATIONS` is a plausible bug and the promise it breaks (README.md or docs/): the definition it goes into
(`file::Qualified.name`: a function, a method, a nested function, a class or a module-level name), the text it
replaces there and that text's replacement, and the tests that must catch it. The text is looked for only inside
that definition's source lines (found with `ast`), written as it reads when the definition's first line starts at
column 0. So an entry survives its definition moving within its file, growing, or changing indentation (into or
out of a class); only a rename, a move to another file or an edit of the quoted text itself makes it stale.

The script copies archbench/, tests/, registry/, benchmarks/ and pyproject.toml into a temporary folder once and
runs there, with PYTHONPATH pointing at the copy (so neither the checkout nor the installed editable package is
what the tests import; subprocesses the tests start inherit it): first the unmutated copy through every test the
mutations name (the baseline; --no-baseline skips it, else no verdict means anything), then, one mutation at a
time, the bug written into its file,

    python -m pytest -x -q -p no:randomly <the mutation's tests>

and the file restored whatever happens. A mutation is

- caught    when pytest fails (or runs past --timeout),
- SURVIVED  when pytest passes: the suite does not hold the promise; add or strengthen a test,
- STALE     when its file or definition is gone, its text is not inside the definition exactly once, or its
            tests are gone or select nothing: the code moved on; the verdict names the definitions that now
            hold the text, if any: point the entry at the right one,
- BROKEN    when the mutated file does not compile: the entry is wrong, not the suite.

Usage, from the repository root (docs/mutation-testing.md says more):

    .venv/bin/python tools/mutation_check.py                    # everything: 15 to 30 minutes on 2 CPU cores
    .venv/bin/python tools/mutation_check.py --list             # the mutations and the promise each breaks
    .venv/bin/python tools/mutation_check.py --only flip-rate --only crop-range
    .venv/bin/python tools/mutation_check.py --dry-run          # does every entry still apply? (seconds)

It is a development tool, not a test: CI's default `pytest` run does not collect it (testpaths is tests/), and no
test reads its entries (tests/test_mutation_list.py tests the mechanism on a module of its own).
Exit code 0 when every mutation is caught (with --dry-run: applies), 1 when one survived, is stale or broken,
2 when the baseline fails.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("archbench", "tests", "registry", "benchmarks", "pyproject.toml")
SELECTS_NOTHING = (4, 5)  # pytest's exit codes for a file or node id not found and for no test collected


@dataclass(frozen=True)
class Mutation:
    name: str
    at: str  # "file::Qualified.name": the definition whose source holds `original`
    original: str  # as it reads with the definition's first line at column 0
    mutated: str
    promise: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions

    @property
    def file(self) -> str:
        return self.at.partition("::")[0]

    @property
    def anchor(self) -> str:
        return self.at.partition("::")[2]


class NotApplied(Exception):
    """Why a mutation cannot be tried: its verdict ("STALE" or "BROKEN") and, as the message, the detail."""

    def __init__(self, verdict: str, detail: str):
        super().__init__(detail)
        self.verdict = verdict


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

MUTATIONS = [
    # ---------------------------------------------------------------------------------------- the loop
    Mutation(
        "grad-record-after-clip",
        "archbench/train.py::backward",
        RECORD_THEN_CLIP,
        CLIP_THEN_RECORD,
        "gradient norms are recorded before clipping",
        (GRADIENT_REFERENCE,),
    ),
    Mutation(
        "grad-record-after-step",
        "archbench/train.py::optimiser_step",
        "    backward(t, loss, step)\n    return logits, loss.detach(), update(t)\n",
        "    t.optimizer.zero_grad(set_to_none=True)\n"
        "    t.scaler.scale(loss).backward()\n"
        "    t.clipping.step(t.model, step)\n"
        "    lr = update(t)\n"
        "    if t.gradients.wants(step):\n"
        "        t.gradients.record(step)\n"
        "    return logits, loss.detach(), lr\n",
        "weight norms are read before the step (and gradients before clipping)",
        (GRADIENT_REFERENCE,),
    ),
    Mutation(
        "autocast-not-entered",
        "archbench/train.py::forward_loss",
        "    with t.autocast():\n        logits = t.forward(x)",
        "    with torch.autograd.enable_grad():\n        logits = t.forward(x)",
        "bf16/fp16 train under autocast",
        (PROMISES, "-k", "autocast"),
    ),
    Mutation(
        "autocast-off-on-cpu",
        "archbench/devices.py::autocast_factory",
        "    if dtype is None:\n        return contextlib.nullcontext",
        '    if dtype is None or device.type == "cpu":\n        return contextlib.nullcontext',
        "bf16 autocast is entered on every device",
        (PROMISES, "-k", "autocast"),
    ),
    Mutation(
        "train-loss-over-one-rank",
        "archbench/train.py::train_epoch",
        "        loss_sum / samples,\n        correct / samples,",
        "        loss_sum / seen,\n        correct / samples,",
        "the train loss is averaged over all ranks' images",
        (TWO_RANKS,),
    ),
    Mutation(
        "no-gradient-averaging",
        "archbench/train.py::build_training",
        "forward = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)",
        "forward = model",
        "DDP averages the ranks' gradients",
        (TWO_RANKS,),
    ),
    Mutation(
        "loader-rank-not-passed",
        "archbench/train.py::build_training",
        "rank=dist.rank,",
        "rank=0,",
        "each rank trains on its own shard",
        (TWO_RANKS,),
    ),
    Mutation(
        "divergence-step-off-by-one",
        "archbench/train.py::train_epoch",
        "first_bad.clamp(max=step))",
        "first_bad.clamp(max=step + 1))",
        "a divergence is recorded at the step it happened",
        (PROMISES, "-k", "divergence"),
    ),
    Mutation(
        "exit-code-only-if-all-diverged",
        "archbench/cli.py::run",
        'if any(r["status"] != "completed" for r in results):',
        'if all(r["status"] != "completed" for r in results):',
        "`archbench run` exits 3 when a run diverged",
        (PROMISES, "-k", "divergence"),
    ),
    Mutation(
        "resume-rank0-rng-everywhere",
        "archbench/train.py::resume",
        'set_rng_state(ckpt["rng"][dist.rank], device)',
        'set_rng_state(ckpt["rng"][0], device)',
        "a two-rank resume equals an uninterrupted run",
        (TWO_RANK_RESUME,),
    ),
    Mutation(
        "no-bn-broadcast-before-eval",
        "archbench/train.py::train_one",
        "        dist.broadcast_buffers(t.model)  # every",
        "        None  # every",
        "every rank evaluates rank 0's (the checkpointed) BN statistics",
        (TWO_RANK_RESUME,),
    ),
    Mutation(
        "resume-loses-previous-gradient",
        "archbench/gradients.py::GradientRecorder.state_dict",
        '    if self.previous is not None:\n        state["previous"]',
        '    if False:\n        state["previous"]',
        "a resumed run's records equal an uninterrupted one's",
        (f"{TRAIN}::test_a_killed_run_resumes_and_matches_an_uninterrupted_one",),
    ),
    Mutation(
        "fp16-scaler-disabled",
        "archbench/train.py::build_training",
        'enabled=config.precision == "fp16")',
        "enabled=False)",
        "fp16 trains with an enabled GradScaler",
        (PROMISES, "-k", "fp16"),
    ),
    Mutation(
        "fp16-records-scaled-gradient",
        "archbench/train.py::backward",
        "    if record or t.recipe.clip_grad_norm:",
        "    if t.recipe.clip_grad_norm:",
        "recorded gradients are unscaled under fp16",
        (PROMISES, "-k", "fp16"),
    ),
    # ---------------------------------------------------------------------------------------- the schedule
    Mutation(
        "warmup-rounded-up-to-epochs",
        "archbench/train.py::lr_lambda",
        "warmup = int(recipe.warmup_epochs * steps_per_epoch)",
        "warmup = math.ceil(recipe.warmup_epochs) * steps_per_epoch",
        "the smoke preset warms up over half an epoch",
        (PROMISES, "-k", "warms_up or true_gradient"),
    ),
    Mutation(
        "warmup-truncated-to-epochs",
        "archbench/train.py::lr_lambda",
        "warmup = int(recipe.warmup_epochs * steps_per_epoch)",
        "warmup = int(recipe.warmup_epochs) * steps_per_epoch",
        "the smoke preset warms up over half an epoch",
        (PROMISES, "-k", "warms_up or true_gradient"),
    ),
    # ---------------------------------------------------------------------------------------- the loader
    Mutation(
        "flip-rate",
        "archbench/data/loader.py::DeviceLoader.epoch_plan",
        "flips = torch.rand(n, generator=generator) < 0.5",
        "flips = torch.rand(n, generator=generator) < 0.1",
        "horizontal flips with probability 0.5",
        LOADER,
    ),
    Mutation(
        "crop-range",
        "archbench/data/loader.py::DeviceLoader.epoch_plan",
        "torch.randint(0, room + 1, (n, 2), generator=generator)",
        "torch.randint(0, room, (n, 2), generator=generator)",
        "random crops take every offset 0..room",
        LOADER,
    ),
    Mutation(
        "flip-wrong-axis",
        "archbench/data/loader.py::_crop_grid",
        "gx = torch.where(flips.to(offsets.device).view(-1, 1), gx.flip(1), gx)",
        "gy = torch.where(flips.to(offsets.device).view(-1, 1), gy.flip(1), gy)",
        "the flip is horizontal",
        LOADER,
    ),
    Mutation(
        "half-pixel-shift",
        "archbench/data/loader.py::_crop_grid",
        "gy = (2 * (k + top) + 1) / upscaled - 1",
        "gy = (2 * (k + top)) / upscaled - 1",
        "the transform equals torchvision's resize + crop + flip",
        LOADER,
    ),
    Mutation(
        "shard-same-for-every-rank",
        "archbench/data/loader.py::DeviceLoader.epoch_plan",
        "used = slice(self.rank, self.num_batches * self.batch_size * self.world_size, self.world_size)",
        "used = slice(0, self.num_batches * self.batch_size * self.world_size, self.world_size)",
        "each rank takes every world-size-th image of one shuffle",
        LOADER,
    ),
    Mutation(
        "shard-contiguous-blocks",
        "archbench/data/loader.py::DeviceLoader.epoch_plan",
        "used = slice(self.rank, self.num_batches * self.batch_size * self.world_size, self.world_size)",
        "used = slice(self.rank * self.num_batches * self.batch_size,"
        " (self.rank + 1) * self.num_batches * self.batch_size)",
        "each rank takes every world-size-th image of one shuffle",
        LOADER,
    ),
    Mutation(
        "remainder-kept",
        "archbench/data/loader.py::DeviceLoader.num_batches",
        "    if self.full_batches:\n        return self.dataset_size // global_batch",
        "    if self.full_batches:\n        return math.ceil(self.dataset_size / global_batch)",
        "training batches are all full (the remainder waits for a later epoch)",
        LOADER,
    ),
    Mutation(
        "eval-not-sharded",
        "archbench/data/loader.py::DeviceLoader.epoch_plan",
        "torch.arange(used)[self.rank :: self.world_size]",
        "torch.arange(used)",
        "evaluation is sharded across ranks",
        LOADER,
    ),
    # ---------------------------------------------------------------------------------------- gradient records
    Mutation(
        "cosine-normalised-by-this-step-twice",
        "archbench/gradients.py::GradientRecorder.record",
        "dots / (grad_norms * self.grad_norms[step - 1])",
        "dots / (grad_norms * grad_norms)",
        "the cosine is to the previous step's gradient",
        (GRADIENT_REFERENCE,),
    ),
    Mutation(
        "cosine-against-first-step",
        "archbench/gradients.py::GradientRecorder.record",
        "    self.previous = self.hold(grads)\n",
        "    self.previous = self.previous or self.hold(grads)\n",
        "the cosine is to the previous step's gradient",
        (GRADIENT_REFERENCE,),
    ),
    Mutation(
        "grad-rms-over-n",
        "archbench/gradients.py::GradientRecorder.rows",
        "grad_rms=grad[step][i] / math.sqrt(sizes[i]),",
        "grad_rms=grad[step][i] / sizes[i],",
        "grad_rms is ‖g‖/√n",
        (GRADIENT_REFERENCE,),
    ),
    # ---------------------------------------------------------------------------------------- models
    Mutation(
        "zero-init-default-true",
        "archbench/models/resnet.py::resnet",
        "        zero_init_last_bn = residual",
        "        zero_init_last_bn = True",
        "a plain net keeps its last BN gamma at 1",
        (MODELS,),
    ),
    Mutation(
        "residual-add-missing",
        "archbench/models/resnet.py::BasicBlock.forward",
        "out += x if self.downsample is None else self.downsample(x)",
        "out += 0 if self.downsample is None else self.downsample(x)",
        "ResNet-18 is torchvision's resnet18",
        (MODELS,),
    ),
    Mutation(
        "vgg-bn-missing",
        "archbench/models/vgg.py::vgg",
        "make_layers(cfg, batch_norm)",
        "make_layers(cfg, False)",
        "VGG-BN is torchvision's vgg*_bn",
        (MODELS,),
    ),
    # ---------------------------------------------------------------------------------------- report statistics
    Mutation(
        "t-interval-normal-quantile",
        "archbench/report/stats.py::t_interval",
        "t = float(scipy_stats.t.ppf((1 + confidence) / 2, len(v) - 1))",
        "t = float(scipy_stats.norm.ppf((1 + confidence) / 2))",
        "intervals are Student's t over seeds",
        STATS,
    ),
    Mutation(
        "t-interval-population-sd",
        "archbench/report/stats.py::t_interval",
        "sd = float(np.std(v, ddof=1))",
        "sd = float(np.std(v, ddof=0))",
        "intervals use the sample standard deviation",
        STATS,
    ),
    Mutation(
        "student-instead-of-welch",
        "archbench/report/stats.py::compare",
        "ttest_ind(va, vb, equal_var=False)",
        "ttest_ind(va, vb, equal_var=True)",
        "different seeds are compared with Welch's t-test",
        STATS,
    ),
    Mutation(
        "unpaired-same-seeds",
        "archbench/report/stats.py::compare",
        "result = scipy_stats.ttest_rel(va, vb)",
        "result = scipy_stats.ttest_ind(va, vb, equal_var=False)",
        "the same seeds are compared with a paired t-test",
        STATS,
    ),
    Mutation(
        "constant-differences-to-welch",
        "archbench/report/stats.py::compare",
        "            if _no_spread(differences):\n",
        "            if False:\n",
        "constant paired differences are decided by the exact sign-flip test, never Welch",
        STATS,
    ),
    Mutation(
        "holm-as-bonferroni",
        "archbench/report/stats.py::holm",
        "running = max(running, min(1.0, (m - k) * x))",
        "running = max(running, min(1.0, m * x))",
        "p-values are adjusted with Holm's step-down procedure within each family",
        STATS,
    ),
    Mutation(
        "never-reached-dropped",
        "archbench/report/thresholds.py::epochs_to",
        "out[int(r.seed)] = math.inf if e is None else float(e)",
        "out[int(r.seed)] = math.nan if e is None else float(e)",
        "a seed that never reaches a threshold counts as infinite time, never as a dropped seed",
        ("tests/test_report_claims.py", "-k", "never_reaches"),
    ),
    Mutation(
        "clip-bound-inverted",
        "archbench/train.py::ClipRecorder.step",
        "bound = self.max_norm / (norm + 1e-6) < 1.0",
        "bound = self.max_norm / (norm + 1e-6) > 1.0",
        "each epoch records the fraction of optimiser steps whose gradient clipping bound",
        ("tests/test_clipping_record.py",),
    ),
    Mutation(
        "threshold-strict",
        "archbench/runs.py::epochs_to_threshold",
        "if acc >= t), None)",
        "if acc > t), None)",
        "epochs to threshold count reaching it",
        (TRAIN, "-k", "epochs_to_threshold"),
    ),
    Mutation(
        "locked-run-resumed",
        "archbench/runs.py::open_run",
        "            if fd is None:  # another process is running it right now\n                continue",
        "            if fd is None:  # another process is running it right now\n                pass",
        "a second process never writes into the run another one is writing",
        (f"{TRAIN}::test_a_second_process_beside_a_running_one_gets_a_run_of_its_own",),
    ),
    # ---------------------------------------------------------------------------------------- devices
    Mutation(
        "precision-auto-ignores-bf16-support",
        "archbench/devices.py::resolve_precision",
        'return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"',
        'return "bf16" if device.type == "cuda" else "fp32"',
        "precision auto is bf16 only where the GPU supports it",
        (PROMISES, "-k", "precision"),
    ),
    Mutation(
        "channels-last-off-on-cuda",
        "archbench/devices.py::resolve_channels_last",
        'return requested if requested is not None else device.type == "cuda"',
        "return requested if requested is not None else False",
        "channels_last is on by default for CUDA",
        (PROMISES, "-k", "channels_last or cuda_run"),
    ),
    Mutation(
        "fused-sgd-inverted",
        "archbench/devices.py::optimizer_kernel",
        'if device.type == "cuda" and precision != "fp16":',
        'if device.type == "cuda" and precision == "fp16":',
        "the fused optimiser kernel on CUDA, except under fp16",
        (PROMISES, "-k", "sgd"),
    ),
    # ---------------------------------------------------------------------------------------- distributed
    Mutation(
        "syncbn-gloo-on-cuda",
        "archbench/distributed.py::convert_sync_batchnorm",
        '    if device.type != "cpu":',
        '    if device.type not in ("cpu", "cuda"):',
        "nn.SyncBatchNorm on CUDA, GlooSyncBatchNorm on the CPU",
        (PROMISES, "-k", "sync_bn"),
    ),
    Mutation(
        "gloo-syncbn-local-statistics",
        "archbench/distributed.py::GlooSyncBatchNorm.forward",
        "stats = dist_fn.all_reduce(torch.cat(",
        "stats = (torch.cat(",
        "--sync-bn reduces BN statistics over ranks",
        SYNC_BN,
    ),
    Mutation(
        "gloo-syncbn-biased-running-var",
        "archbench/distributed.py::GlooSyncBatchNorm.forward",
        "add_(var * n / (n - 1), alpha=m)",
        "add_(var, alpha=m)",
        "SyncBN's running variance is BatchNorm's (unbiased)",
        SYNC_BN,
    ),
    # ---------------------------------------------------------------------------------------- --gpus
    Mutation(
        "gpus-all-on-first",
        "archbench/launch.py::run_on_gpus.worker",
        "    env, device = slots[gpu]",
        "    env, device = slots[slots_wanted[0]]",
        "--gpus runs one job per GPU at a time",
        (DIST, "-k", "gpus_runs_each_job"),
    ),
    Mutation(
        "gpu-slot-ignores-visible-devices",
        "archbench/launch.py::gpu_slot",
        'physical = visible.split(",")[int(gpu)].strip() if visible else gpu',
        "physical = gpu",
        "--gpus ids index the GPUs this process sees",
        (DIST, "-k", "gpu"),
    ),
    # ---------------------------------------------------------------------------------------- validate first
    Mutation(
        "jobs-not-planned-first",
        "archbench/study.py::run_requests",
        '            plan_runs(request, data, split, torch.device("cpu"), max(1, world_size))',
        "            pass",
        "--gpus and --launcher refuse a request that cannot run before any job is queued",
        ("tests/test_cluster.py", "-k", "before_any_job"),
    ),
    Mutation(
        "tuned-rate-recipe-unchecked",
        "archbench/study.py::plan_runs",
        "            tuned.check_recipe(base)",
        "            pass",
        "--lr tuned refuses a run whose image size or recipe changes what a rate means",
        ("tests/test_tune.py", "-k", "recipe or image_size"),
    ),
    Mutation(
        "bench-inference-training-transform",
        "archbench/data/loader.py::DeviceLoader.as_evaluation",
        "    view.train = False\n",
        "    view.train = True\n",
        "the bench's inference stream is the evaluation transform in full batches",
        (DATA, "-k", "as_evaluation"),
    ),
    Mutation(
        "sign-flip-one-sided",
        "archbench/report/stats.py::sign_flip_p",
        "return 1.0 if difference == 0 else min(1.0, 2.0 / 2**n)",
        "return 1.0 if difference == 0 else min(1.0, 1.0 / 2**n)",
        "the exact sign-flip p is two-sided: 2 / 2^n",
        STATS,
    ),
    # ---------------------------------------------------------------------------------------- CIFAR, ImageFolder
    Mutation(
        "cifar-unpickler-allows-any-global",
        "archbench/data/cifar.py::_ArraysOnly.find_class",
        "    allowed = _ARRAY_GLOBALS.get((module, name))\n",
        "    allowed = _ARRAY_GLOBALS.get((module, name)) or super().find_class(module, name)\n",
        "a CIFAR pickle that names any callable but numpy's array helpers is refused before it runs",
        (CIFAR, "-k", "runs_code"),
    ),
    Mutation(
        "cifar-pad-not-zero",
        "archbench/data/cifar.py::pad_crop_flip",
        "    padded = F.pad(x, (0, 0, PADDING, PADDING, PADDING, PADDING))\n",
        "    padded = F.pad(x, (0, 0, PADDING, PADDING, PADDING, PADDING), value=255)\n",
        "CIFAR's augmentation pads with zeros, as torchvision's pad + crop + flip",
        (CIFAR, "-k", "torchvision"),
    ),
    Mutation(
        "step-schedule-late",
        "archbench/train.py::lr_lambda.factor",
        "        return STEP_FACTOR ** sum(step >= milestone for milestone in milestones)\n",
        "        return STEP_FACTOR ** sum(step > milestone for milestone in milestones)\n",
        "the step schedule divides the rate by 10 at 1/2 and 3/4 of training, as MultiStepLR does",
        (CIFAR, "-k", "multisteplr"),
    ),
    Mutation(
        "imagefolder-16-bit-clipped",
        "archbench/data/imagefolder.py::to_rgb",
        "np.round(values / 257)",
        "np.round(values)",
        "16-bit images are scaled to 8 bits, not clipped",
        (IMAGEFOLDER, "-k", "16_bit"),
    ),
    # ---------------------------------------------------------------------------------------- cheap diagnostics
    Mutation(
        "gradient-buffers-reallocated",
        "archbench/gradients.py::GradientRecorder.hold",
        "    if self.buffers is None:\n",
        "    if True:\n",
        "the previous step's gradients go into buffers allocated once, not per step",
        ("tests/test_gradients.py", "-k", "buffers"),
    ),
    Mutation(
        "checkpoint-aliases-gradient-buffers",
        "archbench/gradients.py::GradientRecorder.state_dict",
        'g.to("cpu", copy=True)',
        "g.cpu()",
        "a checkpoint's previous gradients are a copy, not the buffers the next step overwrites",
        ("tests/test_gradients.py", "-k", "restored"),
    ),
    Mutation(
        "dot-ignores-memory-order",
        "archbench/gradients.py::dot",
        "torch.dot(memory_order(a), memory_order(b))",
        "torch.dot(a.reshape(-1), memory_order(b))",
        "cosines read in place are exact for channels-last weights too",
        ("tests/test_gradients.py", "-k", "reference"),
    ),
    Mutation(
        "bench-ratio-warning-silent",
        "archbench/bench.py::ratio_warnings",
        'if row[mode]["ratio"] > 1.0',
        'if row[mode]["ratio"] > 2.0',
        "`archbench bench` flags an end-to-end / model-only ratio above 1",
        ("tests/test_bench.py", "-k", "ratio_above"),
    ),
    Mutation(
        "digits-flipped",
        "archbench/data/loader.py::AUGMENTATIONS",
        '"upscale to S*256/224, random S crop, no flip", False,',
        '"upscale to S*256/224, random S crop, no flip", True,',
        "the digits train without a horizontal flip",
        ("tests/test_data_sources.py", "-k", "never_flipped"),
    ),
    Mutation(
        "statistics-of-the-test-split",
        "archbench/data/packed.py::write_manifest",
        'train_images = np.load(packed / "train_images.npy", mmap_mode="r")',
        'train_images = np.load(packed / "test_images.npy", mmap_mode="r")',
        "the manifest's mean and std are the training split's",
        ("tests/test_data_sources.py", "-k", "numpys_over_the_training_split"),
    ),
    Mutation(
        "unverified-archive-silent",
        "archbench/data/tinyimagenet.py::_note_unverified",
        "    if checksum != OFFICIAL_CHECKSUM:\n        say(",
        "    if False:\n        say(",
        "a Tiny-ImageNet archive that is not the official one is said in one line",
        ("tests/test_download.py", "-k", "local_zip"),
    ),
    Mutation(
        "gpu-collect-hides-timeouts",
        "benchmarks/gpu_check.py::why_missing",
        "    if code == 124:\n",
        "    if code == -124:\n",
        "a goal not measured says which step timed out",
        ("tests/test_gpu_path.py", "-k", "any_subset"),
    ),
]


# ------------------------------------------------------------------------------------------ finding the text


def definitions(node: ast.AST, prefix: str = "", names: bool = True) -> Iterator[tuple[str, ast.stmt]]:
    """(qualified name, node) of every function and class under `node`, nested ones named `Outer.inner` whether
    the outer one is a class or a function, and of every name assigned in a module or class body (`names`)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield prefix + child.name, child
            yield from definitions(child, f"{prefix}{child.name}.", isinstance(child, ast.ClassDef))
        elif isinstance(child, (ast.Assign, ast.AnnAssign)):
            targets = child.targets if isinstance(child, ast.Assign) else [child.target]
            yield from ((prefix + t.id, child) for t in targets if names and isinstance(t, ast.Name))
        else:
            yield from definitions(child, prefix, names)


def source_lines(node: ast.stmt, lines: list[str]) -> tuple[int, int, str, str]:
    """The first and past-the-end line index of `node` (decorators included), the indentation it was written at
    and its source with that indentation removed."""
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))]) - 1
    text = "".join(lines[first : node.end_lineno])
    code = textwrap.dedent(text)
    return first, node.end_lineno, text[: len(text.splitlines()[0]) - len(code.splitlines()[0])], code


def mutate(source: str, m: Mutation) -> str:
    """`source` with `m.original` replaced by `m.mutated` inside the definition `m.anchor`, and only there; STALE
    when the definition is not in `source` exactly once or the text is not in the definition exactly once."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise NotApplied("BROKEN", f"{m.file} itself does not parse: {e.msg}, line {e.lineno}") from None
    found = [node for name, node in definitions(tree) if name == m.anchor]
    if len(found) != 1:
        raise NotApplied("STALE", f"{m.anchor} is defined {len(found)} times in {m.file}" if found else f"no {m.at}")
    lines = source.splitlines(keepends=True)
    first, end, indent, code = source_lines(found[0], lines)
    if (count := code.count(m.original)) != 1:
        raise NotApplied("STALE", f"the text is {count} times in {m.at}" if count else f"the text is not in {m.at}")
    changed = textwrap.indent(code.replace(m.original, m.mutated), indent)
    return "".join(lines[:first]) + changed + "".join(lines[end:])


def missing_test(tests: tuple[str, ...], root: Path) -> str | None:
    """The first test file or node id of `tests` not under `root` (-k expressions are not checked here)."""
    for arg, before in zip(tests, ("", *tests)):
        if arg.startswith("-") or before == "-k":
            continue
        file, _, node = arg.partition("::")
        path = root / file
        if not path.is_file():
            return arg
        try:
            defined = dict(definitions(ast.parse(path.read_text())))
        except SyntaxError:
            continue  # pytest will say what is wrong with it
        if node and node.split("[")[0].replace("::", ".") not in defined:
            return arg
    return None


def prepare(m: Mutation, root: Path) -> tuple[Path, str, str]:
    """The mutation's file under `root`, its text and its mutated text; NotApplied when `m` cannot be tried."""
    path = root / m.file
    if not path.is_file():
        raise NotApplied("STALE", f"{m.file} does not exist")
    if missing := missing_test(m.tests, root):
        raise NotApplied("STALE", f"no test {missing}")
    text = path.read_text()
    mutated = mutate(text, m)
    try:
        compile(mutated, str(path), "exec")
    except SyntaxError as e:
        raise NotApplied("BROKEN", f"the mutated file does not compile: {e.msg}, line {e.lineno}") from None
    return path, text, mutated


def whereabouts(m: Mutation, root: Path) -> list[str]:
    """Every innermost definition, in the top folder of `m.file`, whose source holds `m.original` exactly once:
    where a stale entry's text went."""
    found = []
    for path in sorted((root / Path(m.file).parts[0]).rglob("*.py")):
        try:
            source = path.read_text()
            named = list(definitions(ast.parse(source)))
        except (SyntaxError, UnicodeDecodeError):
            continue
        lines = source.splitlines(keepends=True)
        hits = [name for name, node in named if source_lines(node, lines)[3].count(m.original) == 1]
        file = path.relative_to(root).as_posix()
        found += [f"{file}::{h}" for h in hits if not any(o.startswith(h + ".") for o in hits)]
    return found


# ------------------------------------------------------------------------------------------ running the tests


def make_copy(into: Path) -> Path:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        elif source.exists():
            shutil.copy2(source, into / name)
    return into


def pytest_in(root: Path, args: tuple[str, ...], env: dict, timeout: float) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout' | 'selects nothing', seconds, output tail) of
    `python -m pytest -x -q -p no:randomly args` run in `root`."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", *args]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started, ""
    codes = {0: "passed", **dict.fromkeys(SELECTS_NOTHING, "selects nothing")}
    return codes.get(done.returncode, "failed"), time.monotonic() - started, (done.stdout + done.stderr)[-2000:]


def check(m: Mutation, root: Path, run: Callable[[tuple[str, ...]], tuple[str, float, str]] | None) -> tuple[str, str]:
    """(verdict, detail) of `m` under `root`: its bug written into its file, `run(m.tests)`, and the file restored
    whatever happens (a failure, a timeout, an interrupt). Without `run`, only whether the bug applies."""
    try:
        path, text, mutated = prepare(m, root)
    except NotApplied as e:
        return e.verdict, str(e)
    if run is None:
        return "applies", "not run"
    path.write_text(mutated)
    try:
        outcome, seconds, tail = run(m.tests)
    finally:
        path.write_text(text)
    if outcome == "selects nothing":
        return "STALE", f"its tests select nothing: {first_line(tail)}"
    if outcome == "passed":
        return "SURVIVED", f"passed, {seconds:.0f}s"
    return "caught", f"{outcome}, {seconds:.0f}s" + (f" by {first_failure(tail)}" if outcome == "failed" else "")


def baseline_selections(mutations: Iterable[Mutation]) -> list[tuple[str, ...]]:
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


def first_line(output: str) -> str:
    return next((line for line in output.splitlines() if line.strip()), "")


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


def baseline_passes(mutations: list[Mutation], root: Path, env: dict, timeout: float) -> bool:
    """Whether the unmutated copy passes every test the mutations that apply name (it says which did not)."""
    applying = [m for m in mutations if check(m, root, None)[0] == "applies"]
    for selection in baseline_selections(applying):
        outcome, seconds, tail = pytest_in(root, selection, env, timeout)
        print(f"baseline {outcome:7} {seconds:4.0f}s  {' '.join(selection)}", flush=True)
        if outcome != "passed":
            print(tail, file=sys.stderr)
            return False
    return True


def verdicts(mutations: list[Mutation], root: Path, run: Callable | None) -> int:
    """Try each mutation in turn (see `check`), print each verdict as it comes and a summary; the exit code."""
    names: dict[str, list[str]] = {}
    for i, m in enumerate(mutations, 1):
        verdict, detail = check(m, root, run)
        if verdict == "STALE" and (now := whereabouts(m, root)):
            detail += f"; the text is now in {', '.join(now)}"
        names.setdefault(verdict, []).append(m.name)
        print(f"[{i:2}/{len(mutations)}] {verdict:8} {m.name:38} {m.promise}\n        {detail}", flush=True)
    good = "applies" if run is None else "caught"
    others = "".join(f"; {verdict.lower()}: {', '.join(n)}" for verdict, n in names.items() if verdict != good)
    print(f"\n{len(names.get(good, []))}/{len(mutations)} {good}{others}")
    return 0 if set(names) <= {good} else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run this mutation (repeatable)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="only check that each mutation applies to the checkout: report stale and broken entries",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run (default 900)")
    args = parser.parse_args(argv)

    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
    if args.list:
        for m in chosen:
            print(f"{m.name:38} {m.at}\n{'':38} {m.promise}")
        return 0
    if args.dry_run:
        return verdicts(chosen, ROOT, None)

    with tempfile.TemporaryDirectory(prefix="archbench-mutation-") as tmp:
        root = make_copy(Path(tmp) / "tree")
        env = child_env(root, Path(tmp) / "cache")  # the default synthetic set, generated once for every run
        if not imports_the_copy(root, env):
            print("the copy's archbench is not the one imported; check PYTHONPATH handling", file=sys.stderr)
            return 2
        if not (args.no_baseline or baseline_passes(chosen, root, env, args.timeout * 3)):
            return 2
        return verdicts(chosen, root, lambda tests: pytest_in(root, tests, env, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
