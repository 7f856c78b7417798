"""One declaration per setting: a row of ``Settings`` is its field, default, parser and help at once.

Adding a setting used to need an ``Option`` row and a ``Settings`` field with its default written
again; a row without its field passed every test and then failed every command with a TypeError.
These tests add a setting as one row and load it through the real loader, and check that no
default or option is declared anywhere else.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from api_pipeline.errors import ConfigError
from api_pipeline.settings import config
from api_pipeline.settings.config import OPTIONS, Secret, Settings, load_settings
from api_pipeline.settings.options import OPTION, Option, parse_credential, parse_non_negative_int, setting

PACKAGE = Path(config.__file__).resolve().parents[1]

FULL = {
    "DB_CONNECTION_STRING": "sqlite:///staging.db",
    "API_ENDPOINT": "https://api.example.invalid/children-in-social-care-data-receiver-test/1",
    "LA_CODE": "846",
    "TOKEN_ENDPOINT": "https://login.example.invalid/tenant/oauth2/v2.0/token",
    "CLIENT_ID": "client-id-for-tests",
    "CLIENT_SECRET": "client-secret-for-tests",
    "SCOPE": "api://example/.default",
    "SUPPLIER_KEY": "supplier-key-for-tests",
}


@dataclasses.dataclass(frozen=True)
class _WithTwoMore(Settings):
    """Settings as they would read with two settings added, one row each and nothing else."""

    pause_between_batches: int = setting(
        "PAUSE_BETWEEN_BATCHES",
        "Seconds to wait between two batches.",
        default=7,
        parse=parse_non_negative_int,
        aliases=("BATCH_PAUSE",),
        needed_for=frozenset({"validate"}),
    )
    partner_key: Secret | None = setting("PARTNER_KEY", "A partner's key.", parse=parse_credential, secret=True)


@pytest.fixture
def two_more(monkeypatch: pytest.MonkeyPatch) -> type[_WithTwoMore]:
    monkeypatch.setattr(config, "Settings", _WithTwoMore)
    return _WithTwoMore


def test_a_setting_added_as_one_row_is_read_from_the_environment(two_more: type[_WithTwoMore]) -> None:
    loaded = load_settings(command="run", environ={**FULL, "PAUSE_BETWEEN_BATCHES": "3", "PARTNER_KEY": "pk-12345"})
    assert isinstance(loaded, two_more)
    assert loaded.pause_between_batches == 3
    assert loaded.partner_key == Secret("pk-12345")
    assert Secret("pk-12345") in loaded.secrets()  # secret=True in its row: masked like every secret
    assert loaded.replace(batch_size=5).pause_between_batches == 3


def test_a_setting_added_as_one_row_has_its_default_and_its_alias(two_more: type[_WithTwoMore]) -> None:
    assert load_settings(command="run", environ=FULL).pause_between_batches == 7
    assert load_settings(command="run", environ={**FULL, "BATCH_PAUSE": "11"}).pause_between_batches == 11


def test_a_setting_added_as_one_row_is_read_from_the_env_file(two_more: type[_WithTwoMore], tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PAUSE_BETWEEN_BATCHES=4\n", encoding="utf-8")
    loaded = load_settings(command="run", environ=FULL, env_file=env_file, cwd=tmp_path)
    assert loaded.pause_between_batches == 4
    assert loaded.warnings == ()  # a name of the new row is a setting, not a misspelling


def test_a_setting_added_as_one_row_is_checked_and_reported(two_more: type[_WithTwoMore]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(command="validate", environ={**FULL, "PARTNER_KEY": "pk\u200b-12345"})
    problems = caught.value.problems
    assert any(p.startswith("PAUSE_BETWEEN_BATCHES: not set") for p in problems)  # needed_for names validate
    assert any(p.startswith("PARTNER_KEY: <hidden> contains an invisible character") for p in problems)
    with pytest.raises(ConfigError, match="PAUSE_BETWEEN_BATCHES: '-1' must be zero or more"):
        load_settings(command="run", environ={**FULL, "PAUSE_BETWEEN_BATCHES": "-1"})


def test_every_option_is_a_field_of_settings_with_the_same_default() -> None:
    by_name = {each.name: each for each in dataclasses.fields(Settings)}
    assert [option.attr for option in OPTIONS] == [name for name, f in by_name.items() if OPTION in f.metadata]
    assert set(by_name) - {option.attr for option in OPTIONS} == {"env_file", "warnings"}
    for option in OPTIONS:
        assert by_name[option.attr].default is option.default, option.env
        assert by_name[option.attr].metadata[OPTION].env == option.env
    Settings(**{option.attr: option.default for option in OPTIONS})  # every row has a field to fill


def _defaults_declared(tree: ast.AST) -> list[str]:
    """Where ``tree`` declares a setting's default: a ``default=`` given to ``Option`` or ``setting``,
    or a field of a ``Settings`` class given a plain value rather than its row."""
    found = []
    for node in ast.walk(tree):
        is_declaration = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        if is_declaration and node.func.id in {"Option", "setting"} and any(k.arg == "default" for k in node.keywords):
            found.append(f"{node.func.id}(...) on line {node.lineno}")
        if isinstance(node, ast.ClassDef) and node.name == "Settings":
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    value = statement.value
                    is_row = isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                    if not (is_row and value.func.id in {"setting", "field"}):  # type: ignore[union-attr]
                        found.append(f"Settings.{statement.target.id} on line {statement.lineno}")
    return found


def test_each_default_is_written_once_in_its_row() -> None:
    """No module but config.py declares a default (the Settings rows), and there each row is a
    ``setting(...)``: a default written a second time, in an Option row or a bare field, fails."""
    declared = {
        path.relative_to(PACKAGE).as_posix(): _defaults_declared(ast.parse(path.read_text(encoding="utf-8")))
        for path in PACKAGE.rglob("*.py")
    }
    declared = {path: where for path, where in declared.items() if where}
    settings_rows = declared.pop("settings/config.py")
    assert list(declared) == ["settings/options.py"] and len(declared["settings/options.py"]) == 1  # in setting()
    assert all(where.startswith("setting(...)") for where in settings_rows), settings_rows
    assert len(settings_rows) == sum(option.default is not None for option in OPTIONS)


def test_the_default_check_sees_a_default_written_twice() -> None:
    twice = ast.parse(
        "class Settings:\n"
        "    batch_size: int = 100\n"
        "    debug: bool = setting('DEBUG', 'Help.', default=False)\n"
        "ROWS = (Option('BATCH_SIZE', 'batch_size', 'Help.', default=100),)\n"
    )
    assert sorted(_defaults_declared(twice)) == [
        "Option(...) on line 4",
        "Settings.batch_size on line 2",
        "setting(...) on line 3",
    ]


def test_an_option_is_made_only_by_a_settings_row() -> None:
    option = OPTIONS[0]
    assert isinstance(option, Option) and option.attr == "db_connection_string"
    made = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Option"
    ]
    assert made == ["settings/options.py"]  # in setting(), the one maker of rows
