"""The mutation check's mechanism, on a module of its own written in tmp_path: a mutation lands inside the
definition it names and nowhere else, an entry whose definition, text or tests are gone is stale (and says where
its text went), and the mutated file is restored whatever the test run does. The entries themselves follow the
code (`tools/mutation_check.py --dry-run`); no test here reads them, so moving code never fails a test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FIXTURE = """\
import functools

LIMIT = 1
LIMIT = 2
SIZES = {"small": 1, "large": 2}


def doubled(x):
    return x + x


class Box:
    @functools.cache
    def doubled(self, x):
        return x + x

    def tripled(self, x):
        total = x + x + x
        return total
"""
TEST = """\
from pkg.fixture import doubled


def test_doubled():
    assert doubled(3) == 6
"""


@pytest.fixture(scope="module")
def tool():
    """tools/mutation_check.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "tools" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture
def tree(tmp_path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "fixture.py").write_text(FIXTURE)
    (tmp_path / "test_fixture.py").write_text(TEST)
    return tmp_path


def mutation(tool, at: str, original: str = "return x + x", mutated: str = "return x * x", tests=("test_fixture.py",)):
    return tool.Mutation("m", at, original, mutated, "the promise", tests)


def run_pytest(tool, root: Path):
    return lambda tests: tool.pytest_in(root, tests, tool.child_env(root, root / "cache"), timeout=120)


def test_a_mutation_changes_its_definition_and_nothing_else(tool):
    method = tool.mutate(FIXTURE, mutation(tool, "pkg/fixture.py::Box.doubled", "    return x + x\n", "    return 0\n"))
    in_method = "    def doubled(self, x):\n        return {}\n"
    assert method == FIXTURE.replace(in_method.format("x + x"), in_method.format("0"))
    function = tool.mutate(FIXTURE, mutation(tool, "pkg/fixture.py::doubled"))
    assert function == FIXTURE.replace("return x + x", "return x * x", 1)
    assigned = tool.mutate(FIXTURE, mutation(tool, "pkg/fixture.py::SIZES", "2", "3"))
    assert assigned == FIXTURE.replace('"large": 2', '"large": 3')


def test_an_entry_whose_definition_text_or_tests_are_gone_is_stale(tool, tree, capsys):
    gone = {
        "pkg/fixture.py::halved": "no pkg/fixture.py::halved",
        "pkg/other.py::doubled": "pkg/other.py does not exist",
        "pkg/fixture.py::LIMIT": "LIMIT is defined 2 times in pkg/fixture.py",
        "pkg/fixture.py::Box.tripled.total": "no pkg/fixture.py::Box.tripled.total",  # a local is no anchor
    }
    for at, why in gone.items():
        assert tool.check(mutation(tool, at), tree, None) == ("STALE", why)
    assert tool.check(mutation(tool, "pkg/fixture.py::doubled", "x - x"), tree, None)[0] == "STALE"
    assert tool.check(mutation(tool, "pkg/fixture.py::Box.tripled", "+ x", "- x"), tree, None) == (
        "STALE",
        "the text is 2 times in pkg/fixture.py::Box.tripled",
    )
    no_test = mutation(tool, "pkg/fixture.py::doubled", tests=("test_fixture.py::test_halved",))
    assert tool.check(no_test, tree, None) == ("STALE", "no test test_fixture.py::test_halved")
    no_file = mutation(tool, "pkg/fixture.py::doubled", tests=("test_halved.py",))
    assert tool.check(no_file, tree, None) == ("STALE", "no test test_halved.py")
    assert tool.check(mutation(tool, "pkg/fixture.py::doubled"), tree, None) == ("applies", "not run")

    assert tool.verdicts([mutation(tool, "pkg/fixture.py::halved", "return x + x\n")], tree, None) == 1
    said = capsys.readouterr().out
    assert "the text is now in pkg/fixture.py::doubled, pkg/fixture.py::Box.doubled\n" in said
    assert said.strip().endswith("0/1 applies; stale: m")
    local = mutation(tool, "pkg/fixture.py::gone", "total = x")
    assert tool.whereabouts(local, tree) == ["pkg/fixture.py::Box.tripled"]  # not the local Box.tripled.total


def test_a_mutation_that_does_not_compile_is_broken(tool, tree):
    verdict, detail = tool.check(mutation(tool, "pkg/fixture.py::doubled", mutated="return x +"), tree, None)
    assert verdict == "BROKEN" and "does not compile" in detail


def test_a_caught_or_surviving_mutation_leaves_its_file_as_it_was(tool, tree):
    verdict, detail = tool.check(mutation(tool, "pkg/fixture.py::doubled"), tree, run_pytest(tool, tree))
    assert (verdict, detail.split()[-1]) == ("caught", "test_fixture.py::test_doubled")
    assert (tree / "pkg" / "fixture.py").read_text() == FIXTURE
    assert tool.check(mutation(tool, "pkg/fixture.py::Box.doubled"), tree, run_pytest(tool, tree))[0] == "SURVIVED"
    assert (tree / "pkg" / "fixture.py").read_text() == FIXTURE


def test_the_file_is_restored_when_the_test_run_is_interrupted(tool, tree):
    def interrupted(tests):
        assert (tree / "pkg" / "fixture.py").read_text() != FIXTURE  # the bug is in place while the tests run
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tool.check(mutation(tool, "pkg/fixture.py::doubled"), tree, interrupted)
    assert (tree / "pkg" / "fixture.py").read_text() == FIXTURE


def test_tests_that_select_nothing_make_the_entry_stale(tool, tree):
    nothing = mutation(tool, "pkg/fixture.py::doubled", tests=("test_fixture.py", "-k", "halved"))
    assert tool.check(nothing, tree, run_pytest(tool, tree))[0] == "STALE"
    assert (tree / "pkg" / "fixture.py").read_text() == FIXTURE
