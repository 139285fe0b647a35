"""The `archbench` command line: argument parsing and presentation only; the work is in the library.

The options of `run`, `tune` and `bench` are the fields of their request dataclasses (`archbench.config`), turned
into Typer parameters by `request_command`; a study file (`--config study.toml`) takes them by the same names.
Every expected failure is one line on stderr and exit code 2 (docs/running.md).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json as jsonlib
import math
import shlex
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperArgument, TyperCommand, TyperGroup

import archbench
from archbench.annotations import matches
from archbench.catalogue import read_toml
from archbench.config import (
    BENCH_DIR,
    DEFAULT_NUM_CLASSES,
    GPU_RESULTS_FILE,
    LATENCY_FILE,
    REPORT_FILE,
    RUNS_DIR,
    BenchRequest,
    RunRequest,
    TuneRequest,
    cli_fields,
    flag,
    option,
    option_names,
    request_field,
)
from archbench.errors import DIVERGED_EXIT, ArchbenchError

INTERRUPTED_EXIT = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)
HELP_WIDTH = 100  # help wraps at the terminal's width, at most this


class OneLineErrors(TyperGroup):
    """Typer's group, but a command-line error is one line (not a usage box) and exit code 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as e:  # click's ClickException and its usage errors
            if type(e).__name__ == "NoArgsIsHelpError":
                e.show()
                code = 0
            else:
                _error(e.format_message())
                code = getattr(e, "exit_code", 2)
        except typer.Abort:
            code = 1
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


class _NamedArgument(TyperArgument):
    """An argument shown in the help by its metavar alone (``MODEL...``), not with Typer's Python type."""

    def display_type_rich(self, ctx) -> None:
        return None

    def _rich_display_name(self) -> str:
        return self.display_name_raw + ("..." if self.nargs != 1 else "")


class NamedArguments(TyperCommand):
    """Typer's command, its arguments that have a metavar shown by it (``MODEL...``, not ``MODEL <list[str]>``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperArgument and param.metavar:
                param.__class__ = _NamedArgument


def _version(value: bool) -> None:
    if value:
        console.print(f"archbench {archbench.__version__}", highlight=False)
        raise typer.Exit()


app = typer.Typer(
    cls=OneLineErrors,
    help="Compare ResNet-18, plain-18, VGG11/16 (with and without BN) and your own networks under one training loop, "
    "on Tiny-ImageNet, CIFAR, the digits or your own images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's help: wrapped to the terminal, never cut with "…"
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": HELP_WIDTH},
)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", help="Show the version and exit.", callback=_version, is_eager=True),
    ] = False,
) -> None:
    """The command group; its help is the app's."""


# The names `archbench data prepare` takes: archbench.data.sources.SOURCES, in its order (tests/test_data_sources.py
# checks they agree; written here so that the command line parses without importing numpy).
DATASETS = ("tiny-imagenet", "cifar10", "cifar100", "imagefolder", "digits")
data_app = typer.Typer(
    help="Get a data set ready (Tiny-ImageNet, CIFAR, your own ImageFolder, the digits), or make a synthetic one.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data", short_help="Prepare a data set, or make a synthetic one.")

