"""Settings: precedence, .env discovery, every problem at once, secrets hidden."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from api_pipeline.errors import ConfigError
from api_pipeline.settings.config import OPTIONS, Secret, Settings, load_settings
from api_pipeline.settings.envfile import find_env_file
from api_pipeline.store.tables import ledger_name

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


def test_full_environment_loads():
    s = load_settings(command="run", environ=FULL)
    assert s.la_code == "846"
    assert s.client_secret == Secret("client-secret-for-tests")
    assert s.use_partial_payload is True and s.batch_size == 100
    assert ledger_name(s.table_name) == "ssd_api_data_staging_ledger"


def test_every_missing_variable_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        load_settings(command="run", environ={})
    names = [p.split(":")[0] for p in caught.value.problems]
    assert names == [
        "DB_CONNECTION_STRING",
        "API_ENDPOINT",
        "LA_CODE",
        "TOKEN_ENDPOINT",
        "CLIENT_ID",
        "CLIENT_SECRET",
        "SCOPE",
        "SUPPLIER_KEY",
    ]
    assert caught.value.exit_code == 2


def test_bad_values_each_named():
    environ = FULL | {
        "LA_CODE": "84",
        "BATCH_SIZE": "101",
        "TABLE_NAME": "x; DROP TABLE y",
        "API_ENDPOINT": "http://dfe.example",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(command="run", environ=environ)
    text = str(caught.value)
    for name in ("LA_CODE", "BATCH_SIZE", "TABLE_NAME", "API_ENDPOINT"):
        assert name in text
    assert len(caught.value.problems) == 4


def test_plain_http_allowed_only_for_loopback():
    s = load_settings(command="run", environ=FULL | {"API_ENDPOINT": "http://127.0.0.1:8765/x"})
    assert s.api_endpoint == "http://127.0.0.1:8765/x"


def test_diagnostic_commands_need_only_their_settings():
    assert load_settings(command="test-db", environ={"DB_CONNECTION_STRING": "sqlite:///x.db"}).table_name
    with pytest.raises(ConfigError) as caught:
        load_settings(command="test-endpoint", environ={})
    assert "DB_CONNECTION_STRING" not in str(caught.value)
    load_settings(command="demo", environ={})


def test_precedence_flag_over_environment_over_file(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("BATCH_SIZE=10\nTABLE_NAME=from_file\nLA_CODE=111\n", encoding="utf-8")
    s = load_settings(command="demo", environ={"BATCH_SIZE": "20"}, env_file=env_file, overrides={"la_code": "222"})
    assert s.batch_size == 20  # environment beats file
    assert s.table_name == "from_file"  # file beats default
    assert s.la_code == "222"  # flag beats everything


def test_aliases_accepted():
    s = load_settings(command="test-db", environ={"SQL_CONN_STR": "sqlite:///a.db"})
    assert s.db_connection_string == Secret(f"sqlite:///{(Path.cwd() / 'a.db').as_posix()}")
    s = load_settings(command="test-db", environ={"USER_SERVER": "SQL01", "USER_DATABASE": "Reporting"})
    assert "Trusted_Connection=yes" in s.db_connection_string.reveal()


def test_env_file_discovery(tmp_path: Path):
    cwd, exe = tmp_path / "cwd", tmp_path / "exe"
    cwd.mkdir(), exe.mkdir()
    assert find_env_file(None, cwd, exe) is None
    (exe / ".env").write_text("X=1")
    assert find_env_file(None, cwd, exe) == exe / ".env"
    (cwd / ".env").write_text("X=1")
    assert find_env_file(None, cwd, exe) == cwd / ".env"
    with pytest.raises(ConfigError):
        find_env_file(tmp_path / "nope.env", cwd, exe)


def test_secrets_hidden_in_repr_and_logs(caplog):
    s = load_settings(command="run", environ=FULL | {"DB_CONNECTION_STRING": "Driver=x;UID=u;PWD=db-password-123"})
    text = repr(s) + str(s)
    for secret in ("client-secret-for-tests", "supplier-key-for-tests", "db-password-123"):
        assert secret not in text
    assert "<hidden>" in text
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("settings: %s", s)
    assert "client-secret-for-tests" not in caplog.text


def test_secret_values_not_echoed_in_errors():
    with pytest.raises(ConfigError) as caught:
        load_settings(command="run", environ=FULL | {"BATCH_SIZE": "x"})
    assert "client-secret-for-tests" not in str(caught.value)


def test_settings_is_frozen():
    s = Settings()
    with pytest.raises(AttributeError):
        s.batch_size = 5  # type: ignore[misc]


def test_env_example_lists_every_option():
    example = Path(__file__).resolve().parents[1] / ".env.example"
    lines = example.read_text(encoding="utf-8").splitlines()
    for option in OPTIONS:
        assert any(line.startswith(f"{option.env}=") for line in lines), option.env
        assert option.help.endswith(".") or option.help.endswith(")"), option.env
