"""Test modules stand alone: none imports another (issue 27, item 6).

What more than one module uses lives in conftest.py or in a helper module beside it
(fake_sql_server, earlier_tool, simulator_client, hostile, ...), whose name does not start with
``test_``. A test module imported by another would be collected twice over and would run its own
fixtures and module-level skips in a module that did not ask for them.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def imported_test_modules(source: str) -> list[str]:
    """The test modules ``source`` imports, at any depth: ``import test_x``, ``from test_x import ...``,
    ``from tests.test_x import ...``, ``from tests import test_x`` and ``importlib.import_module("test_x")``."""
    found: list[str] = []

    def is_test_module(dotted: str) -> bool:
        return dotted.rsplit(".", 1)[-1].startswith("test_")

    def called(call: ast.Call) -> str:
        func = call.func
        return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if is_test_module(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if is_test_module(module):
                found.append(module)
            else:  # from tests import test_x; from . import test_x
                found += [f"{module}.{a.name}".lstrip(".") for a in node.names if a.name.startswith("test_")]
        elif (
            isinstance(node, ast.Call)
            and called(node) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and is_test_module(node.args[0].value)
        ):
            found.append(node.args[0].value)
    return found


def test_the_check_finds_every_way_of_importing_a_test_module() -> None:
    source = """
import test_tsql
import tests.test_tsql as t
from test_tsql import FakePyodbc
from tests.test_sql_server import connect
from tests import test_postgres
from . import test_leaks


def later():
    from test_db_faults import end_session
    import importlib
    importlib.import_module("test_switch_over")
"""
    assert sorted(imported_test_modules(source)) == [
        "test_db_faults",
        "test_leaks",
        "test_switch_over",
        "test_tsql",
        "test_tsql",
        "tests.test_postgres",
        "tests.test_sql_server",
        "tests.test_tsql",
    ]
    helpers = "from conftest import Staging\nfrom fake_sql_server import FakePyodbc\nimport earlier_tool\n"
    assert imported_test_modules(helpers) == []


def test_no_test_module_or_benchmark_imports_a_test_module() -> None:
    files = sorted(TESTS.glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
    offenders = {
        str(path.relative_to(REPO)): imported
        for path in files
        if (imported := imported_test_modules(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}, "move what they share into tests/conftest.py or a helper module beside it"
