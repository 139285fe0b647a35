"""The command line as the README documents it: every option of `run`, `tune` and `bench` in the README's
tables is the option `--help` shows, and the other way round."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archbench.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def readme_flags(command: str) -> set[str]:
    """Flags in the first column of the option table under the README heading for `command`."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"### `archbench {command}`")
    end = text.find("\n#", start + 1)
    rows = [line for line in text[start:end].splitlines() if line.startswith("| `--")]
    first_cells = [re.split(r"(?<!\\)\|", row)[1] for row in rows]  # "\|" inside a cell is not a column
    return {flag for cell in first_cells for flag in FLAG.findall(cell) if not flag.startswith("--no-")}


def help_flags(command: str) -> set[str]:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return {f for f in FLAG.findall(result.output) if f != "--help" and not f.startswith("--no-")}


@pytest.mark.parametrize("command", ["run", "tune", "bench"])
def test_readme_option_table_and_help_agree(command):
    documented, offered = readme_flags(command), help_flags(command)
    assert documented == offered, {"only in README": documented - offered, "only in --help": offered - documented}
