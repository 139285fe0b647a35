"""What a run is: the recipe presets, the requests `archbench run`, `tune` and `bench` receive, and the config a
run resolves to.

Each request field carries its help text and flags, and the command line is built from them (`archbench.cli`),
so an option is written once. `resolve_config` turns a request, a registry entry and the data into a `RunConfig`,
whose `to_json` is config.json; `run_identity` is what its config hash covers. docs/running.md has the detail.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from archbench.errors import ArchbenchError


def option(
    default: Any = None,
    help: str = "",
    *,
    flags: tuple[str, ...] = (),
    argument: bool = False,
    choices: tuple[str, ...] | None = None,
    recipe: bool = False,
    **limits,
) -> Any:
    """A request field that is also a command-line option (or, with `argument`, the positional argument).

    A list `default` is copied for each request. `flags`: its names (default ``--field-name``; a second is an
    alias); `choices`: the values it accepts, checked while parsing; `recipe`: it overrides the recipe field of
    its name; `limits`: Typer's (min, max, envvar, metavar), min and max also checked on a request built in
    Python (`check_limits`).
    """
    metadata = {"help": help, "flags": flags, "argument": argument, "choices": choices, "recipe": recipe, **limits}
    if isinstance(default, list):
        return field(default_factory=default.copy, metadata=metadata)
    return field(default=default, metadata=metadata)


def cli_fields(request_type) -> list[dataclasses.Field]:
    """The fields of a request dataclass that are command-line options or arguments."""
    return [f for f in dataclasses.fields(request_type) if "help" in f.metadata]


def flag(f: dataclasses.Field) -> str:
    """The option's main flag: the first name it declares, or ``--field-name``."""
    return f.metadata["flags"][0].split("/")[0] if f.metadata["flags"] else "--" + f.name.replace("_", "-")


def option_names(f: dataclasses.Field) -> list[str]:
    """Every name of an option without its dashes (``--runs``, ``--out`` -> runs, out; ``--x/--no-x`` -> x), the
    field's own name included: the keys a study file may use for it."""
    flags = [spec.split("/")[0] for spec in f.metadata["flags"]] or [flag(f)]
    return list(dict.fromkeys([*(name.lstrip("-") for name in flags), f.name.replace("_", "-")]))


DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"  # what --device accepts (`archbench.devices.resolve_device`)
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DEFAULT_NUM_CLASSES = 200  # Tiny-ImageNet-200's: what a model is built for unless its data says otherwise
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")  # `auto` and the keys of `archbench.devices.PRECISIONS`
LAUNCHERS = ("submitit",)
CLUSTERS = ("slurm", "local")


def request_field(request_type, name: str) -> dataclasses.Field:
    """The field `name` of a request dataclass."""
    return next(f for f in dataclasses.fields(request_type) if f.name == name)


def same_option(request_type, name: str) -> Any:
    """The option `name` of another request, declared again (an option `run` and `bench` share)."""
    f = request_field(request_type, name)
    return field(default=f.default, metadata=f.metadata)


# ------------------------------------------------------------------------------------------ recipes


def recipe_field(default: Any = dataclasses.MISSING, *, rate: bool = False, report: str | None = None) -> Any:
    """A recipe field. `rate`: a rate tuned under one value does not carry over to another (`RATE_FIELDS`);
    `report`: its column in the report's recipe table."""
    return field(default=default, metadata={"rate": rate, "report": report})


@dataclass(frozen=True)
class Recipe:
    """One optimisation recipe for every model; `lr` is for a global batch of `batch_size`."""

    epochs: int = recipe_field()
    batch_size: int = recipe_field()
    lr: float = recipe_field()
    optimizer: str = recipe_field("sgd", rate=True, report="optimizer")  # one of OPTIMIZERS
    momentum: float | None = recipe_field(0.9, rate=True)  # SGD's (None under AdamW, whose betas are torch's)
    weight_decay: float = recipe_field(5e-4, rate=True)
    nesterov: bool = recipe_field(False, rate=True)
    schedule: str = recipe_field("cosine", rate=True, report="schedule")  # one of SCHEDULES, after the warm-up
    warmup_epochs: float = recipe_field(2.0, rate=True)  # linear warm-up
    label_smoothing: float = recipe_field(0.0, rate=True)
    clip_grad_norm: float | None = recipe_field(None, rate=True, report="grad clip")  # global norm (None: never)