console = Console()
err_console = Console(stderr=True)


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def friendly_errors(fn):
    """Turn an expected failure into one red line and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ArchbenchError as e:
            _error(e.message)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # a filesystem failure the library did not expect: still one line, with the path
            _error(f"cannot access{f' {e.filename}' if e.filename else ''}: {e.strerror or e}")
            raise typer.Exit(2) from None

    return wrapper


def _optional(hint, help: str, metavar: str, *flags: str, **limits):
    """An option that may be left out, its default (None) not shown in the help."""
    option = typer.Option(*flags, help=help, metavar=metavar, show_default=False, **limits)
    return Annotated[Optional[hint], option]  # noqa: UP045 (Typer reads typing.Optional)


def _parameter(f: dataclasses.Field, hint) -> inspect.Parameter:
    """A request field as a Typer parameter: its type, help, flags, choices and limits from the field's metadata."""
    meta = f.metadata
    extra = {k: v for k, v in meta.items() if k not in ("help", "flags", "argument", "choices", "recipe")}
    if meta.get("choices"):  # shown in the help and checked while parsing, before anything is imported
        extra["metavar"] = f"<{'|'.join(meta['choices'])}>"
        extra["callback"] = _one_of(f.name, meta["choices"])
    elif hint is not bool and "metavar" not in meta:  # INT, FLOAT, TEXT, PATH; a repeatable option its element's
        element = typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint
        extra["metavar"] = {"str": "TEXT"}.get(element.__name__, element.__name__.upper())
    if meta["argument"]:  # optional here: a study file may name the models
        default, marker = None, typer.Argument(help=meta["help"], show_default=False, metavar="MODEL")
    else:
        factory = f.default_factory is not dataclasses.MISSING  # a repeatable option's default list (--seed: [0])
        default = f.default_factory() if factory else f.default
        show = default is not None and not isinstance(default, bool)
        marker = typer.Option(*meta["flags"], help=meta["help"], show_default=show, **extra)
    if default is None:
        hint = Optional[hint]  # noqa: UP045 (Typer reads typing.Optional)
    annotation = Annotated[hint, marker]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _one_of(name: str, choices: tuple[str, ...]):
    def check(value):
        if value is not None and value not in choices:
            raise typer.BadParameter(f"unknown {name} '{value}'; use one of: {', '.join(choices)}.")
        return value

    return check


def _plain_type(hint):
    """`int | None` -> int, `list[int] | None` -> list[int]: the type Typer parses."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


@dataclasses.dataclass
class StudyOptions:
    """The options of the commands that take a study file, beside their request's."""

    config: Path | None = option(
        None,
        "Study file (TOML): models, seeds and any option by its command-line name, e.g. "
        'models = ["resnet18"], seed = [0, 1], batch-size = 64. Command-line options override it.',
        flags=("--config", "-c"),
        metavar="FILE",
    )
    print_config: bool = option(
        False, "Print the resolved study as TOML and exit without running.", flags=("--print-config",)
    )


def _parameters(request_type) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(request_type)
    return [_parameter(f, _plain_type(hints[f.name])) for f in cli_fields(request_type)]


def request_command(request_type, handler, study: bool = False):
    """A Typer command whose parameters are `request_type`'s option fields and which calls
    ``handler(request_type(...))``; with `study`, it also takes `--config FILE` and `--print-config`."""
    params = [*_parameters(request_type), *(_parameters(StudyOptions) if study else [])]
    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)

    def command(ctx: typer.Context, **kwargs):
        config, print_config = kwargs.pop("config", None), kwargs.pop("print_config", False)
        values = friendly_errors(read_study)(config, request_type, ctx) if config is not None else {}
        for name, value in kwargs.items():
            source = ctx.get_parameter_source(name)
            given = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
            if value is not None and value != [] and (given or name not in values):
                values[name] = value
        if not values.get("models"):
            raise typer.BadParameter("name the models on the command line or in --config.", param_hint="'MODEL...'")
        request = friendly_errors(request_type)(**values)
        if print_config:
            friendly_errors(request.check)()
            console.print(study_toml(request, ctx.info_name), highlight=False, soft_wrap=True, markup=False, end="")
            return None

        def record() -> None:  # a study run from a file is recorded in its runs folder once it has run
            if config is not None and Path(request.out).is_dir():
                friendly_errors(write_study)(request, ctx.info_name)

        try:
            result = handler(request)
        except KeyboardInterrupt as e:
            record()
            interrupted(request, ctx.info_name, e)
        except typer.Exit as e:
            if e.exit_code == DIVERGED_EXIT:
                record()
            raise
        record()
        return result

    command.__signature__ = inspect.Signature([context, *params])
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
    command.__doc__ = handler.__doc__
    command.__name__ = handler.__name__
    return command


# ------------------------------------------------------------------------------------------ study files


# The TOML values an option of each type takes (`archbench.annotations.matches`: an integer is a number, a
# bool is neither; a text option takes a number too, lr = 0.1), and their name for an error message (else: a path).
TOML_TYPES = {
    bool: (bool, "true or false"),
    int: (int, "an integer"),
    float: (float, "a number"),
    str: (str | float, "a string"),
}


