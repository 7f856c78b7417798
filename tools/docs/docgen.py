"""Reference pages generated from the code, so the documentation cannot drift from it.

Every function here returns Markdown built from the package itself: the command line from
``api_pipeline.cli.parser.build_parser()``, the settings from ``api_pipeline.settings.config.OPTIONS``, the
exit codes and their meanings from ``api_pipeline.errors.ExitCode`` (as the ``--help`` epilog), the worked delta
example from ``api_pipeline.dfe.payload.build_delta``, and the catalogue of messages from the
source of ``api_pipeline`` itself.

This module imports nothing from MkDocs: the MkDocs hook (``hooks.py``) calls it during a
build, and ``tests/test_docs.py`` calls it in the ordinary test run.
"""

from __future__ import annotations

import argparse
import ast
import copy
import functools
import importlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
EXAMPLES = DOCS / "examples"
PACKAGE = REPO / "api_pipeline"
WORKED_PREVIOUS = EXAMPLES / "record4_previous_json_payload.json"
WORKED_UPDATED = EXAMPLES / "record4_updated_pending.json"

# The three ways the tool is started (DESIGN §2); the reference shows the first.
PROGRAM_NAMES = ("csc_api_pipeline.exe", "csc-api-pipeline", "python -m api_pipeline")

_ENV_IN_HELP = re.compile(r"\bEnv: ([A-Z][A-Z0-9_]*)")