OPTIMIZERS = ("sgd", "adamw")
# What --optimizer adamw takes where --lr and --weight-decay are not given: torch.optim.AdamW's own defaults, the
# rate unscaled (the presets' and their scaling are SGD's); its betas play momentum's part.
ADAMW_DEFAULTS = {"lr": 1e-3, "weight_decay": 1e-2, "momentum": None}
SCHEDULES = ("cosine", "constant", "step")
# The step schedule: the rate times STEP_FACTOR at each of these fractions of all training steps (He et al.
# 2016, §4.2: divided by 10 at 32k and 48k of 64k iterations).
STEP_MILESTONES = (0.5, 0.75)
STEP_FACTOR = 0.1


@dataclass(frozen=True)
class Preset:
    recipe: Recipe
    data: str
    image_size: int
    thresholds: tuple[float, ...]
    gradnorm_steps: int = 200


# Where each preset's numbers come from (the papers, the reference reproduction): docs/running.md, Presets.
PRESETS = {
    "paper": Preset(
        recipe=Recipe(epochs=40, batch_size=256, lr=0.1, weight_decay=5e-4, warmup_epochs=2),
        data="data",
        image_size=224,
        thresholds=(0.3, 0.4, 0.5),
    ),
    "smoke": Preset(
        recipe=Recipe(epochs=2, batch_size=32, lr=0.1, weight_decay=5e-4, warmup_epochs=0.5, clip_grad_norm=2.0),
        data="digits",
        image_size=32,
        thresholds=(0.5, 0.8, 0.9),
        gradnorm_steps=60,
    ),
    "cifar": Preset(
        recipe=Recipe(epochs=164, batch_size=128, lr=0.1, weight_decay=1e-4, schedule="step", warmup_epochs=0),
        data="cifar10",
        image_size=32,
        thresholds=(0.8, 0.9, 0.93),  # the paper's ResNets end at 91.25% (ResNet-20) to 93.57% (ResNet-110)
    ),
}


# ------------------------------------------------------------------------------------------ request

# Where the commands read and write by default, relative to the working folder.
RUNS_DIR = Path("runs")
TUNING_FILE = "tuning.json"  # what `archbench tune` writes into the runs folder, and `--lr tuned` reads
REPORT_FILE = Path("REPORT.md")
LATENCY_FILE = Path("benchmarks/forward_latency.json")  # pytest-benchmark JSON of forward latency
BENCH_DIR = Path("benchmarks/results")  # `archbench bench` result files
GPU_RESULTS_FILE = Path("benchmarks/gpu/gpu-results.json")  # written by benchmarks/gpu.sh
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit (np.random.seed)


