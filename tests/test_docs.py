"""The documentation stays true to the code: docs/cli.md is what the command line says of itself today, it lists
every command and option with its choices, the README links every docs page once, and every relative link
in the README and docs/ leads to a file and heading that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import typer

from archbench.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def generator():
    """tools/cli_reference.py, imported from its file (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "tools" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    tool = generator()
    assert tool.PAGE == DOCS / "cli.md"
    assert tool.PAGE.read_text(encoding="utf-8") == tool.reference(), (
        f"docs/cli.md differs from what the command line says; regenerate it with: {tool.REGENERATE}"
    )


def test_cli_reference_lists_every_command_and_option():
    """Each command is a section of the page, and each of its options a row naming every flag and choice."""
    tool = generator()
    page = tool.reference()
    root = typer.main.get_command(app)
    sections = 0
    for ctx, command in tool.commands(root, typer.Context(root, info_name="archbench")):
        start = page.index(f"## `{ctx.command_path}`\n")
        section = page[start : page.find("\n## ", start + 1)]
        for param in command.params:
            if "--help" in getattr(param, "opts", ()):
                continue
            row = next(line for line in section.splitlines() if line.startswith(f"| {tool.cell(tool.names(param))} |"))
            flags = [*param.opts, *param.secondary_opts] if param.param_type_name == "option" else []
            assert all(f"`{flag}`" in row for flag in flags), row
            assert all(f"`{choice}`" in row for choice in tool.choices(param)), row
        sections += 1
    assert sections >= 9  # archbench, list, run, tune, bench, report, status, data, prepare, synth


def test_cli_reference_states_choices_and_defaults():
    tool = generator()
    run = tool.reference().split("## `archbench run`")[1]
    assert "| `--precision` | `auto`, `fp32`, `bf16`, `fp16` | `auto` |" in run
    assert "| `--seed` | `INT` (repeatable) | `0` |" in run
    assert "| `--compile`, `--no-compile` |  | off |" in run
    assert "Environment variable: `ARCHBENCH_TENSORBOARD`." in run


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def links(path: Path) -> list[str]:
    """The link targets of a Markdown file, outside code blocks."""
    return LINK.findall(FENCE.sub("", path.read_text(encoding="utf-8")))


def anchors(path: Path) -> set[str]:
    """The heading anchors GitHub makes for a Markdown file: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


README_LINES = 300  # a newcomer reads it in five minutes; the reference lives in docs/


def test_the_readme_stays_short():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_LINES, f"README.md is {lines} lines: move reference text to docs/"


def test_readme_links_each_docs_page_once():
    readme = [target for target in links(ROOT / "README.md") if target.startswith("docs/")]
    named = {f"docs/{page.name}" for page in pages()}
    assert sorted(set(readme)) == sorted(readme), "a docs page linked twice from the README"
    assert named <= set(readme), named - set(readme)
    index = {f"docs/{target}" for target in links(DOCS / "README.md")}
    assert named - {"docs/README.md"} <= index, "a docs page missing from the docs index"


@pytest.mark.parametrize("path", [ROOT / "README.md", *pages()], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    for target in links(path):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.name}: {target} links to a missing file"
        if anchor:
            assert anchor in anchors(linked), f"{path.name}: {target} links to a missing heading"
