"""The command line as the README documents it: every option of `run`, `tune` and `bench` in the README's
tables is the option `--help` shows, and the other way round."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from archbench.cli import app
from archbench.config import BenchRequest, RunRequest, TuneRequest

README = Path(__file__).resolve().parent.parent / "README.md"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def readme_rows(command: str) -> list[tuple[list[str], str]]:
    """(flags, default cell) of each row of the option table under the README heading for `command`."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"### `archbench {command}`")
    end = text.find("\n#", start + 1)
    rows = [line for line in text[start:end].splitlines() if line.startswith("| `--")]
    cells = [re.split(r"(?<!\\)\|", row)[1:3] for row in rows]  # "\|" inside a cell is not a column
    return [
        ([f for f in FLAG.findall(first) if not f.startswith("--no-")], default.strip()) for first, default in cells
    ]


def readme_flags(command: str) -> set[str]:
    return {flag for flags, _ in readme_rows(command) for flag in flags}


def options(command: str) -> dict:
    """The command's options as the parser has them, by their first flag."""
    params = typer.main.get_command(app).commands[command].params
    return {p.opts[0]: p for p in params if p.param_type_name == "option"}


def help_flags(command: str) -> set[str]:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return set(options(command)) - {"--help"}


@pytest.mark.parametrize("command", ["run", "tune", "bench"])
def test_readme_option_table_and_help_agree(command):
    documented, offered = readme_flags(command), help_flags(command)
    assert documented == offered, {"only in README": documented - offered, "only in --help": offered - documented}
    for flag in offered:  # and --help shows each of them
        assert flag in CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output


def readme_value(text: str):
    """A default as the README writes it: `off` is False; "the preset's" and one derived from another option
    (`RUNS/tuning.json`) are None in the code, which decides them when the run is planned."""
    text = text.strip().strip("`")
    if text == "off":
        return False
    if text == "the preset's" or re.search(r"\b[A-Z]{2,}\b", text):
        return None
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
def test_readme_defaults_are_the_code_defaults(command, request_type):
    """Each row whose default cell gives one plain value per flag ("224, 64" for two flags) states the
    request's own default; rows that describe their default in words are left to the reader."""
    fields = {f.name: getattr(request_type(models=["m"]), f.name) for f in dataclasses.fields(request_type)}
    flag_field = {flag: p.name for flag, p in options(command).items() if p.name in fields}
    compared = 0
    for flags, cell in readme_rows(command):
        values = [readme_value(v) for v in cell.split(", ")] if cell else []
        if not set(flags) <= set(flag_field):  # --config, --print-config: the command's, not the request's
            continue
        if len(values) != len(flags) or any(isinstance(v, str) and " " in v for v in values):
            continue
        for flag, value in zip(flags, values):
            assert code_value(fields[flag_field[flag]]) == value, (command, flag, cell)
            compared += 1
    assert compared >= {"run": 15, "tune": 1, "bench": 5}[command]


def test_help_shows_option_help_as_written():
    """Typer renders help as rich markup; `pip install archbench[slurm]` must keep its brackets."""
    output = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "400"}).output
    assert "archbench[slurm]" in output
