"""The typed command boundary: every command takes the one :class:`Context`, which stands below
every room that has commands, and the parser is one small function per command."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from api_pipeline.cli import credentials, diagnostics, parser, status
from api_pipeline.job import runner
from api_pipeline.rehearsal import demo
from api_pipeline.settings.context import Context

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "api_pipeline"

# Every function a command's handler hands the context to, in each room that has commands.
COMMAND_FUNCTIONS = [
    runner.run_command,
    runner.validate_command,
    demo.run_demo,
    status.status_command,
    credentials.set_secret_command,
    diagnostics.init_db,
    diagnostics.test_db,
    diagnostics.test_schema,
    diagnostics.test_endpoint,
]


def _parameters(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                yield node, arg


def test_no_function_in_the_package_takes_an_untyped_context():
    untyped = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for function, arg in _parameters(ast.parse(path.read_text(encoding="utf-8"))):
            if arg.arg != "ctx":
                continue
            annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
            if annotation in ("", "Any", "typing.Any", "object"):
                untyped.append(f"{path.relative_to(REPO)}:{function.lineno} {function.name}(ctx: {annotation or '?'})")
    assert untyped == []


@pytest.mark.parametrize("function", COMMAND_FUNCTIONS, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_each_command_takes_the_context(function):
    assert typing.get_type_hints(function)["ctx"] is Context


def test_every_handler_the_parser_dispatches_to_takes_args_and_the_context():
    handlers = {
        name: sub.get_default("func") for name, sub in _subcommands(parser.build_parser()).items() if sub is not None
    }
    assert handlers, "the parser has no commands"
    for name, handler in handlers.items():
        hints = typing.get_type_hints(handler)
        assert (hints["args"], hints["ctx"], hints["return"]) == (argparse.Namespace, Context, int), name


def _subcommands(built: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in built._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_each_command_is_one_small_function_that_adds_it_alone():
    """One function per command: each adds exactly one command (its aliases aside), none twice."""
    added: list[str] = []
    for add_command in parser.COMMANDS:
        bare = argparse.ArgumentParser(add_help=False)
        commands = parser.Commands(bare.add_subparsers(dest="command"), argparse.ArgumentParser(add_help=False))
        add_command(commands)
        names = {id(sub): name for name, sub in _subcommands(bare).items()}
        assert len(names) == 1, f"{add_command.__name__} adds {sorted(names.values())}"
        added.extend(names.values())
    assert len(added) == len(set(added))
    assert set(added) <= set(_subcommands(parser.build_parser()))


def test_the_context_imports_no_room_that_has_commands():
    """Importing the context loads neither the command line, the job nor the rehearsal: it stands below them."""
    code = (
        "import sys, api_pipeline.settings.context; "
        "print(sorted(m for m in sys.modules if m.startswith(('api_pipeline.cli', 'api_pipeline.job', "
        "'api_pipeline.rehearsal', 'api_pipeline.dfe', 'api_pipeline.store'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