def read_study(path: Path, request_type, ctx: typer.Context) -> dict[str, Any]:
    """A study file's options as request field values, each checked by the parser's own type (choices, limits)."""
    try:
        _, table = read_toml(path)
    except OSError as e:
        raise ArchbenchError(f"cannot read the study file {path}: {e.strerror or e}") from None
    fields = {name: f for f in cli_fields(request_type) for name in option_names(f)}
    fields["models"] = fields["model"] = next(f for f in cli_fields(request_type) if f.metadata["argument"])
    params = {p.name: p for p in ctx.command.params}
    hints = typing.get_type_hints(request_type)
    values = {}
    for key, value in table.items():
        f = fields.get(key.replace("_", "-"))
        if f is None:
            raise ArchbenchError(
                f"{path}: unknown option '{key}'; use the options of `archbench {ctx.info_name}` by their "
                "command-line names (e.g. batch-size, seed, runs)."
            )
        hint = _plain_type(hints[f.name])
        many = typing.get_origin(hint) is list
        element = typing.get_args(hint)[0] if many else hint
        items = value if many and isinstance(value, list) else [value]
        accepted, expected = TOML_TYPES.get(element, (str, "a path (a string)"))
        if isinstance(value, list) and not many or not all(matches(v, accepted) for v in items):
            expected = f"{expected} or a list of them" if many else expected
            raise ArchbenchError(f"{path}: {key} must be {expected}, not {value!r}.")
        items = [str(v) if element is str else v for v in items]
        param = params[f.name]
        try:  # the parser's own check: choices and limits
            converted = param.process_value(ctx, items if many else items[0])
        except typer.BadParameter as e:
            raise ArchbenchError(f"{path}: {key}: {e.message}") from None
        values[f.name] = list(converted) if many else converted
    return values


def _toml_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)  # inf and nan as TOML writes them, not as JSON does
    return jsonlib.dumps(value.as_posix() if isinstance(value, Path) else value, ensure_ascii=False)


def study_toml(request, command: str) -> str:
    """The resolved study as a study file (unset options, which the preset decides, left out)."""
    lines = [f"# archbench {command}: the resolved study (archbench {archbench.__version__})"]
    for f in cli_fields(type(request)):
        value = getattr(request, f.name)
        if value is None:
            continue
        key = "models" if f.metadata["argument"] else option_names(f)[0]
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def write_study(request, command: str) -> None:
    """Record a study run from a study file: RUNS/study-run.toml or RUNS/study-tune.toml."""
    from archbench.runs import write_text

    write_text(Path(request.out) / f"study-{command}.toml", study_toml(request, command))


# ------------------------------------------------------------------------------------------ Ctrl-C


def resume_command(request, command: str) -> str:
    """The command line that continues `request`'s study: every option not at its default, but --fresh."""
    defaults = type(request)(models=list(request.models))
    args = ["archbench", command, *request.models]
    for f in cli_fields(type(request)):
        value = getattr(request, f.name)
        if f.metadata["argument"] or f.name == "fresh" or value == getattr(defaults, f.name) or value is None:
            continue
        names = f.metadata["flags"][0].split("/") if f.metadata["flags"] else [flag(f)]
        if isinstance(value, bool):
            args += [names[0] if value else names[-1]] if value or len(names) == 2 else []
        elif isinstance(value, list):
            args += [a for v in value for a in (names[0], str(v))]
        else:
            args += [names[0], str(value)]
    return shlex.join(args)


