"""Write docs/cli.md, the command reference, from the command line itself.

Every command of `archbench`, with its usage, its help and a table of its arguments and options (flags,
value, choices, default, help text, limits, environment variable), read from the Click objects Typer builds
(`typer.main.get_command`), so the page says what `--help` says and a new option appears on it by itself.
tests/test_docs.py fails when docs/cli.md is not what this writes.

    python tools/cli_reference.py      # rewrites docs/cli.md
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
REGENERATE = "python tools/cli_reference.py"
CHOICES = re.compile(r"<([^<>]+\|[^<>]+|[^<>|]+)>")  # a metavar that lists its choices: <paper|smoke|cifar>


def cell(text: str) -> str:
    """Text for one Markdown table cell: on one line, its pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def code(text: str) -> str:
    return f"`{text}`"


def subcommands(command, ctx: typer.Context) -> dict:
    """A group's visible commands by name, in the order `--help` lists them (none for a plain command)."""
    if not hasattr(command, "list_commands"):
        return {}
    return {name: command.commands[name] for name in command.list_commands(ctx) if not command.commands[name].hidden}


def commands(command, ctx: typer.Context) -> Iterator[tuple[typer.Context, object]]:
    """Each command under `command` (itself first), depth first, with its context."""
    yield ctx, command
    for name, sub in subcommands(command, ctx).items():
        yield from commands(sub, typer.Context(sub, info_name=name, parent=ctx))


def choices(param) -> list[str]:
    """The values an option accepts, where its metavar lists them (``<auto|fp32|bf16|fp16>``)."""
    match = CHOICES.fullmatch(param.metavar or "")
    return match.group(1).split("|") if match else []


def value(param) -> str:
    """What follows an option's flag: its choices, or the kind of value it takes (none for an on/off flag; an
    argument is its value)."""
    if param.param_type_name == "argument" or param.is_flag:
        return ""
    options = choices(param)
    many = " (repeatable)" if getattr(param, "multiple", False) else ""
    return (", ".join(code(c) for c in options) if options else code(param.metavar or "")) + many


def default(param) -> str:
    """The default as `--help` states it; a flag's as on or off, left blank where the help text says it in words."""
    if isinstance(param.default, bool):
        return "on" if param.default else "off"
    if isinstance(param.show_default, str):
        return code(param.show_default)
    if not param.show_default or param.default is None:
        return ""
    values = param.default if isinstance(param.default, list | tuple) else [param.default]
    return ", ".join(code(v.as_posix() if isinstance(v, Path) else str(v)) for v in values)


def limits(param) -> str:
    """The numeric range an option accepts, in words."""
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None and high is not None:
        return f"From {low} to {high}."
    if low is not None:
        return f"At least {low}."
    return f"At most {high}." if high is not None else ""


def meaning(param) -> str:
    """The help text, with the limits and the environment variable that `--help` appends to it."""
    envvar = f"Environment variable: {code(param.envvar)}." if isinstance(param.envvar, str) else ""
    return " ".join(part for part in (param.help or "", limits(param), envvar) if part)


def names(param) -> str:
    """The option's flags (``--runs``, ``--out``; ``--nesterov``, ``--no-nesterov``), or the argument's name."""
    if param.param_type_name == "argument":
        return code(param.metavar + ("..." if param.nargs != 1 else ""))
    return ", ".join(code(flag) for flag in [*param.opts, *param.secondary_opts])


def parameter_table(command, ctx: typer.Context) -> list[str]:
    """The arguments and options of one command (the help option left out: every command has it)."""
    params = [p for p in command.get_params(ctx) if not p.hidden and "--help" not in getattr(p, "opts", ())]
    if not params:
        return []
    rows = ["| argument or option | value | default | meaning |", "|---|---|---|---|"]
    rows += [f"| {cell(names(p))} | {cell(value(p))} | {cell(default(p))} | {cell(meaning(p))} |" for p in params]
    return [*rows, ""]


def command_section(command, ctx: typer.Context) -> list[str]:
    """One command's part of the page: heading, usage, help text, subcommands and parameter table."""
    lines = [f"## `{ctx.command_path}`", "", f"`{' '.join([ctx.command_path, *command.collect_usage_pieces(ctx)])}`"]
    lines += ["", *(command.help or "").strip().splitlines(), ""]
    listed = subcommands(command, ctx)
    lines += [f"- `{ctx.command_path} {name}`: {sub.get_short_help_str(limit=200)}" for name, sub in listed.items()]
    return lines + ([""] if listed else []) + parameter_table(command, ctx)


def reference() -> str:
    """The whole page, as this version of the command line describes itself."""
    from archbench.cli import app

    root = typer.main.get_command(app)
    lines = [
        "# Command reference",
        "",
        f"Generated from the command line by `{REGENERATE}`; do not edit by hand. Every command also takes",
        "`-h`/`--help`, which shows the same text.",
        "",
    ]
    for ctx, command in commands(root, typer.Context(root, info_name="archbench")):
        lines += command_section(command, ctx)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    PAGE.write_text(reference(), encoding="utf-8")
    print(f"wrote {PAGE}", file=sys.stderr)


if __name__ == "__main__":
    main()