@dataclass
class RunRequest:
    """What `archbench run` was asked for; `None` means: take it from the preset."""

    models: list[str] = option(None, "Registry names, e.g. resnet18 vgg16_bn.", argument=True)
    preset: str = option(
        "paper",
        "Recipe preset: 'paper' (Tiny-ImageNet at 224), 'smoke' or 'cifar' (He et al.'s CIFAR-10 recipe).",
        choices=tuple(PRESETS),
    )
    data: str | None = option(
        None,
        "A prepared data folder (see `archbench data prepare`), a data set prepared in its default place "
        "(e.g. 'cifar10'), or a built-in set: 'digits' (real handwritten digits, offline) or 'synthetic'. "
        "Default: the preset's.",
    )
    epochs: int | None = option(None, "Override the preset's epochs.", min=1, recipe=True)
    batch_size: int | None = option(
        None,
        "Per-process batch size (overrides the preset; the preset's lr scales linearly with the global batch).",
        min=1,
        recipe=True,
    )
    optimizer: str | None = option(
        None,
        "sgd (every preset's, with momentum 0.9) or adamw (torch.optim.AdamW, decoupled weight decay; without "
        "--lr or --weight-decay, torch's defaults: lr 1e-3, weight decay 1e-2).",
        choices=OPTIMIZERS,
        recipe=True,
    )
    lr: str | None = option(
        None,
        "Learning rate for every model (overrides preset and registry), or 'tuned': each model's rate "
        "from the tuning file (see --tuning).",
    )
    tuning: Path | None = option(
        None, f"Tuning file written by `archbench tune` that --lr tuned reads (default: RUNS/{TUNING_FILE})."
    )
    weight_decay: float | None = option(None, "Override the preset's weight decay.", min=0, recipe=True)
    warmup_epochs: float | None = option(None, "Override the preset's linear warm-up, in epochs.", min=0, recipe=True)
    schedule: str | None = option(None, "Learning-rate schedule after warm-up.", choices=SCHEDULES, recipe=True)
    nesterov: bool | None = option(
        None,
        "Nesterov momentum, SGD only (default: the preset's, off).",
        flags=("--nesterov/--no-nesterov",),
        recipe=True,
    )
    label_smoothing: float | None = option(
        None, "Label smoothing of the training loss (default: the preset's, 0).", min=0, max=1, recipe=True
    )
    clip_grad_norm: float | None = option(
        None, "Clip the global gradient norm (0: off; default: the preset's).", min=0, recipe=True
    )
    image_size: int | None = option(
        None,
        "Training crop size S, made as the data's augmentation makes it (Tiny-ImageNet, digits, ImageFolder: "
        "upscaled to S*256/224 first; CIFAR: padded by 4, so S <= 40; default: the preset's).",
        min=16,
    )
    seeds: list[int] = option([0], "Seed; repeat for several runs per model.", flags=("--seed",), min=0, max=SEED_MAX)
    holdout_per_class: int = option(
        0,
        "Hold out this many training images per class as a validation split (0: none); the best epoch is "
        "then chosen on it, never on the test set.",
        min=0,
    )
    split_seed: int = option(
        0, "Seed of the validation split alone (the same split for every model and seed).", min=0, max=SEED_MAX
    )
    thresholds: list[float] | None = option(
        None, "Test-accuracy threshold, a fraction in (0, 1]; repeatable.", flags=("--threshold",), min=0, max=1
    )
    gradnorm_steps: int | None = option(None, "Record per-layer gradient norms for this many first steps.", min=0)
    device: str = option("auto", f"{DEVICE_CHOICES}.")
    precision: str = option("auto", "auto: bf16 where the GPU supports it, else fp32.", choices=PRECISION_CHOICES)
    compile: bool = option(False, "torch.compile the model.", flags=("--compile/--no-compile",))
    channels_last: bool | None = option(None, "Default: on for CUDA.", flags=("--channels-last/--no-channels-last",))
    deterministic: bool = option(False, "Deterministic algorithms (bit-exact resume on CPU).")
    sync_bn: bool = option(False, "SyncBatchNorm under torchrun.", flags=("--sync-bn",))
    gpus: str | None = option(None, "Comma-separated GPU ids: run the models concurrently, one per GPU.")
    launcher: str | None = option(
        None, "'submitit': submit each (model, seed) as its own job (pip install archbench[slurm]).", choices=LAUNCHERS
    )
    cluster: str = option(
        "slurm", "With --launcher submitit: 'slurm', or 'local' for processes on this machine.", choices=CLUSTERS
    )
    partition: str | None = option(None, "SLURM partition for the jobs.")
    time_limit: int = option(240, "Minutes per job before SLURM stops it (the job is requeued and resumes).", min=1)
    gpus_per_job: int = option(1, "GPUs per job (one process per GPU, DDP inside the job).", min=0)
    cpus_per_job: int = option(8, "CPU cores per job.", min=1)
    slurm_param: list[str] | None = option(
        None, "Extra SLURM parameter KEY=VALUE, e.g. account=myproj or qos=high; repeatable."
    )
    wait: bool = option(False, "With --launcher: wait for the jobs and show their progress.", flags=("--wait",))
    out: Path = option(RUNS_DIR, "Folder of run records (--out: the same).", flags=("--runs", "--out"))
    fresh: bool = option(
        False, "Start a new run even if one with this config is recorded or unfinished.", flags=("--fresh",)
    )
    keep_checkpoint: bool = option(False, "Keep checkpoint.pt after the run ends.", flags=("--keep-checkpoint",))
    quiet: bool = option(False, "Plain log lines instead of progress bars.", flags=("--quiet",))
    tensorboard: bool = option(
        False,
        "Also write TensorBoard scalars into each run folder, for tensorboard --logdir RUNS "
        "(pip install archbench[tensorboard]).",
        flags=("--tensorboard",),
        envvar="ARCHBENCH_TENSORBOARD",
    )
    tuning_trial: bool = option(
        False, "Record the run as a learning-rate tuning trial (`archbench tune` sets it).", flags=("--tuning-trial",)
    )
    registry: Path | None = option(
        None, "Folder of model TOML files to use instead of the built-in catalogue.", envvar="ARCHBENCH_REGISTRY"
    )

    def __post_init__(self):
        paths_as_paths(self)

    @property
    def tuning_file(self) -> Path:
        """The tuning file `--lr tuned` reads (and `archbench tune` writes)."""
        return self.tuning or self.out / TUNING_FILE

    def check(self) -> None:
        """Every check that needs neither torch nor the data, made before anything heavy is imported."""
        check_limits(self)
        self.recipe()  # the preset, the schedule and the optimiser
        lr = parse_lr(self.lr)
        if not re.fullmatch(DEVICE_PATTERN, self.device):
            raise ArchbenchError(f"unknown device '{self.device}'; use {DEVICE_CHOICES}.")
        for f in cli_fields(type(self)):  # the choices each option declares
            value, allowed = getattr(self, f.name), f.metadata["choices"]
            if allowed and value is not None and value not in allowed:
                raise ArchbenchError(f"unknown {f.name} '{value}'; use {' or '.join(allowed)}.")
        if self.tensorboard:
            from archbench.tensorboard import require_tensorboard

            require_tensorboard()
        if lr == "tuned" and not self.tuning_file.is_file():
            from archbench.tuning import load_tuning

            load_tuning(self.tuning_file)  # says, in one line, that it is missing

    @property
    def preset_spec(self) -> Preset:
        if self.preset not in PRESETS:
            raise ArchbenchError(f"unknown preset '{self.preset}'; use one of: {', '.join(PRESETS)}.")
        return PRESETS[self.preset]

    def recipe(self) -> Recipe:
        """The preset's recipe with this request's overrides (the lr before scaling to the batch)."""
        overrides = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("recipe") and getattr(self, f.name) is not None
        }
        if self.clip_grad_norm is not None:  # 0 turns the preset's clipping off
            overrides["clip_grad_norm"] = self.clip_grad_norm or None
        preset = self.preset_spec.recipe
        if overrides.get("optimizer", preset.optimizer) == "adamw" and preset.optimizer != "adamw":
            overrides = {**ADAMW_DEFAULTS, **overrides}
        recipe = replace(preset, **overrides)
        if recipe.schedule not in SCHEDULES:
            raise ArchbenchError(f"unknown schedule '{recipe.schedule}'; use {' or '.join(SCHEDULES)}.")
        if recipe.optimizer == "adamw" and (recipe.nesterov or recipe.momentum):
            raise ArchbenchError(
                "AdamW takes no momentum or Nesterov (its betas are torch's); drop --nesterov, or use --optimizer sgd."
            )
        return recipe


