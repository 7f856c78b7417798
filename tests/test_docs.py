"""The documentation cannot drift from the code (DESIGN §11).

These run in the ordinary test suite without MkDocs: they call the same generator module the
docs build uses (tools/docs/docgen.py) and read the hand-written pages. The full build (site,
PDF, diagrams in a browser) is .ci/docs.sh.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from api_pipeline.errors import ExitCode
from conftest import reference_dir, reference_missing

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SHARED_SAMPLES = reference_dir() / "samples"


def _load_docgen():
    spec = importlib.util.spec_from_file_location("docgen", REPO / "tools" / "docs" / "docgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docgen"] = module
    spec.loader.exec_module(module)
    return module


docgen = _load_docgen()
PAGES = sorted(DOCS.glob("*.md"))
PROGRAMS = ("csc_api_pipeline.exe", "csc-api-pipeline", "python -m api_pipeline", "./release.sh")


def _inline_code(text: str) -> list[str]:
    """Inline code spans of a page, outside fenced blocks."""
    text = re.sub(r"^(\s*)(```|~~~).*?^\1\2", "", text, flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", text)


# ---------------------------------------------------------------------------
# help text and the generated reference
# ---------------------------------------------------------------------------


def test_every_command_option_and_setting_has_help_text():
    assert docgen.help_problems() == []


def test_cli_reference_names_every_command_alias_and_option():
    page = docgen.cli_reference()
    commands = docgen.commands()
    assert {c.name for c in commands} >= {"run", "test-endpoint", "test-db", "test-schema", "demo"}
    for command in commands:
        assert f"### `{command.name}`" in page
        for alias in command.aliases:
            assert f"`{alias}`" in page
    for option in docgen.option_strings():
        assert option in page, option


def test_cli_reference_lists_every_exit_code():
    listed = [code for code, _ in docgen.exit_codes()]
    assert sorted(listed) == sorted(docgen.exit_code_values().values())
    page = docgen.cli_reference()
    for code in listed:
        assert f"| `{code}` |" in page


def test_configuration_reference_names_every_setting_and_alias():
    from api_pipeline.settings.config import OPTIONS

    page = docgen.config_reference()
    for option in OPTIONS:
        assert f"`{option.env}`" in page
        for alias in option.aliases:
            assert f"`{alias}`" in page
        if option.secret:
            assert f'id="setting-{option.env}"' in page


def test_settings_with_a_flag_name_it():
    flags = docgen.env_flags()
    assert "run --mode" in flags.get("USE_PARTIAL_PAYLOAD", [])
    assert "--log-dir" in flags.get("LOG_DIR", [])


def test_exit_codes_page_has_advice_for_every_code():
    page = (DOCS / "exit-codes.md").read_text(encoding="utf-8")
    rows = {int(m.group(1)) for m in re.finditer(r"^\|\s*(\d+)\s*\|", page, re.M)}
    assert set(vars(ExitCode).get(name) for name in docgen.exit_code_values()) <= rows


# ---------------------------------------------------------------------------
# the catalogue of messages
# ---------------------------------------------------------------------------


def test_message_catalogue_covers_each_kind_of_failure():
    groups = {m.group for m in docgen.messages()}
    assert {"settings", "database", "auth", "api", "network", "token", "invalid", "log"} <= groups
    text = docgen.messages_markdown()
    assert "AADSTS7000222" in text and "AADSTS7000215" in text
    assert "CA\\_BUNDLE" in text  # the TLS advice
    assert "⟨" not in text and "⟩" not in text  # every placeholder was rendered


def test_aadsts_table_has_advice_for_expired_and_wrong_secret():
    advice = docgen.aadsts_advice()
    assert "CLIENT_SECRET" in advice["7000222"]
    assert "CLIENT_SECRET" in advice["7000215"]


# ---------------------------------------------------------------------------
# the worked example (DESIGN §5)
# ---------------------------------------------------------------------------


def test_worked_example_delta_is_the_one_design_describes():
    example = docgen.worked_example()
    delta, updated = example["delta"], example["updated"]
    assert delta["la_child_id"] == "Child5234"
    assert delta["mis_child_id"] == "Supplier-Child-5234"
    assert delta["child_details"] == updated["child_details"]
    assert "expected_date_of_birth" not in delta["child_details"]
    (episode,) = delta["social_care_episodes"]
    assert episode["social_care_episode_id"] == "43423"
    assert [w["worker_id"] for w in episode["care_worker_details"]] == ["X1111111", "Y2222222"]
    removed = example["delta_plan_removed"]["social_care_episodes"][0]["child_protection_plans"]
    assert removed == [{"child_protection_plan_id": example["plan"]["child_protection_plan_id"], "purge": True}]
    assert example["purge"] == {"la_child_id": "Child5234", "mis_child_id": "Supplier-Child-5234", "purge": True}


@pytest.mark.parametrize("name", ["record4_previous_json_payload.json", "record4_updated_pending.json"])
def test_worked_example_files_are_the_reference_samples(name):
    if not SHARED_SAMPLES.is_dir():
        pytest.skip(reference_missing("The staging SQL's sample rows"))
    ours = json.loads((DOCS / "examples" / name).read_text(encoding="utf-8"))
    assert ours == json.loads((SHARED_SAMPLES / name).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------
# the pages themselves
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_generated_section_of_every_page_builds(page):
    expanded = docgen.expand(page.read_text(encoding="utf-8"))
    assert "<!--" not in expanded or not docgen.MARKER.search(expanded)


def test_every_page_is_in_the_navigation_and_every_nav_entry_exists():
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    nav = set(re.findall(r"^\s+- [^:]+:\s+([\w./-]+\.md)\s*$", config, re.M))
    assert nav == {p.name for p in PAGES}


def test_the_mermaid_diagrams_the_issue_asks_for_are_on_how_it_works():
    page = (DOCS / "how-it-works.md").read_text(encoding="utf-8")
    kinds = re.findall(r"^```mermaid\n(?:---\n.*?\n---\n)?(\w+)", page, re.M | re.S)
    assert kinds == ["flowchart", "sequenceDiagram", "stateDiagram"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_settings_and_options_named_in_prose_exist(page):
    """A hand-written page may not name a setting, option or command the program lacks."""
    known_settings = set(docgen.setting_names()) | {"USER_SERVER", "USER_DATABASE"}
    known_options = set(docgen.option_strings()) | {"--help", "--version"}
    known_commands = {name for c in docgen.commands() for name in (c.name, *c.aliases)}
    release_flags = docgen.release_flags()  # documented on releasing.md
    text = page.read_text(encoding="utf-8")
    for span in _inline_code(text):
        for word in re.findall(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b", span):
            if span.strip() == word or "=" in span:
                assert word in known_settings, f"{page.name}: `{span}` names no setting"
        first = span.split()[0]
        ours = first.startswith("-") or first in known_commands or first in PROGRAMS
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", span) if ours else []:
            allowed = known_options | (release_flags if page.name == "releasing.md" else set())
            assert option in allowed, f"{page.name}: `{span}` names no option"
    for program in PROGRAMS:
        for command in re.findall(rf"{re.escape(program)}(?: --env-file \S+)? ([a-z][a-z-]+)", text):
            assert command in known_commands, f"{page.name}: {program} {command} is not a command"


def test_releasing_page_shows_release_script_usage():
    usage = docgen.release_usage()
    if (REPO / "release.sh").is_file():
        assert "./release.sh X.Y.Z" in usage
        assert {"--exe", "--no-push"} <= docgen.release_flags()
    else:
        assert "no `release.sh`" in usage


# ---------------------------------------------------------------------------
# A Windows admin's install (issue 26, item 9)
# ---------------------------------------------------------------------------


def _words(page: str) -> str:
    return " ".join((DOCS / page).read_text(encoding="utf-8").split())


def test_security_says_what_an_unsigned_exe_means_and_what_it_can_do():
    text = _words("security.md")
    assert "## The program is not signed" in text
    for needed in (
        "SmartScreen",
        "More info",
        "Run anyway",
        "Unblock-File",
        "Unblock",
        "false positive",
        "PyInstaller",
    ):
        assert needed in text, needed
    assert "SHA256SUMS" in text and "Get-FileHash" in text and "certutil -hashfile" in text
    assert "Allow it by its hash" in text and "Allow it by its path" in text


def test_the_install_steps_point_at_the_unsigned_exe_and_at_log_dir_under_program_files():
    for page in ("getting-started.md", "scheduling.md"):
        text = _words(page)
        assert "security.md#the-program-is-not-signed" in text, page
        assert "SHA256SUMS" in text and "nblock" in text, page
        assert "C:\\Program Files" in text and "LOG_DIR" in text, page


def test_scheduling_names_every_file_a_run_writes():
    text = _words("scheduling.md")
    assert "Each `run` writes three files" in text
    for suffix in (".log`", ".summary.json`", ".report.html`"):
        assert f"csc_api_pipeline_<time>{suffix}" in text, suffix
