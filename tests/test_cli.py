"""The command line as the command reference (docs/cli.md) documents it: every option of `run`, `tune` and
`bench` in the reference's tables is the option `--help` shows, and the other way round, and the defaults
it states are the requests' own."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from archbench.cli import app
from archbench.config import BenchRequest, RunRequest, TuneRequest

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def documented_rows(command: str) -> list[tuple[list[str], str]]:
    """(flags, default cell) of each option row of the reference's table for `command`."""
    text = REFERENCE.read_text(encoding="utf-8")
    start = text.index(f"## `archbench {command}`")
    end = text.find("\n## ", start + 1)
    rows = [line for line in text[start:end].splitlines() if line.startswith("| `--")]
    cells = [re.split(r"(?<!\\)\|", row)[1:4] for row in rows]  # "\|" inside a cell is not a column
    return [
        ([f for f in FLAG.findall(first) if not f.startswith("--no-")], default.strip()) for first, _, default in cells
    ]


def documented_flags(command: str) -> set[str]:
    """Each row's first flag (`--runs` of `--runs`, `--out`): the name the parser keys the option by."""
    return {flags[0] for flags, _ in documented_rows(command)}


def options(command: str) -> dict:
    """The command's options as the parser has them, by their first flag."""
    params = typer.main.get_command(app).commands[command].params
    return {p.opts[0]: p for p in params if p.param_type_name == "option"}


def help_flags(command: str) -> set[str]:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return set(options(command)) - {"--help"}


@pytest.mark.parametrize("command", ["run", "tune", "bench"])
def test_reference_option_table_and_help_agree(command):
    documented, offered = documented_flags(command), help_flags(command)
    assert documented == offered, {"only in docs/cli.md": documented - offered, "only in --help": offered - documented}
    for flag in offered:  # and --help shows each of them
        assert flag in CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output


def documented_value(text: str):
    """A default as the reference writes it: blank is None (the preset, or another option, decides it when
    the run is planned), `off` and `on` a flag's False and True, a number a float."""
    text = text.strip().strip("`")
    if text in ("", "off", "on"):
        return {"": None, "off": False, "on": True}[text]
    try:
        return float(text)
    except ValueError:
        return text


def code_value(default):
    if isinstance(default, list) and len(default) == 1:  # a repeatable option's one default value
        default = default[0]
    if isinstance(default, Path):
        return default.as_posix()
    return float(default) if isinstance(default, int | float) and not isinstance(default, bool) else default


@pytest.mark.parametrize("command, request_type", [("run", RunRequest), ("tune", TuneRequest), ("bench", BenchRequest)])
def test_reference_defaults_are_the_code_defaults(command, request_type):
    """Each row's default cell states the request's own default (blank where it is None)."""
    fields = {f.name: getattr(request_type(models=["m"]), f.name) for f in dataclasses.fields(request_type)}
    flag_field = {flag: p.name for flag, p in options(command).items() if p.name in fields}
    compared = 0
    for flags, cell in documented_rows(command):
        if flags[0] not in flag_field:  # --config, --print-config: the command's, not the request's
            continue
        assert code_value(fields[flag_field[flags[0]]]) == documented_value(cell), (command, flags, cell)
        compared += 1
    assert compared >= {"run": 35, "tune": 35, "bench": 10}[command]


def test_help_shows_option_help_as_written():
    """Typer renders help as rich markup; `pip install archbench[slurm]` must keep its brackets."""
    output = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "400"}).output
    assert "archbench[slurm]" in output