def check_limits(request) -> None:
    """The limits (min, max) of every option, on a request built in Python as the command line checks them."""
    for f in cli_fields(type(request)):
        low, high = f.metadata.get("min"), f.metadata.get("max")
        value = getattr(request, f.name)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and ((low is not None and v < low) or (high is not None and v > high)):
                bounds = f"at least {low}" if high is None else f"from {low} to {high}"
                raise ArchbenchError(f"{flag(f)} {v} is out of range; use a value {bounds}.")


TUNE_EPOCH_FRACTION = 0.25  # a tuning trial trains this share of the preset's epochs (at least one)
TUNE_GRID = (0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0)  # log-spaced, half-decade steps over three decades
TUNE_VAL_PER_CLASS = 50  # Tiny-ImageNet: 50 of each class's 500 training images (10%)


@dataclass
class TuneRequest(RunRequest):
    """What `archbench tune` was asked for: every `run` option, with a grid of rates instead of one."""

    lr: str | None = None  # each trial's rate comes from `lrs`
    tuning_trial: bool = True
    lrs: list[float] | None = option(
        None, f"A learning rate to try; repeatable. Default: {', '.join(f'{v:g}' for v in TUNE_GRID)}.", flags=("--lr",)
    )
    holdout_per_class: int = option(
        0,
        f"Validation images held out per class (0: {TUNE_VAL_PER_CLASS}, or a tenth of the smallest class "
        "when that is fewer).",
        min=0,
    )
    epochs: int | None = option(
        None, f"Epochs per trial (default: {TUNE_EPOCH_FRACTION:g} of the preset's, at least one).", min=1
    )
    tuning: Path | None = option(None, f"Where to write the tuning file (default: RUNS/{TUNING_FILE}).")