# ---------------------------------------------------------------------------
# Markdown helpers
# ---------------------------------------------------------------------------


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell: no pipes, no stray emphasis or HTML."""
    text = " ".join(str(text).split())
    for char in "\\`*_[]|":
        text = text.replace(char, "\\" + char)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def code(text: str) -> str:
    """An inline code span (text with backticks gets a wider fence)."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def json_block(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=2, ensure_ascii=False) + "\n```"


def anchor(kind: str, name: str) -> str:
    """A stable HTML id for a command, option or setting, e.g. ``setting-API_ENDPOINT``."""
    return f"{kind}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    aliases: tuple[str, ...]
    summary: str | None
    parser: argparse.ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    from api_pipeline.cli.parser import build_parser as real_build_parser

    parser = real_build_parser()
    _fixed_width(parser)
    return parser


def _fixed_width(parser: argparse.ArgumentParser) -> None:
    """Usage lines wrapped the same way on every machine, whatever the terminal width."""
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=88)  # type: ignore[assignment]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.formatter_class = parser.formatter_class


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def commands(parser: argparse.ArgumentParser | None = None) -> list[Command]:
    """Every command, in the order ``--help`` lists them, with its aliases and one-line help."""
    parser = parser or build_parser()
    subs = _subparsers(parser)
    if subs is None:
        return []
    found = []
    for choice in subs._choices_actions:
        name = choice.dest
        sub = subs.choices[name]
        aliases = tuple(other for other, p in subs.choices.items() if p is sub and other != name)
        found.append(Command(name, aliases, choice.help, sub))
    return found


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings and a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
    ]


def positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A command's positional arguments (``set-secret NAME``)."""
    return [
        a
        for a in parser._actions
        if not a.option_strings and a.help != argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)
    ]


def global_options(parser: argparse.ArgumentParser | None = None) -> list[argparse.Action]:
    return _visible(parser or build_parser())


def command_options(command: Command, parser: argparse.ArgumentParser | None = None) -> list[argparse.Action]:
    """A command's own options: the global ones it also accepts are documented once."""
    shared = {a.dest for a in global_options(parser)}
    return [a for a in _visible(command.parser) if a.dest not in shared]


def option_strings(parser: argparse.ArgumentParser | None = None) -> list[str]:
    """Every option string anywhere on the command line (``--dry-run``, ``-v``, ...)."""
    parser = parser or build_parser()
    found = [s for a in global_options(parser) for s in a.option_strings]
    for command in commands(parser):
        found += [s for a in command_options(command, parser) for s in a.option_strings]
    return found


def _invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._format_action_invocation(action)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:
        params = dict(vars(action), prog=parser.prog)
        text = text % params
    return text


def help_problems(parser: argparse.ArgumentParser | None = None) -> list[str]:
    """What lacks help text: commands, their descriptions, options and settings."""
    from api_pipeline.settings.config import OPTIONS

    parser = parser or build_parser()
    problems = []
    if not (parser.description or "").strip():
        problems.append("the program has no description")
    for action in global_options(parser):
        if not (action.help or "").strip():
            problems.append(f"global option {'/'.join(action.option_strings)} has no help")
    for command in commands(parser):
        if not (command.summary or "").strip():
            problems.append(f"command {command.name} has no one-line help")
        if not (command.parser.description or "").strip():
            problems.append(f"command {command.name} has no description")
        for action in command_options(command, parser):
            if not (action.help or "").strip():
                problems.append(f"option {command.name} {'/'.join(action.option_strings)} has no help")
    for option in OPTIONS:
        if not (option.help or "").strip():
            problems.append(f"setting {option.env} has no help")
    return problems


def env_flags(parser: argparse.ArgumentParser | None = None) -> dict[str, list[str]]:
    """Setting name -> the command-line flags whose help says ``Env: NAME``."""
    parser = parser or build_parser()
    found: dict[str, list[str]] = {}
    pairs = [("", a) for a in global_options(parser)]
    for command in commands(parser):
        pairs += [(command.name, a) for a in command_options(command, parser)]
    for command_name, action in pairs:
        for env in _ENV_IN_HELP.findall(action.help or ""):
            flag = max(action.option_strings, key=len)
            found.setdefault(env, []).append(f"{command_name} {flag}".strip())
    return found


def exit_codes() -> list[tuple[int, str]]:
    """(code, meaning) of every exit code, from ``errors.ExitCode`` as ``--help`` shows them."""
    from api_pipeline.errors import ExitCode

    return [(code.value, code.meaning) for code in ExitCode]


def exit_code_values() -> dict[str, int]:
    """Every code the tool defines (``errors.ExitCode``), by name."""
    from api_pipeline.errors import ExitCode

    return {code.name: code.value for code in ExitCode}


def _options_table(parser: argparse.ArgumentParser, actions: list[argparse.Action], command: str = "") -> str:
    rows = []
    for action in actions:
        name = action.option_strings[-1] if action.option_strings else str(action.metavar or action.dest)
        ident = anchor("option", f"{command} {name}".strip())
        meaning = cell(_help(parser, action))
        if (
            not action.option_strings
            and action.choices
            and not all(str(c) in (action.help or "") for c in action.choices)
        ):
            meaning += "<br>one of: " + ", ".join(code(str(c)) for c in action.choices)
        invocation = _invocation(parser, action) if action.option_strings else name
        rows.append([f'<span id="{ident}"></span>{code(invocation)}', meaning])
    return table(["argument" if actions and not actions[0].option_strings else "option", "what it does"], rows)


def cli_reference() -> str:
    """The whole command line, from ``build_parser()``."""
    parser = build_parser()
    program = PROGRAM_NAMES[0]
    out = [
        "## Synopsis",
        "",
        "```text",
        f"{program} [global options] COMMAND [options]",
        "```",
        "",
        "The same program is also installed as "
        + " and ".join(code(name) for name in PROGRAM_NAMES[1:])
        + "; the commands and options are identical. "
        + cell(parser.description or ""),
        "",
        "Running the program with no command is the same as `run` (so scheduled tasks set up for the "
        "earlier tool, which had no commands, keep sending); `--help` prints the help. Started by a "
        "double-click in Explorer, the exe waits for Enter before its window closes; never under Task "
        "Scheduler or in a console. `COMMAND --help` shows a command's own options.",
        "",
        "## Global options",
        "",
        "These work before or after the command name, with every command.",
        "",
        _options_table(parser, global_options(parser)),
        "",
        "## Commands",
        "",
    ]
    cmds = commands(parser)
    rows = []
    for command in cmds:
        label = f"[{code(command.name)}](#{anchor('command', command.name)})"
        if command.aliases:
            label += " (also " + ", ".join(code(a) for a in command.aliases) + ")"
        rows.append([label, cell(command.summary or "")])
    out += [table(["command", "what it does"], rows), ""]
    for command in cmds:
        usage = command.parser.format_usage().strip()
        usage = re.sub(r"^usage:\s*", "", usage)
        out += [
            f"### `{command.name}` {{ #{anchor('command', command.name)} }}",
            "",
            cell(command.parser.description or command.summary or ""),
            "",
        ]
        if command.aliases:
            out += ["Also accepted as " + ", ".join(code(a) for a in command.aliases) + ".", ""]
        out += ["```text", usage, "```", ""]
        arguments = positionals(command.parser)
        if arguments:
            out += [_options_table(parser, arguments, command.name), ""]
        own = command_options(command, parser)
        if own:
            out += [_options_table(parser, own, command.name), ""]
        else:
            out += ["This command has no options of its own; it accepts the global options.", ""]
        if command.name == "status":
            out += ["Its `--json` keys are listed [below](#status-json).", ""]
    out += [
        "## `status --json` { #status-json }",
        "",
        "`status --json` prints one JSON object for monitoring tools. Its keys (a `[]` marks a list of "
        "objects, each with the keys below it):",
        "",
        status_json_keys(),
        "",
        "## Exit codes",
        "",
        "Every command ends with one of these codes (Windows Task Scheduler shows it as the "
        "task's *Last Run Result*). [Exit codes](exit-codes.md) says what to do about each.",
        "",
        table(["code", "meaning"], [[code(str(c)), cell(meaning)] for c, meaning in exit_codes()]),
    ]
    return "\n".join(out)