def interrupted(request, command: str, e: KeyboardInterrupt) -> None:
    """Ctrl-C: one line with what was saved and the command that resumes; exit code 130."""
    saved = str(e) or "every finished epoch is saved"
    err_console.print(
        f"[yellow]interrupted:[/] {escape(saved)}; resume with: {escape(resume_command(request, command))}",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(INTERRUPTED_EXIT)


RegistryOption = _parameter(request_field(RunRequest, "registry"), Path).annotation
RunsOption = Annotated[Path, typer.Option("--runs", help="Folder of run records.", metavar="DIR")]


# ------------------------------------------------------------------------------------------ commands


@app.command("list", short_help="The model catalogue.")
@friendly_errors
def list_cmd(
    registry: RegistryOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON (null GFLOPs: not counted).")] = False,
) -> None:
    """Show the model catalogue: parameters and FLOPs at 224x224 (at the output classes the caption states; a run
    builds the classifier for its data's classes), depth, residual and BN (cached after the first call)."""
    from archbench.catalogue import catalogue

    rows = catalogue(registry)
    if as_json:
        plain = [{**row, "gflops_224": None if math.isnan(row["gflops_224"]) else row["gflops_224"]} for row in rows]
        typer.echo(jsonlib.dumps(plain, indent=2))
        return
    described = console.width >= 120  # else the descriptions follow the table, each on its own line
    table = Table(
        title="archbench models",
        caption=f"Parameters and GFLOPs at {DEFAULT_NUM_CLASSES} output classes (a run builds the classifier for its "
        "data's classes). GFLOPs: fvcore at 224x224, eval mode; fvcore counts one fused multiply-add as one flop. "
        "Depth: conv and linear layers on the longest input-to-output path.",
    )
    table.add_column("name", style="bold", no_wrap=True)
    for name, justify in (("parameters", "right"), ("GFLOPs@224", "right"), ("depth", "right")):
        table.add_column(name, justify=justify)
    for name in ("residual", "BN"):
        table.add_column(name, justify="center")
    if described:
        table.add_column("description", ratio=1)
    for row in rows:
        table.add_row(
            row["name"],
            f"{row['parameters']:,}",
            "—" if math.isnan(row["gflops_224"]) else f"{row['gflops_224']:.4f}",
            str(row["depth"]),
            {True: "yes", False: "no"}.get(row["residual"], "?"),
            "yes" if row["batch_norm"] else "no",
            *([row["description"]] if described else []),
        )
    console.print(table)
    if not described:
        descriptions = Table.grid(padding=(0, 2))
        descriptions.add_column(style="bold", no_wrap=True)
        descriptions.add_column()
        for row in rows:
            descriptions.add_row(row["name"], row["description"])
        console.print(descriptions)


@friendly_errors
def run(request: RunRequest) -> None:
    """Train MODELs with the shared loop and record metrics, gradient norms and provenance."""
    request.check()  # before torch is imported: a bad choice or a missing tuning file answers at once
    from archbench.study import run_models

    results = run_models(request, console=console)
    if any(r["status"] != "completed" for r in results):
        raise typer.Exit(DIVERGED_EXIT)


@friendly_errors
def bench(request: BenchRequest) -> None:
    """Training and inference images/s: model-only against end-to-end with the real input pipeline."""
    from archbench.bench import run_bench

    run_bench(request, console=console)


@friendly_errors
def tune(request: TuneRequest) -> None:
    """Tune each MODEL's learning rate on a validation split carved from train; write the tuning file."""
    request.check()
    from archbench.tune import tune as tune_models

    tune_models(request, console=console)


# Each command's line in `archbench --help` (its docstring is the first paragraph of its own --help).
app.command("run", cls=NamedArguments, short_help="Train models and record their runs.")(
    request_command(RunRequest, run, study=True)
)
app.command("tune", cls=NamedArguments, short_help="Tune each model's learning rate.")(
    request_command(TuneRequest, tune, study=True)
)
app.command("bench", cls=NamedArguments, short_help="Training and inference images/s.")(
    request_command(BenchRequest, bench)
)


def _project_path(help: str, default: str, metavar: str = "FILE"):
    """A `report` option naming a file or folder that defaults to `default` in the runs folder's project."""
    return _optional(Path, f"{help} Default: RUNS/../{default}.", metavar)


@app.command(short_help="Write REPORT.md from the recorded runs.")
@friendly_errors
def report(
    runs: RunsOption = RUNS_DIR,
    report: _project_path("Markdown file to write; figures go beside it.", REPORT_FILE) = None,
    benchmarks: _project_path("pytest-benchmark JSON of forward latency.", LATENCY_FILE) = None,
    bench_results: _project_path("Folder of `archbench bench` result files.", BENCH_DIR, "DIR") = None,
    gpu_results: _project_path("gpu-results.json of benchmarks/gpu.sh.", GPU_RESULTS_FILE) = None,
) -> None:
    """Regenerate REPORT.md (tables, figures, discussion) from the recorded runs.

    The report and the benchmark files it reads default to the runs folder's project: the folder that
    holds RUNS."""
    from archbench.report import write_report

    project = runs.parent  # `runs` -> the working folder
    path = write_report(
        runs_dir=runs,
        out=report or project / REPORT_FILE,
        benchmarks=benchmarks or project / LATENCY_FILE,
        bench_results=bench_results or project / BENCH_DIR,
        gpu_results=gpu_results or project / GPU_RESULTS_FILE,
    )
    console.print(f"wrote {path}")


@app.command(short_help="Where a study stands.")
@friendly_errors
def status(
    runs: RunsOption = RUNS_DIR,
    json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table.")] = False,
    watch: _optional(float, "Redraw the table in place every SECONDS until Ctrl-C.", "SECONDS", min=0.1) = None,
) -> None:
    """Where a study stands: every run under the folder, its rate, arm, progress, accuracy, speed and time left."""
    from archbench.status import show_status, status_json, watch_status

    if json:
        typer.echo(jsonlib.dumps(status_json(runs), indent=2))
    elif watch is not None:
        watch_status(runs, watch, console=console)
    else:
        show_status(runs, console=console)


@data_app.command("prepare", cls=NamedArguments, short_help="Download, verify and pack a data set.")
@friendly_errors
def data_prepare(
    dataset: Annotated[
        str,
        typer.Argument(help=f"One of: {', '.join(DATASETS)}.", metavar="DATASET"),
    ] = DATASETS[0],
    root: _optional(
        Path,
        "Where the data and its packed cache live (default: data for tiny-imagenet, data/DATASET for the others; "
        "`--data DATASET` finds it there).",
        "DIR",
    ) = None,
    source: _optional(
        str,
        "URL, local archive or file, or folder (default: the official archive; digits: scikit-learn's copy; "
        "imagefolder: required).",
        "URL|FILE|DIR",
    ) = None,
    image_size: _optional(
        int,
        "imagefolder: resize every image to N x N once (default: the training images' median shorter side).",
        "N",
        min=1,
    ) = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable images (counted) instead of stopping.")
    ] = False,
) -> None:
    """Get a data set ready: download (resumable, checksummed) or read, verify and pack it."""
    from archbench.data.sources import prepare

    manifest = prepare(dataset, root, source, image_size=image_size, skip_bad=skip_bad, console=console)
    _print_manifest(manifest)