@dataclass
class BenchRequest:
    """What `archbench bench` was asked for (each field is also its command-line option)."""

    models: list[str] = option(None, "Registry names.", argument=True)
    device: str = same_option(RunRequest, "device")
    image_size: int = option(224, "Input size S.", min=16)
    batch_size: int = option(64, "Batch size.", min=1)
    steps: int = option(20, "Timed steps per measurement (after warm-up).", min=1)
    precision: str = same_option(RunRequest, "precision")
    channels_last: bool | None = same_option(RunRequest, "channels_last")
    compile: bool = same_option(RunRequest, "compile")
    num_classes: int = option(DEFAULT_NUM_CLASSES, "Output classes.", min=1)
    data: str = option(
        "synthetic", "Data for the end-to-end numbers: a prepared folder, or a built-in set ('digits', 'synthetic')."
    )
    out: Path = option(
        BENCH_DIR,
        "Folder for the result files (.json and .csv, named by device, precision, memory format and torch version).",
    )
    registry: Path | None = same_option(RunRequest, "registry")

    def __post_init__(self):
        paths_as_paths(self)


def paths_as_paths(request) -> None:
    """A request built in Python may name its folders and files with strings: make them Paths."""
    for f in dataclasses.fields(request):
        value = getattr(request, f.name)
        if isinstance(value, str) and "Path" in str(f.type):
            setattr(request, f.name, Path(value))


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class DataIdentity:
    """The data a run trained on, by content: the same on every machine that holds the same arrays."""

    name: str  # the manifest's dataset: "digits", "tiny-imagenet", "synthetic", ... (older records: tiny-imagenet-200)
    fingerprint: str
    num_classes: int
    train_size: int
    test_size: int  # the test split's images (records before the split was named: val_size)
    synthetic: bool

    @classmethod
    def of(cls, data) -> DataIdentity:
        return cls(
            name=data.dataset,
            fingerprint=data.fingerprint,
            num_classes=data.num_classes,
            train_size=len(data.train_labels),
            test_size=len(data.test_labels),
            synthetic=data.synthetic,
        )