def status_json_keys() -> str:
    """The ``status --json`` keys and what each means, from ``status.STATUS_JSON_KEYS``."""
    from api_pipeline.cli.status_report import STATUS_JSON_KEYS

    return table(["key", "what it is"], [[code(key), cell(meaning)] for key, meaning in STATUS_JSON_KEYS.items()])


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


def _default(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return code("true" if value else "false")
    if isinstance(value, float) and value.is_integer():
        return code(str(int(value)))
    return code(str(value))


def setting_names() -> list[str]:
    from api_pipeline.settings.config import OPTIONS

    return [name for option in OPTIONS for name in (option.env, *option.aliases, *_fallbacks(option))]


def _fallbacks(option: Any) -> tuple[str, ...]:
    """Older or more general names read only when nothing sets the setting itself."""
    return tuple(getattr(option, "fallbacks", ()))


def config_reference() -> str:
    """Every setting, from ``config.OPTIONS``."""
    from api_pipeline.settings.config import OPTIONS

    flags = env_flags()
    rows = []
    for option in OPTIONS:
        name = f'<span id="{anchor("setting", option.env)}"></span>{code(option.env)}'
        notes = []
        if option.aliases:
            notes.append("also read as " + ", ".join(code(a) for a in option.aliases))
        if _fallbacks(option):
            notes.append("when not set, " + ", ".join(code(a) for a in _fallbacks(option)) + " is read")
        if option.secret:
            notes.append("**secret**: never shown or logged")
        if option.env in flags:
            notes.append("flag: " + ", ".join(code(f) for f in flags[option.env]))
        meaning = cell(option.help) + ("<br>" + "; ".join(notes) if notes else "")
        needed = ", ".join(code(c) for c in sorted(option.needed_for)) if option.needed_for else "optional"
        rows.append([name, meaning, _default(option.default), needed])
    return table(["setting", "what it is", "default", "required for"], rows)


# ---------------------------------------------------------------------------
# Payloads: the worked example (DESIGN §5), built by the real code
# ---------------------------------------------------------------------------


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def worked_example() -> dict[str, Any]:
    """The record4 pair, the delta and full bodies the tool builds for it, and DfE's view after.

    Raises if the delta does not bring DfE's copy to the updated record: a docs build must
    not show an example that is wrong.
    """
    from api_pipeline.dfe.payload import build_delta, build_full, build_purge
    from api_pipeline.rehearsal.dfe_model import apply_record

    previous, updated = _load(WORKED_PREVIOUS), _load(WORKED_UPDATED)
    delta = build_delta(updated, previous)
    if delta is None:
        raise AssertionError("the worked example's records are equal: no delta")
    held = apply_record(previous, delta)
    if held != updated:
        raise AssertionError("applying the worked example's delta does not give the updated record")

    with_plan = copy.deepcopy(previous)
    plan = {"child_protection_plan_id": "CPP-7781", "start_date": "2023-05-02", "purge": False}
    with_plan["social_care_episodes"][0]["child_protection_plans"] = [plan]
    delta_plan_removed = build_delta(updated, with_plan)
    if delta_plan_removed is None or apply_record(with_plan, delta_plan_removed) != updated:
        raise AssertionError("the removed-plan variant of the worked example does not converge")
    return {
        "previous": previous,
        "updated": updated,
        "delta": delta,
        "full": build_full(updated, previous),
        "plan": plan,
        "delta_plan_removed": delta_plan_removed,
        "purge": build_purge(updated["la_child_id"], updated.get("mis_child_id")),
    }


def worked_example_markdown(part: str) -> str:
    """One JSON block of the worked example: ``previous``, ``updated``, ``delta``, ..."""
    example = worked_example()
    if part == "delta_plan_removed":
        episode = example[part]["social_care_episodes"][0]
        return json_block({"child_protection_plans": episode["child_protection_plans"]})
    if part == "plan":
        return json_block({"child_protection_plans": [example["plan"]]})
    return json_block(example[part])


def structure_markdown() -> str:
    """The parts of a record DfE merges separately (``payload.STRUCTURE``), in council words."""
    from api_pipeline.dfe.payload import RECORD, STRUCTURE

    where = {RECORD: "the child's record"}
    rows = []
    for level, children in STRUCTURE.items():
        inside = where.get(level, f"each item of {code(level)}")
        for key, id_key in children.items():
            if id_key is None:
                kind = 'a block: sent whole when anything in it changed; removed with `{"purge": true}`'
            else:
                kind = f"a list of items, each known by {code(id_key)}: only new, changed and removed items are sent"
            rows.append([code(key), inside, kind])
    return table(["part", "inside", "how changes are sent"], rows)


def dependencies_markdown() -> str:
    """The third-party Python packages the tool runs with, from pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python 3.10: the two lists are simple enough to read directly
        required, odbc = _toml_list(text, "dependencies"), _toml_list(text, "odbc")
    else:
        project = tomllib.loads(text)["project"]
        required, odbc = project.get("dependencies", []), project["optional-dependencies"].get("odbc", [])
    rows = [[code(req), "always"] for req in required]
    rows += [[code(req), "only with an ODBC connection string"] for req in odbc]
    return table(["package", "used"], rows)


def invalid_example() -> str:
    """The ``api_response`` of a row whose date of birth is not a date, as the validator words it."""
    from api_pipeline.dfe.schema import RecordValidator

    record = _load(WORKED_UPDATED)
    record["child_details"]["date_of_birth"] = "2005-02-30"
    reasons = RecordValidator.from_settings(None).errors(record)
    if not reasons:
        raise AssertionError("the bundled schema accepted an impossible date of birth")
    return "```text\ninvalid: " + "; ".join(reasons) + "\n```"


def _toml_list(text: str, key: str) -> list[str]:
    match = re.search(rf"^{key}\s*=\s*\[(.*?)\]", text, re.M | re.S)
    return re.findall(r'"([^"]+)"', match.group(1)) if match else []


# ---------------------------------------------------------------------------
# Database objects (what test-schema and a DBA need)
# ---------------------------------------------------------------------------


def ddl_markdown() -> str:
    """CREATE TABLE statements for the staging table, the ledger and the run lock table, per database system."""
    from api_pipeline.store import tables
    from api_pipeline.store.dialects import DIALECTS

    names = {"mssql": "SQL Server", "postgresql": "PostgreSQL", "sqlite": "SQLite"}
    table_name = "ssd_api_data_staging"
    out = []
    for dialect in DIALECTS.values():
        statements = [
            tables.staging_ddl(dialect, table_name),
            tables.ledger_ddl(dialect, tables.ledger_name(table_name)),
            tables.lock_ddl(dialect, tables.lock_table_name(table_name)),
        ]
        body = ";\n\n".join(_pretty_ddl(s) for s in statements) + ";"
        lang = "tsql" if dialect.name == "mssql" else "sql"
        out += [f"**{names[dialect.name]}**", "", f"```{lang}", body, "```", ""]
    return "\n".join(out)


def _pretty_ddl(statement: str) -> str:
    """One column per line, so the statement reads like a DBA would write it."""
    match = re.search(r"CREATE TABLE (?:IF NOT EXISTS )?\S+\s*\(", statement)
    if match is None or not statement.endswith(")"):
        return statement
    columns = [c.strip() for c in _split_columns(statement[match.end() : -1])]
    return statement[: match.end()] + "\n" + ",\n".join("    " + c for c in columns) + "\n)"


def _split_columns(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def staging_columns_markdown() -> str:
    from api_pipeline.store import columns as db

    rows = [[code(c), "required" if c in db.REQUIRED_COLUMNS else "optional"] for c in db.STAGING_COLUMNS]
    return table(["column", "the tool needs it"], rows)


# ---------------------------------------------------------------------------
# Every message the tool prints, read from its source
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    group: str
    text: str
    source: str


# Groups, in the order the catalogue shows them, with a line on where the message appears.
GROUPS: dict[str, str] = {
    "settings": "Settings (exit code 2). Printed as `error: ...` before anything is opened; fix the named "
    "setting in `.env` or the environment.",
    "database": "Database (exit code 3).",
    "auth": "Signing in to DfE (exit code 4).",
    "api": "Reaching DfE (exit code 5).",
    "lock": "Another run is working (exit code 6).",
    "records": "Records DfE rejected, and other run problems (exit code 1).",
    "network": "Network causes. These complete a `Cannot reach DfE: ...` or "
    "`Cannot reach the token endpoint: ...` message.",
    "token": "Token endpoint refusals. These complete a `Could not get a token: ...` message (exit code 4); "
    "the code in brackets is Microsoft's `AADSTS` number.",
    "invalid": "Why a record was not sent. Written to the row's `api_response` as `invalid: ...`; the row "
    "is marked `invalid` and the run ends with exit code 1.",
    "skipped": "Rows left for the council's SQL to fix. Written to the row's `api_response` as `not sent: ...`; "
    "the row's status is left as it was and it is looked at again next run.",
    "endpoint": "`test-endpoint` verdicts. Printed after `PASS` or `FAIL`.",
    "log": "Warnings in the log. Written to the console and the run's log file; the run carries on.",
}
_GROUP_BY_EXIT = {2: "settings", 3: "database", 4: "auth", 5: "api", 6: "lock", 1: "records"}
# Variable names in the source -> the words the catalogue shows in their place.
_FRIENDLY = {
    "exc": "details",
    "detail": "details",
    "summary": "DfE's answer",
    "explicit": "path",
    "parent": "folder",
    "id": "row id",
    "person_id": "la_child_id",
    "strerror": "reason",
    "place": "DfE or the token endpoint",
}


def _source_files() -> list[Path]:
    skip = {"__init__.py", "__main__.py", "entry_point.py"}
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name not in skip)


class _Namer:
    """Turns the expression inside ``{...}`` (or a logging argument) into a word for the reader.

    A module-level constant is shown as its value (``MAX_BATCH_SIZE`` -> ``100``).
    """

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, node: ast.expr) -> str:
        if isinstance(node, ast.Name):
            constant = getattr(self.module, node.id, None)
            if node.id.isupper() and isinstance(constant, (int, float, str)):
                return f"={constant}"
            name = node.id
        elif isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.Call) and node.args and _call_name(node) in {"str", "int", "repr", "join", "len"}:
            return self(node.args[0])
        elif isinstance(node, ast.BoolOp):
            return self(node.values[-1])
        else:
            return "…"
        name = _FRIENDLY.get(name, name)
        return name.strip("_").replace("_", " ") or "…"


_PLACEHOLDER = re.compile(r"\{(\w+)(?:![rsa])?\}")


def _named_text(node: ast.AST | None, namer: Callable[[ast.expr], str]) -> str | None:
    """The text a sentence named in another module stands for (``reasons.NO_CHILD_ID``), or a
    ``.format(...)`` of one, with ``⟨name⟩`` for each value it is given; None for anything else."""
    module = getattr(namer, "module", None)
    values: dict[str, str] = {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        values = {k.arg: namer(k.value) for k in node.keywords if k.arg}
        node = node.func.value
    if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr.isupper()):
        return None
    owner = getattr(module, node.value.id, None)
    constant = getattr(owner, node.attr, None) if owner is not None else None
    if not isinstance(constant, str):
        return None
    return _PLACEHOLDER.sub(lambda m: f"⟨{values.get(m.group(1), m.group(1))}⟩", constant)


def _text(node: ast.AST | None, namer: Callable[[ast.expr], str]) -> str | None:
    """A string literal or f-string as a template, with ``⟨name⟩`` for each value; a named sentence
    (``reasons.X``, ``reasons.X.format(...)``) is shown as its text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    named = _named_text(node, namer)
    if named is not None:
        return named
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                inner = _named_text(value.value, namer)
                parts.append(inner if inner is not None else f"⟨{namer(value.value)}⟩")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left, namer), _text(node.right, namer)
        if left is not None and right is not None:
            return left + right
    return None