SYNTH_ROOT = Path("data/synthetic")


@data_app.command("synth", short_help="Make a synthetic data set.")
@friendly_errors
def data_synth(
    root: Annotated[Path, typer.Option(help="Folder to write the synthetic set into.", metavar="DIR")] = SYNTH_ROOT,
    classes: Annotated[int, typer.Option(help="Number of classes.", metavar="N")] = 10,
    train_per_class: Annotated[int, typer.Option(help="Training images per class.", metavar="N")] = 100,
    test_per_class: Annotated[
        int, typer.Option(help="Test images per class (the layout's val/ folder).", metavar="N")
    ] = 20,
    seed: Annotated[int, typer.Option(help="Generator seed (same seed, same files).", metavar="N")] = 0,
) -> None:
    """Write a synthetic dataset in the exact Tiny-ImageNet layout, then pack it like the real one."""
    from archbench.data.synthetic import make_synthetic

    manifest = make_synthetic(
        root=root,
        classes=classes,
        train_per_class=train_per_class,
        val_per_class=test_per_class,
        seed=seed,
        console=console,
    )
    _print_manifest(manifest)


def _print_manifest(manifest: dict) -> None:
    splits = ", ".join(f"{name} {info['count']:,}" for name, info in manifest["splits"].items())
    console.print(
        f"[green]ready:[/] {manifest['num_classes']} classes; {splits}; fingerprint {manifest['fingerprint'][:12]}"
        + (f"; {manifest['skipped']} skipped" if manifest.get("skipped") else "")
        + (f"; {manifest['resized']} resized" if manifest.get("resized") else ""),
        soft_wrap=True,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