def how_it_ran() -> Any:
    """A RunConfig field that says how or where a run was carried out, not what it is (`MACHINE_KEYS`): a tuning
    trial recorded on another machine is the same trial."""
    return field(metadata={"machine": True})


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers. `recipe.lr` is the rate the run uses."""

    model: str
    entry: dict  # the registry entry's identity: builder, args, traits, a hash of its TOML
    preset: str
    recipe: Recipe
    global_batch_size: int
    lr_source: str
    image_size: int = field(metadata={"rate": True})  # a rate tuned at one size does not carry over (Recipe's `rate`)
    seed: int
    thresholds: tuple[float, ...]
    gradnorm_steps: int
    validation: dict | None  # the held-out split: per_class, seed, size and the fingerprint of its indices
    tuning_trial: bool
    optimizer_kernel: str = how_it_ran()  # torch's kernel: "fused" or "foreach" (records before it: `optimizer`)
    device: str = how_it_ran()
    precision: str = how_it_ran()
    compile: bool = how_it_ran()
    compile_backend: str | None = how_it_ran()  # torch.compile's backend when compiled
    channels_last: bool = how_it_ran()
    deterministic: bool = how_it_ran()
    sync_bn: bool = how_it_ran()
    world_size: int = how_it_ran()
    data: DataIdentity

    def to_json(self) -> dict:
        """config.json's form: the recipe with the global batch and the lr's source beside it."""
        out = asdict(self)
        out["recipe"] = {**out["recipe"], "global_batch_size": self.global_batch_size, "lr_source": self.lr_source}
        del out["global_batch_size"], out["lr_source"]
        out["thresholds"] = list(self.thresholds)
        return out


# The fields a learning rate is only meaningful with: a run that differs in one cannot use a tuned rate.
RATE_FIELDS = tuple(
    f.name for f in (*dataclasses.fields(RunConfig), *dataclasses.fields(Recipe)) if f.metadata.get("rate")
)


# ------------------------------------------------------------------------------------------ identity

# What config.json records about the record itself, not the run.
RECORD_KEYS = ("run_id", "provenance", "config_hash", "schema_version")
# The registry entry's notes: its builder and arguments identify the architecture.
ENTRY_NOTES = ("description", "toml_sha256")
# How and where a run was carried out. The global batch is the batch times the processes.
MACHINE_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.metadata.get("machine"))
MACHINE_RECIPE_KEYS = ("global_batch_size",)
# Fields added to the recipe since runs were first recorded, with the value an older record ran with; and
# fields renamed, by their first name. A run's identity is written in the first form, so a run recorded
# before a change keeps its config hash.
ADDED_RECIPE_FIELDS = {"optimizer": "sgd"}
RENAMED = {"optimizer": "optimizer_kernel"}  # the SGD kernel, before the optimiser could be other than SGD
FIRST_NAMES = {new: old for old, new in RENAMED.items()}


def upgrade_config(config: dict) -> dict:
    """A config.json dict, of any version, as one written today: renamed fields under today's names, recipe
    fields added since with the value the run had."""
    config = {RENAMED.get(key, key): value for key, value in config.items()}
    if isinstance(config.get("recipe"), dict):
        config["recipe"] = {**ADDED_RECIPE_FIELDS, **config["recipe"]}
    return config


def run_identity(config: dict, *, machine: bool = True) -> dict:
    """What makes a recorded run (a config.json dict, of any version) this run, in each field's first form:
    everything but the record's bookkeeping and the entry's notes; without `machine`, not how or where it ran."""
    config = upgrade_config(config)
    dropped = RECORD_KEYS if machine else (*RECORD_KEYS, *MACHINE_KEYS)
    identity = {key: value for key, value in config.items() if key not in dropped}
    identity["entry"] = {k: v for k, v in config.get("entry", {}).items() if k not in ENTRY_NOTES}
    if "recipe" in identity:
        identity["recipe"] = {
            key: value
            for key, value in identity["recipe"].items()
            if (key not in ADDED_RECIPE_FIELDS or value != ADDED_RECIPE_FIELDS[key])
            and (machine or key not in MACHINE_RECIPE_KEYS)
        }
    return {FIRST_NAMES.get(key, key): value for key, value in identity.items()}


def compile_backend() -> str:
    """torch.compile's backend: inductor, or $ARCHBENCH_COMPILE_BACKEND (e.g. aot_eager: the same graphs without
    generated code, the quick check of the compiled path on a CPU)."""
    import torch._dynamo  # only when compiling: importing dynamo costs about a second

    backend = os.environ.get("ARCHBENCH_COMPILE_BACKEND", "inductor")
    try:
        torch._dynamo.lookup_backend(backend)
    except torch._dynamo.exc.InvalidBackend:
        raise ArchbenchError(
            f"ARCHBENCH_COMPILE_BACKEND={backend!r} is not a torch.compile backend (inductor, aot_eager, eager, ...)."
        ) from None
    return backend


@dataclass(frozen=True)
class TunedRate:
    """A model's rate from a tuning file: chosen on the validation split for a global batch of `global_batch`."""

    lr: float
    global_batch: int
    source: str  # how the file says it was chosen, for lr_source


# The largest rate an optimiser step can apply: float32's largest number, the dtype of every parameter (mixed
# precision keeps float32 parameters); a larger one cannot even be converted for the first update.
LARGEST_LR = float.fromhex("0x1.fffffep+127")


