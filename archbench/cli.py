"""The `archbench` command line: argument parsing and presentation only; the work is in the library."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from archbench.errors import DIVERGED_EXIT, ArchbenchError

app = typer.Typer(
    help="Compare ResNet-18, plain-18 and VGG11/16 (with and without BN) under one training loop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Get Tiny-ImageNet-200 ready, or make a synthetic twin of it.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

RegistryOption = Annotated[
    Optional[Path],
    typer.Option(
        "--registry",
        envvar="ARCHBENCH_REGISTRY",
        help="Folder of model TOML files to use instead of the built-in catalogue.",
        show_default=False,
    ),
]


def friendly_errors(fn):
    """Turn an expected failure into one red line and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ArchbenchError as e:
            err_console.print(f"[bold red]error:[/] {e.message}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


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
        table.add_row(
            row["name"],
            row["description"],
            f"{row['parameters']:,}",
            f"{row['gflops_224']:.4f}",
            "yes" if row["residual"] else "no",
            "yes" if row["batch_norm"] else "no",
        )
    console.print(table)


@app.command()
@friendly_errors
def run(
    models: Annotated[list[str], typer.Argument(help="Registry names, e.g. resnet18 vgg16_bn.", show_default=False)],
    data: Annotated[Optional[str], typer.Option(help="Prepared data folder (see `archbench data prepare`) or 'synthetic'. Default: the preset's.", show_default=False)] = None,
    preset: Annotated[str, typer.Option(help="Recipe preset: 'paper' (Tiny-ImageNet at 224) or 'smoke'.")] = "paper",
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Override the preset's epochs.", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Per-process batch size (overrides the preset; the preset's lr scales linearly with the global batch).", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate for every model (overrides preset and registry).", show_default=False)] = None,
    clip_grad_norm: Annotated[Optional[float], typer.Option(min=0, help="Clip the global gradient norm (0: off; default: the preset's).", show_default=False)] = None,
    image_size: Annotated[Optional[int], typer.Option(min=16, help="Training crop size S (images upscaled to S*256/224 first).", show_default=False)] = None,
    seeds: Annotated[Optional[list[int]], typer.Option("--seed", help="Seed; repeat for several runs per model.", show_default=False)] = None,
    thresholds: Annotated[Optional[list[float]], typer.Option("--threshold", min=0, max=1, help="Test-accuracy threshold, a fraction in (0, 1]; repeatable.", show_default=False)] = None,
    gradnorm_steps: Annotated[Optional[int], typer.Option(min=0, help="Record per-layer gradient norms for this many first steps.", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 where supported), fp32, bf16 or fp16.")] = "auto",
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model.")] = False,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="Default: on for CUDA.", show_default=False)] = None,
    deterministic: Annotated[bool, typer.Option(help="Deterministic algorithms (bit-exact resume on CPU).")] = False,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="SyncBatchNorm under torchrun.")] = False,
    gpus: Annotated[Optional[str], typer.Option(help="Comma-separated GPU ids: run the models concurrently, one per GPU.", show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="Where run records go.")] = Path("runs"),
    fresh: Annotated[bool, typer.Option("--fresh", help="Start a new run even if one with this config is recorded or unfinished.")] = False,
    keep_checkpoint: Annotated[bool, typer.Option("--keep-checkpoint", help="Keep checkpoint.pt after the run ends.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Plain log lines instead of progress bars.")] = False,
    registry: RegistryOption = None,
) -> None:
    """Train MODELs with the shared loop and record metrics, gradient norms and provenance."""
    from archbench.train import RunRequest, run_models

    request = RunRequest(
        models=models,
        data=data,
        preset=preset,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        clip_grad_norm=clip_grad_norm,
        image_size=image_size,
        seeds=seeds or [0],
        thresholds=thresholds,
        gradnorm_steps=gradnorm_steps,
        device=device,
        precision=precision,
        compile=compile,
        channels_last=channels_last,
        deterministic=deterministic,
        sync_bn=sync_bn,
        gpus=gpus,
        out=out,
        fresh=fresh,
        keep_checkpoint=keep_checkpoint,
        quiet=quiet,
        registry=registry,
    )
    results = run_models(request, console=console)
    if any(r["status"] != "completed" for r in results):
        raise typer.Exit(DIVERGED_EXIT)


@app.command()
@friendly_errors
def bench(
    models: Annotated[list[str], typer.Argument(help="Registry names.", show_default=False)],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    image_size: Annotated[int, typer.Option(min=16, help="Input size S.")] = 224,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size.")] = 64,
    steps: Annotated[int, typer.Option(min=1, help="Timed steps per measurement (after warm-up).")] = 20,
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="Default: on for CUDA.", show_default=False)] = None,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model.")] = False,
    num_classes: Annotated[int, typer.Option(help="Output classes.")] = 200,
    data: Annotated[str, typer.Option(help="Data for the end-to-end numbers: a prepared folder or 'synthetic'.")] = "synthetic",
    out: Annotated[Optional[Path], typer.Option(help="Also write the table as JSON here.", show_default=False)] = None,
    registry: RegistryOption = None,
) -> None:
    """Training and inference images/s: model-only against end-to-end with the real input pipeline."""
    from archbench.bench import BenchRequest, run_bench

    run_bench(
        BenchRequest(
            models=models,
            device=device,
            image_size=image_size,
            batch_size=batch_size,
            steps=steps,
            precision=precision,
            channels_last=channels_last,
            compile=compile,
            num_classes=num_classes,
            data=data,
            out=out,
            registry=registry,
        ),
        console=console,
    )


@app.command()
@friendly_errors
def report(
    runs: Annotated[Path, typer.Option(help="Folder of run records.")] = Path("runs"),
    out: Annotated[Path, typer.Option(help="Markdown file to write; figures go beside it.")] = Path("REPORT.md"),
    benchmarks: Annotated[Path, typer.Option(help="pytest-benchmark JSON of forward latency.")] = Path("benchmarks/forward_latency.json"),
) -> None:
    """Regenerate REPORT.md (tables, figures, discussion) from the recorded runs."""
    from archbench.report import write_report

    path = write_report(runs_dir=runs, out=out, benchmarks=benchmarks)
    console.print(f"wrote {path}")


@data_app.command("prepare")
@friendly_errors
def data_prepare(
    root: Annotated[Path, typer.Option(help="Where the data and its packed cache live.")] = Path("data"),
    source: Annotated[Optional[str], typer.Option(help="URL, local zip or extracted folder (default: the official zip).", show_default=False)] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images (counted) instead of stopping.")] = False,
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
        root=root, classes=classes, train_per_class=train_per_class, val_per_class=val_per_class, seed=seed, console=console
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