_CONVERSION = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdfr]")


def _percent(text: str, args: list[ast.expr], namer: Callable[[ast.expr], str]) -> str:
    """A logging template with each ``%s``/``%d``/``%.1f`` replaced by the name of its argument."""
    names = iter([f"⟨{namer(a)}⟩" for a in args])
    return _CONVERSION.sub(lambda _: next(names, "⟨…⟩"), text)


def _literal_words(text: str) -> int:
    return len(re.findall(r"[A-Za-z]{2,}", re.sub(r"⟨[^⟩]*⟩", " ", text)))


def _error_classes(module: Any) -> dict[str, int]:
    from api_pipeline.errors import PipelineError

    found = {}
    for name, value in vars(module).items():
        if isinstance(value, type) and issubclass(value, PipelineError):
            found[name] = int(value.exit_code)
    return found


def _walk_functions(tree: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    """Every node with the name of the function it is in ("" at module level)."""

    def visit(node: ast.AST, function: str) -> Iterator[tuple[str, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            yield name, child
            yield from visit(child, name)

    yield from visit(tree, "")


def _call_name(node: ast.Call) -> str:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return ""


def _messages_in(path: Path) -> Iterator[Message]:
    from api_pipeline import errors

    try:
        module = importlib.import_module(".".join(("api_pipeline", *path.relative_to(PACKAGE).with_suffix("").parts)))
    except ImportError:  # an optional dependency missing: read the source all the same
        module = errors
    namer = _Namer(module)
    classes = {**_error_classes(errors), **_error_classes(module)}
    source = path.relative_to(PACKAGE).as_posix()
    for function, node in _walk_functions(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            name = _call_name(node)
            texts = [t for t in (_text(a, namer) for a in node.args) if t]
            first = texts[0] if texts else None
            if name in classes and first:
                yield Message(_GROUP_BY_EXIT.get(classes[name], "records"), first, source)
            elif name == "ValueError" and first and function.startswith("parse_") and source == "settings/options.py":
                yield Message("settings", f"⟨SETTING⟩: ⟨value⟩ {first}", source)
            elif name == "Invalid" and first:
                yield Message("invalid", first, source)
            elif name == "Skip" and first:
                yield Message("skipped", first, source)
            elif name == "EndpointCheck" and len(node.args) >= 3 and _text(node.args[2], namer):
                yield Message("endpoint", str(_text(node.args[2], namer)), source)
            elif name == "refused" and first:  # test-endpoint's failures (diagnostics._check_endpoint)
                yield Message("endpoint", first, source)
            elif name in {"warning", "error"} and isinstance(node.func, ast.Attribute) and _is_logger(node.func.value):
                template = _text(node.args[0], namer) if node.args else None
                if template:
                    yield Message("log", _percent(template, list(node.args[1:]), namer), source)
        elif isinstance(node, ast.Return) and function == "describe_network_error":
            value = node.value
            if isinstance(value, ast.Tuple) and len(value.elts) == 2 and _text(value.elts[1], namer):
                yield Message("network", str(_text(value.elts[1], namer)), source)
        elif isinstance(node, ast.Return) and function in {"_explain", "explain_token_error"}:
            text = _text(node.value, namer)
            if text:
                yield Message("invalid" if function == "_explain" else "token", text, source)


def messages() -> list[Message]:
    """Every operator-facing message in ``api_pipeline``'s source, grouped, without duplicates.

    Templates that are nothing but values (``HTTP {status}``) are left out: they only ever
    appear inside a longer message that is listed.
    """
    found = [m for path in _source_files() for m in _messages_in(path)]
    found += [Message("token", f"{text} (AADSTS{number})", "dfe/auth.py") for number, text in aadsts_advice().items()]
    seen: set[tuple[str, str]] = set()
    unique = []
    for message in found:
        key = (message.group, message.text)
        if key not in seen and _literal_words(message.text) >= 2:
            seen.add(key)
            unique.append(message)
    return unique


def _is_logger(node: ast.expr) -> bool:
    text = ast.unparse(node)
    return text in {"log", "logger", "self.logger", "self.log"} or text.startswith("logging.getLogger")


def aadsts_advice() -> dict[str, str]:
    """Microsoft sign-in error code -> the advice the tool prints for it."""
    from api_pipeline.dfe import auth

    return dict(getattr(auth, "_ADVICE", {}))


def _message_cell(text: str) -> str:
    """Escape the message, then show each ``⟨value⟩`` as an italic placeholder (constants as values)."""
    escaped = cell(text.replace("⟩⟨", "⟩ ⟨"))

    def show(match: re.Match[str]) -> str:
        word = match.group(1).strip() or "…"
        return word[1:] if word.startswith("=") else f"*{word}*"

    return re.sub(r"⟨([^⟩]*)⟩", show, escaped)


def messages_markdown(link_for: Callable[[str], str] | None = None) -> str:
    """The catalogue, one table per group. Words in *italics* stand for the actual value."""
    by_group: dict[str, list[Message]] = {}
    for message in messages():
        by_group.setdefault(message.group, []).append(message)
    out = []
    for group, intro in GROUPS.items():
        items = by_group.get(group)
        if not items:
            continue
        heading = intro.split(".")[0]
        out += [f"### {heading} {{ #messages-{group} }}", "", intro[len(heading) + 1 :].strip() or "", ""]
        if link_for is not None and link_for(group):
            out += [f"What to do: {link_for(group)}.", ""]
        rows = [[_message_cell(m.text), code(m.source)] for m in items]
        out += [table(["message", "from"], rows), ""]
    return "\n".join(out)


def aadsts_markdown() -> str:
    rows = [[code(f"AADSTS{c}"), cell(text)] for c, text in aadsts_advice().items()]
    return table(["code in the message", "what the tool tells you to do"], rows)


# ---------------------------------------------------------------------------
# Single values quoted in the prose (``<!-- value: module.NAME -->``)
# ---------------------------------------------------------------------------


def value(dotted: str) -> str:
    module, _, name = dotted.rpartition(".")
    result = getattr(importlib.import_module(module), name)
    if isinstance(result, timedelta):
        minutes = int(result.total_seconds() // 60)
        return f"{minutes // 60} hour{'s' if minutes != 60 else ''}" if minutes % 60 == 0 else f"{minutes} minutes"
    if isinstance(result, (set, frozenset)):
        return ", ".join(code(v) for v in sorted(result))
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    return str(result)


def setting_default(env: str) -> str:
    """A setting's built-in default, as plain text (``14400``, ``true``)."""
    from api_pipeline.settings.config import OPTIONS_BY_ENV

    default = OPTIONS_BY_ENV[env].default
    return _default(default).strip("`")


def release_usage() -> str:
    """The header comment of release.sh: its usage and steps, as its author keeps them."""
    script = REPO / "release.sh"
    if not script.is_file():
        return "!!! note\n    This version has no `release.sh` yet."
    lines = []
    for line in script.read_text(encoding="utf-8").splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "```text\n" + "\n".join(lines).strip("\n") + "\n```"


def release_flags() -> set[str]:
    script = REPO / "release.sh"
    text = script.read_text(encoding="utf-8") if script.is_file() else ""
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))


def summary_example() -> str:
    """What a run's ``.summary.json`` looks like, from the class that writes it."""
    from api_pipeline.job.run_files import RunSummary

    summary = RunSummary(run_id="20260301T020000.123Z-7f3a9c", mode="partial")
    summary.started_at, summary.finished_at, summary.seconds = "2026-03-01T02:00:00Z", "2026-03-01T02:03:12Z", 192.4
    summary.rows_read, summary.batches, summary.requests = 1460, 15, 16
    summary.outcomes.update({"sent": 1432, "purged": 12, "unchanged": 9, "invalid": 7})
    summary.exit_code, summary.bytes_sent = 1, 2_804_113
    data = summary.to_dict()
    # Fields filled during a real run, shown with typical values where this version has them.
    typical = {
        "invalid_reasons": {"schema: child_details.sex": 5, "schema: social_care_episodes[].referral_date": 2},
        "examples": {"schema: child_details.sex": [1042, 1187, 1420]},
        "retries": {"429": 1},
    }
    data.update({key: value for key, value in typical.items() if key in data})
    return json_block(data)


# ---------------------------------------------------------------------------
# The markers a page uses, and what each expands to
# ---------------------------------------------------------------------------

GENERATORS: dict[str, Callable[[], str]] = {
    "cli-reference": cli_reference,
    "config-reference": config_reference,
    "staging-columns": staging_columns_markdown,
    "ddl": ddl_markdown,
    "messages": lambda: messages_markdown(_troubleshooting_link),
    "aadsts": aadsts_markdown,
    "summary-example": summary_example,
    "structure": structure_markdown,
    "release-usage": release_usage,
    "example-invalid": invalid_example,
    "dependencies": dependencies_markdown,
    **{
        f"example-{part}": functools.partial(worked_example_markdown, part)
        for part in ("previous", "updated", "delta", "full", "plan", "delta_plan_removed", "purge")
    },
}

_SECTION_FOR_GROUP = {
    "settings": "settings",
    "database": "database",
    "auth": "signing-in-to-dfe",
    "token": "signing-in-to-dfe",
    "api": "reaching-dfe",
    "network": "reaching-dfe",
    "lock": "another-run-is-working",
    "records": "records-that-were-not-sent",
    "invalid": "records-that-were-not-sent",
    "skipped": "records-that-were-not-sent",
    "endpoint": "reaching-dfe",
}


def _troubleshooting_link(group: str) -> str:
    section = _SECTION_FOR_GROUP.get(group)
    return f"[the advice above](#{section})" if section else ""


MARKER = re.compile(r"<!--\s*(generate|value|include|default):\s*([\w.\-/]+)\s*-->")


def expand(markdown: str) -> str:
    """Replace every marker in a page with what it stands for. Unknown markers raise.

    A marker alone on an indented line (inside a list or a definition) has every line of
    its replacement indented the same way.
    """

    def generate(kind: str, name: str) -> str:
        if kind == "value":
            return value(name)
        if kind == "include":
            return include(name)
        if kind == "default":
            return setting_default(name)
        if name not in GENERATORS:
            raise KeyError(f"unknown generated section {name!r} (known: {', '.join(sorted(GENERATORS))})")
        return GENERATORS[name]()

    def replace(match: re.Match[str]) -> str:
        text = generate(match.group(1), match.group(2))
        line_start = markdown.rfind("\n", 0, match.start()) + 1
        indent = markdown[line_start : match.start()]
        if indent and not indent.strip():
            text = text.replace("\n", "\n" + indent)
        return text

    return MARKER.sub(replace, markdown)


def include(relative: str) -> str:
    """A repository file (e.g. CHANGELOG.md) without its first heading, links made absolute-safe."""
    path = (REPO / relative).resolve()
    if REPO not in path.parents:
        raise KeyError(f"{relative} is outside the repository")
    text = path.read_text(encoding="utf-8")
    return re.sub(r"\A# [^\n]*\n+", "", text)