def parse_lr(text: str | None) -> float | str | None:
    """`--lr`: a positive number, or 'tuned'."""
    if text is None or text == "tuned":
        return text
    try:
        value = float(text)
    except ValueError:
        raise ArchbenchError(f"--lr {text} is neither a number nor 'tuned'.") from None
    if not (math.isfinite(value) and value > 0):
        raise ArchbenchError(f"--lr {text}: the learning rate must be a positive finite number.")
    return value


def resolve_lr(
    request: RunRequest, lr_scale: float | None, global_batch: int, tuned: TunedRate | None = None
) -> tuple[float, str]:
    """The learning rate and where it came from: `--lr` as given, the tuning file's (`--lr tuned`), the preset's
    or another optimiser's default. Tuned and preset rates are scaled linearly to the global batch (Goyal et
    al. 2017), the preset's also by the registry entry's `lr_scale`."""
    lr = parse_lr(request.lr)
    if lr == "tuned":
        if tuned is None:
            raise ArchbenchError("--lr tuned needs the model's rate from a tuning file; none was given.")
        scaled = tuned.lr * global_batch / tuned.global_batch
        extra = (
            "" if global_batch == tuned.global_batch else f", scaled from batch {tuned.global_batch} to {global_batch}"
        )
        return scaled, f"tuned ({tuned.source}{extra})"
    if lr is not None:
        return lr, "--lr"
    recipe = request.recipe()
    if recipe.optimizer != request.preset_spec.recipe.optimizer:  # the optimiser's own default, as it stands
        return recipe.lr, f"torch {recipe.optimizer} default"
    preset = request.preset_spec.recipe
    lr = preset.lr * global_batch / preset.batch_size
    source = "preset" if global_batch == preset.batch_size else f"preset, scaled to batch {global_batch}"
    if lr_scale is not None:
        lr, source = lr * lr_scale, f"{source} x registry lr_scale {lr_scale:g}"
    return lr, source


def lr_origin(lr_source) -> str | None:
    """Which of `resolve_lr`'s sources a recorded `lr_source` names: "tuned", "--lr" or "default" (None: none)."""
    if not isinstance(lr_source, str):
        return None
    return "tuned" if lr_source.startswith("tuned") else "--lr" if lr_source == "--lr" else "default"


def resolve_config(
    request: RunRequest,
    entry,
    seed: int,
    data,
    *,
    device: str,
    precision: str,
    channels_last: bool,
    optimizer_kernel: str,
    world_size: int = 1,
    validation: dict | None = None,
    tuned: TunedRate | None = None,
) -> RunConfig:
    """The run `request` asks for, for one registry entry and seed on the given data and device."""
    preset = request.preset_spec
    recipe = request.recipe()
    global_batch = recipe.batch_size * world_size
    lr, lr_source = resolve_lr(request, entry.lr_scale, global_batch, tuned)
    if not 0 < lr <= LARGEST_LR:  # NaN included
        raise ArchbenchError(
            f"the learning rate {lr:g} ({lr_source}) must be positive and at most {LARGEST_LR:g}: a larger one "
            "cannot be represented in the float32 the optimiser updates parameters in; choose another rate."
        )
    return RunConfig(
        model=entry.name,
        entry=entry.identity(),
        preset=request.preset,
        recipe=replace(recipe, lr=lr),
        global_batch_size=global_batch,
        lr_source=lr_source,
        image_size=preset.image_size if request.image_size is None else request.image_size,
        seed=seed,
        thresholds=tuple(sorted(request.thresholds or preset.thresholds)),
        gradnorm_steps=preset.gradnorm_steps if request.gradnorm_steps is None else request.gradnorm_steps,
        validation=validation,
        tuning_trial=request.tuning_trial,
        optimizer_kernel=optimizer_kernel,
        device=device,
        precision=precision,
        compile=request.compile,
        compile_backend=compile_backend() if request.compile else None,
        channels_last=channels_last,
        deterministic=request.deterministic,
        sync_bn=request.sync_bn and world_size > 1,
        world_size=world_size,
        data=DataIdentity.of(data),
    )
