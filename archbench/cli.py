"""The `archbench` command line: argument parsing and presentation only; the work is in the library.

The options of `run` and `bench` are the fields of their request dataclasses (`archbench.config.RunRequest`,
`archbench.config.BenchRequest`): `request_command` turns those fields into Typer parameters, so an option
is defined once. Every expected failure, a bad option on the command line included, is one line on
stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from archbench.config import (
    BENCH_DIR,
    GPU_RESULTS_FILE,
    LATENCY_FILE,
    REPORT_FILE,
    RUNS_DIR,
    BenchRequest,
    RunRequest,
    TuneRequest,
    cli_fields,
)
from archbench.errors import DIVERGED_EXIT, ArchbenchError


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
                err_console.print(f"[bold red]error:[/] {escape(e.format_message())}", highlight=False, soft_wrap=True)
                code = getattr(e, "exit_code", 2)
        except typer.Abort:
            code = 1
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=OneLineErrors,
    help="Compare ResNet-18, plain-18 and VGG11/16 (with and without BN) under one training loop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Get Tiny-ImageNet-200 ready, or make a synthetic twin of it.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def friendly_errors(fn):
    """Turn an expected failure into one red line and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ArchbenchError as e:
            err_console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # a filesystem failure the library did not expect: still one line, with the path
            where = f" {e.filename}" if e.filename else ""
            err_console.print(
                f"[bold red]error:[/] {escape(f'cannot access{where}: {e.strerror or e}')}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None

    return wrapper


def _parameter(f: dataclasses.Field, hint) -> inspect.Parameter:
    """A request field as a Typer parameter: its type, help, flags and limits from the field's metadata
    (the help as written: Typer renders it as rich markup, where `archbench[slurm]` would lose its brackets)."""
    meta = f.metadata
    extra = {k: v for k, v in meta.items() if k not in ("help", "flags", "argument")}
    if typing.get_origin(hint) is list:  # a repeatable option shows its element type, as a single one does
        extra["metavar"] = f"<{typing.get_args(hint)[0].__name__}>"
    if meta["argument"]:
        marker = typer.Argument(help=escape(meta["help"]), show_default=False, metavar="MODEL")
        default = inspect.Parameter.empty
    else:
        has_default = f.default is not dataclasses.MISSING
        default = f.default if has_default and not isinstance(f.default, list) else None
        show = default is not None and not isinstance(default, bool)
        marker = typer.Option(*meta["flags"], help=escape(meta["help"]), show_default=show, **extra)
        if default is None:
            hint = Optional[hint]  # noqa: UP045 (Typer reads typing.Optional)
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, marker]
    )


def _plain_type(hint):
    """`int | None` -> int, `list[int] | None` -> list[int]: the type Typer parses."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return hint


def request_command(request_type, handler):
    """A Typer command whose parameters are `request_type`'s option fields and which calls
    ``handler(request_type(...))``; unset options keep the dataclass's defaults."""
    hints = typing.get_type_hints(request_type)
    params = [_parameter(f, _plain_type(hints[f.name])) for f in cli_fields(request_type)]

    def command(**kwargs):
        given = {k: v for k, v in kwargs.items() if v is not None and v != []}
        return handler(request_type(**given))

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = handler.__doc__
    command.__name__ = handler.__name__
    return command


def _field(request_type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(request_type) if f.name == name)


RegistryOption = _parameter(_field(RunRequest, "registry"), Path).annotation


# ------------------------------------------------------------------------------------------ commands


@app.command("list")
@friendly_errors
def list_cmd(registry: RegistryOption = None) -> None:
    """Show the model catalogue: parameters, FLOPs at 224x224, residual and BN."""
    from archbench.registry import catalogue

    rows = catalogue(registry)
    table = Table(
        title="archbench models",
        caption="GFLOPs: fvcore at 224x224, eval mode; fvcore counts one fused multiply-add as one flop.",
    )
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("parameters", justify="right")
    table.add_column("GFLOPs@224", justify="right")
    table.add_column("residual", justify="center")
    table.add_column("BN", justify="center")
    for row in rows:
        residual = {True: "yes", False: "no"}.get(row["residual"], "?")
        table.add_row(
            row["name"],
            row["description"],
            f"{row['parameters']:,}",
            f"{row['gflops_224']:.4f}",
            residual,
            "yes" if row["batch_norm"] else "no",
        )
    console.print(table)


@friendly_errors
def run(request: RunRequest) -> None:
    """Train MODELs with the shared loop and record metrics, gradient norms and provenance."""
    from archbench.train import run_models

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
    from archbench.tune import tune as tune_models

    tune_models(request, console=console)


app.command("run")(request_command(RunRequest, run))
app.command("tune")(request_command(TuneRequest, tune))
app.command("bench")(request_command(BenchRequest, bench))


@app.command()
@friendly_errors
def report(
    runs: Annotated[Path, typer.Option(help="Folder of run records.")] = RUNS_DIR,
    out: Annotated[Path, typer.Option(help="Markdown file to write; figures go beside it.")] = REPORT_FILE,
    benchmarks: Annotated[Path, typer.Option(help="pytest-benchmark JSON of forward latency.")] = LATENCY_FILE,
    bench_results: Annotated[Path, typer.Option(help="Folder of `archbench bench` result files.")] = BENCH_DIR,
    gpu_results: Annotated[
        Path, typer.Option(help="gpu-results.json written by benchmarks/gpu.sh.")
    ] = GPU_RESULTS_FILE,
) -> None:
    """Regenerate REPORT.md (tables, figures, discussion) from the recorded runs."""
    from archbench.report import write_report

    path = write_report(
        runs_dir=runs, out=out, benchmarks=benchmarks, bench_results=bench_results, gpu_results=gpu_results
    )
    console.print(f"wrote {path}")


@app.command()
@friendly_errors
def status(runs: Annotated[Path, typer.Option(help="Folder of run records.")] = RUNS_DIR) -> None:
    """Where a study stands: every run under the folder, its progress, accuracy, speed and time left."""
    from archbench.status import show_status

    show_status(runs, console=console)


@data_app.command("prepare")
@friendly_errors
def data_prepare(
    root: Annotated[Path, typer.Option(help="Where the data and its packed cache live.")] = Path("data"),
    source: Annotated[
        str | None,
        typer.Option(  # noqa: UP045
            help="URL, local zip or extracted folder (default: the official zip).", show_default=False
        ),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable images (counted) instead of stopping.")
    ] = False,
) -> None:
    """Download (resumable, md5-checked), extract, verify and pack Tiny-ImageNet-200."""
    from archbench.data.tinyimagenet import prepare

    manifest = prepare(root=root, source=source, skip_bad=skip_bad, console=console)
    _print_manifest(manifest)


@data_app.command("synth")
@friendly_errors
def data_synth(
    root: Annotated[Path, typer.Option(help="Folder to write the synthetic dataset into.")] = Path("data/synthetic"),
    classes: Annotated[int, typer.Option(help="Number of classes.")] = 10,
    train_per_class: Annotated[int, typer.Option(help="Training images per class.")] = 100,
    val_per_class: Annotated[int, typer.Option(help="Validation images per class.")] = 20,
    seed: Annotated[int, typer.Option(help="Generator seed (same seed, same files).")] = 0,
) -> None:
    """Write a synthetic dataset in the exact Tiny-ImageNet layout, then pack it like the real one."""
    from archbench.data.synthetic import make_synthetic

    manifest = make_synthetic(
        root=root,
        classes=classes,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
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
