"""Secrets out of the .env: keyring references, set-secret, DB_PASSWORD, and key/secret rollover.

The keyring is a real ``keyring`` backend class that keeps passwords in a dict, set with
``keyring.set_keyring`` (the Windows Credential Manager is not available here). The rollover
tests use the real simulator, which accepts one secret and one key: it is built with the
secondary's value, as DfE's side looks once it has moved to the new one.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from api_pipeline.cli.credentials import DEFAULT_SERVICE, keyring_variables, set_secret_command
from api_pipeline.cli.diagnostics import check_endpoint
from api_pipeline.dfe.api import ApiClient
from api_pipeline.dfe.auth import SECRET_REFUSED_CODES, ClientCredentialsAuth
from api_pipeline.dfe.transport import make_session
from api_pipeline.errors import AuthError, ConfigError, ExitCode
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import Secret, load_settings
from api_pipeline.settings.context import Context
from api_pipeline.settings.masking import mask_secrets
from conftest import aborted, db_env, encoded, insert, run_cli

keyring = pytest.importorskip("keyring")
from keyring.backend import KeyringBackend  # noqa: E402
from keyring.backends import fail  # noqa: E402

OLD_SECRET = "old-client-secret-Do-Not-Show-11"
NEW_SECRET = "new-client-secret-Do-Not-Show-22"
OLD_KEY = "old-supplier-key-Do-Not-Show-33"
NEW_KEY = "new-supplier-key-Do-Not-Show-44"
DB_SECRET = "db-pa;ss}word-Do-Not-Show-55"  # noqa: S105 - a test value with ODBC's awkward characters
REPO = Path(__file__).resolve().parents[1]


class MemoryKeyring(KeyringBackend):
    """A keyring backend that keeps secrets in a dict; never chosen by keyring's own discovery."""

    priority = 1  # type: ignore[assignment]
    viable = False  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


class BrokenKeyring(MemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError(f"backend exploded while reading {service}")


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


def context(tmp_path: Path, environ: dict[str, str] | None = None) -> tuple[Context, io.StringIO]:
    out = io.StringIO()
    return Context(environ=environ or {"USERNAME": "svc-csc"}, cwd=tmp_path, out=out, err=io.StringIO()), out


def answers(*typed: str):
    given = list(typed)
    prompts: list[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return given.pop(0)

    prompt.prompts = prompts  # type: ignore[attr-defined]
    return prompt


def store(name: str, value: str, tmp_path: Path) -> str:
    ctx, out = context(tmp_path)
    assert set_secret_command(name, ctx, prompt=answers(value, value)) == ExitCode.OK
    return out.getvalue()


# -- set-secret -------------------------------------------------------------------------------------------


def test_set_secret_stores_and_prints_the_env_line(memory_keyring: MemoryKeyring, tmp_path: Path) -> None:
    ctx, out = context(tmp_path)
    prompt = answers(NEW_SECRET, NEW_SECRET)
    assert set_secret_command("client_secret", ctx, prompt=prompt) == 0
    assert memory_keyring.store == {(f"{DEFAULT_SERVICE}/CLIENT_SECRET", "CLIENT_SECRET"): NEW_SECRET}
    printed = out.getvalue()
    assert "\nCLIENT_SECRET=keyring:csc-api-pipeline/CLIENT_SECRET\n" in printed
    assert "svc-csc" in printed and "same account" in printed
    assert NEW_SECRET not in printed and not any(NEW_SECRET in p for p in prompt.prompts)

    ctx, out = context(tmp_path)
    assert set_secret_command("SUPPLIER_KEY", ctx, service="council/csc", prompt=answers(NEW_KEY, NEW_KEY)) == 0
    assert memory_keyring.store[("council/csc/SUPPLIER_KEY", "SUPPLIER_KEY")] == NEW_KEY
    assert "SUPPLIER_KEY=keyring:council/csc/SUPPLIER_KEY" in out.getvalue()


@pytest.mark.parametrize(
    ("name", "typed", "words"),
    [
        ("CLIENT_ID", ["x", "x"], "cannot be kept in the keyring"),
        ("CLIENT_SECRET", ["", ""], "nothing was typed"),
        ("CLIENT_SECRET", ["one", "two"], "differ"),
        ("CLIENT_SECRET", ["keyring:a/b", "keyring:a/b"], "not a keyring: reference"),
        ("PROXY_URL", ["socks5://u:pw-Do-Not-Show@p:1", "socks5://u:pw-Do-Not-Show@p:1"], "SOCKS"),
    ],
)
def test_set_secret_refuses_and_stores_nothing(
    memory_keyring: MemoryKeyring, tmp_path: Path, name: str, typed: list[str], words: str
) -> None:
    ctx, _ = context(tmp_path)
    with pytest.raises(ConfigError) as caught:
        set_secret_command(name, ctx, prompt=answers(*typed))
    assert words in str(caught.value) and "Do-Not-Show" not in str(caught.value)
    assert memory_keyring.store == {}


def test_set_secret_without_a_keyring_says_so(tmp_path: Path) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        ctx, _ = context(tmp_path)
        with pytest.raises(ConfigError, match="no keyring is available"):
            set_secret_command("CLIENT_SECRET", ctx, prompt=answers("s", "s"))
    finally:
        keyring.set_keyring(previous)


def test_every_secret_setting_can_be_kept_in_the_keyring() -> None:
    assert set(keyring_variables()) == {
        "DB_CONNECTION_STRING",
        "DB_PASSWORD",
        "CLIENT_SECRET",
        "CLIENT_SECRET_SECONDARY",
        "SUPPLIER_KEY",
        "SUPPLIER_KEY_SECONDARY",
        "PROXY_URL",
        "HTTPS_PROXY",
        "SMTP_PASSWORD",
        "NOTIFY_WEBHOOK_URL",
    }


# -- keyring: references ----------------------------------------------------------------------------------


def test_env_with_keyring_references_runs_and_never_shows_the_secrets(
    memory_keyring: MemoryKeyring, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tmp_path = db_path.parent
    with Simulator(client_secret=NEW_SECRET, supplier_key=NEW_KEY) as sim:
        printed = store("CLIENT_SECRET", NEW_SECRET, tmp_path) + store("SUPPLIER_KEY", NEW_KEY, tmp_path)
        lines = [line for line in printed.splitlines() if "=keyring:" in line]
        env = sim.settings_env() | {"CLIENT_SECRET": "", "SUPPLIER_KEY": ""} | db_env(db_path)
        env_file = tmp_path / ".env"
        env_file.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in env.items() if v)]) + "\n", "utf-8")
        assert NEW_SECRET not in env_file.read_text() and NEW_KEY not in env_file.read_text()

        settings = load_settings(command="run", environ={}, env_file=env_file)
        assert settings.client_secret == Secret(NEW_SECRET) and settings.supplier_key == Secret(NEW_KEY)

        caplog.set_level(logging.DEBUG)
        insert(db_path, list(make_children(3, seed=2)))
        results = [
            run_cli(["-vv", "test-endpoint", "--env-file", str(env_file)], environ={}, cwd=tmp_path),
            run_cli(["-vv", "run", "--env-file", str(env_file)], environ={}, cwd=tmp_path),
        ]
        assert [r.code for r in results] == [0, 0], [r.out + r.err for r in results]
        assert len(sim.snapshot()) == 3
    text = caplog.text + "".join(r.out + r.err for r in results)
    text += "".join(p.read_text(encoding="utf-8") for p in sorted((tmp_path / "logs").glob("*")))
    assert "run" in text and len(text) > 500
    assert NEW_SECRET not in text and NEW_KEY not in text


def test_unresolvable_references_are_reported_with_every_other_problem(
    memory_keyring: MemoryKeyring, tmp_path: Path
) -> None:
    environ = {
        "CLIENT_SECRET": "keyring:csc-api-pipeline/CLIENT_SECRET",
        "SUPPLIER_KEY": "keyring:nothing-here",
        "LA_CODE": "84",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(command="test-endpoint", environ=environ)
    problems = {p.split(":", 1)[0]: p for p in caught.value.problems}
    assert "set-secret CLIENT_SECRET --service csc-api-pipeline" in problems["CLIENT_SECRET"]
    assert "keyring:<service>/<name>" in problems["SUPPLIER_KEY"]
    assert {"LA_CODE", "API_ENDPOINT", "TOKEN_ENDPOINT", "CLIENT_ID", "SCOPE"} <= set(problems)
    assert caught.value.exit_code == ExitCode.USAGE


def test_a_failing_keyring_is_a_config_problem_naming_the_variable(tmp_path: Path) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(BrokenKeyring())
    try:
        with pytest.raises(ConfigError) as caught:
            load_settings(command="demo", environ={"SUPPLIER_KEY": "keyring:svc/SUPPLIER_KEY"})
    finally:
        keyring.set_keyring(previous)
    (problem,) = caught.value.problems
    assert problem.startswith("SUPPLIER_KEY: cannot read keyring:svc/SUPPLIER_KEY")
    assert "RuntimeError" in problem and "exploded" not in problem


def test_keyring_is_not_imported_without_a_reference(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from api_pipeline.settings.config import load_settings\n"
        "load_settings(command='demo', environ={'CLIENT_SECRET': 's', 'PROXY_URL': 'http://p:1'})\n"
        "print('keyring' in sys.modules, 'truststore' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_proxy_url_from_the_keyring(memory_keyring: MemoryKeyring) -> None:
    memory_keyring.set_password(DEFAULT_SERVICE, "PROXY_URL", "http://svc:Proxy-Do-Not-Show@proxy.council.local:8080")
    settings = load_settings(command="demo", environ={"PROXY_URL": "keyring:csc-api-pipeline/PROXY_URL"})
    assert settings.https_proxy == Secret("http://svc:Proxy-Do-Not-Show@proxy.council.local:8080")


# -- DB_PASSWORD --------------------------------------------------------------------------------------------


def test_db_password_is_added_to_the_odbc_string(memory_keyring: MemoryKeyring) -> None:
    memory_keyring.set_password(DEFAULT_SERVICE, "DB_PASSWORD", DB_SECRET)
    odbc = "Driver={ODBC Driver 18 for SQL Server};Server=sql01;Database=csc;UID=svc_csc;"
    environ = {"DB_CONNECTION_STRING": odbc, "DB_PASSWORD": "keyring:csc-api-pipeline/DB_PASSWORD"}
    settings = load_settings(command="test-db", environ=environ)
    assert settings.db_connection_string == Secret(odbc + "PWD={db-pa;ss}}word-Do-Not-Show-55};")
    assert settings.db_password == Secret(DB_SECRET)
    assert DB_SECRET not in mask_secrets(f"connecting with {settings.db_connection_string.reveal()}", [DB_SECRET])


@pytest.mark.parametrize(
    ("connection", "words"),
    [
        ("sqlite:///staging.db", "SQLite file has no password"),
        ("Driver={PostgreSQL Unicode};Server=pg;UID=svc;Password=other;", "already has a password"),
        ("Driver={ODBC Driver 18 for SQL Server};Server=sql01;PWD={x};", "already has a password"),
        ("Driver={ODBC Driver 18 for SQL Server};Server=sql01;Trusted_Connection=yes;", "integrated security"),
    ],
)
def test_db_password_has_one_place_only(connection: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(command="test-db", environ={"DB_CONNECTION_STRING": connection, "DB_PASSWORD": DB_SECRET})
    (problem,) = caught.value.problems
    assert problem.startswith("DB_PASSWORD:") and words in problem and DB_SECRET not in problem


# -- primary/secondary rollover ------------------------------------------------------------------------------


def rollover_env(sim: Simulator, **env: str) -> dict[str, str]:
    return sim.settings_env() | {"MAX_RETRIES": "1", "HTTP_TIMEOUT": "5"} | env


def test_secondary_secret_and_key_carry_a_run_with_a_warning_to_promote(db_path: Path) -> None:
    tmp_path = db_path.parent
    with Simulator(client_secret=NEW_SECRET, supplier_key=NEW_KEY) as sim:
        env = rollover_env(
            sim,
            CLIENT_SECRET=OLD_SECRET,
            CLIENT_SECRET_SECONDARY=NEW_SECRET,
            SUPPLIER_KEY=OLD_KEY,
            SUPPLIER_KEY_SECONDARY=NEW_KEY,
        ) | db_env(db_path)
        insert(db_path, list(make_children(5, seed=4)))
        result = run_cli(["run"], environ=env, cwd=tmp_path)
        assert result.code == 0, result.err
        assert len(sim.snapshot()) == 5
        assert sim.token_requests == 2  # the refused primary, then the secondary; no needless renewal
    log_text = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "logs").glob("*.log"))
    assert "WARNING" in log_text
    assert "accepted CLIENT_SECRET_SECONDARY but not CLIENT_SECRET: promote it" in log_text
    assert "accepted SUPPLIER_KEY_SECONDARY but not SUPPLIER_KEY" in log_text and "Promote it" in log_text
    for value in (OLD_SECRET, NEW_SECRET, OLD_KEY, NEW_KEY):
        assert value not in log_text + result.out + result.err


def test_test_endpoint_passes_on_the_secondaries_and_says_to_promote(tmp_path: Path) -> None:
    with Simulator(client_secret=NEW_SECRET, supplier_key=NEW_KEY) as sim:
        env = rollover_env(
            sim,
            CLIENT_SECRET=OLD_SECRET,
            CLIENT_SECRET_SECONDARY=NEW_SECRET,
            SUPPLIER_KEY=OLD_KEY,
            SUPPLIER_KEY_SECONDARY=NEW_KEY,
        )
        result = run_cli(["test-endpoint"], environ=env, cwd=tmp_path)
    assert result.code == 0 and result.out.startswith("PASS")
    warnings = [line for line in result.out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert "CLIENT_SECRET_SECONDARY" in warnings[0] and "SUPPLIER_KEY_SECONDARY" in warnings[1]


def test_primary_still_good_means_the_secondary_is_never_tried(tmp_path: Path) -> None:
    with Simulator(client_secret=NEW_SECRET, supplier_key=NEW_KEY) as sim:
        env = rollover_env(sim, CLIENT_SECRET_SECONDARY=OLD_SECRET, SUPPLIER_KEY_SECONDARY=OLD_KEY)
        result = run_cli(["test-endpoint"], environ=env, cwd=tmp_path)
        assert sim.token_requests == 1
    assert result.code == 0 and "warning" not in result.out


def test_both_secrets_refused_is_an_auth_error_naming_both() -> None:
    with Simulator(client_secret=NEW_SECRET, supplier_key=NEW_KEY) as sim:
        settings = load_settings(
            command="test-endpoint",
            environ=rollover_env(sim, CLIENT_SECRET=OLD_SECRET, CLIENT_SECRET_SECONDARY="also-old"),
        )
        auth = ClientCredentialsAuth.from_settings(settings, make_session(settings))
        with pytest.raises(AuthError) as caught:
            auth.get_token()
    assert "CLIENT_SECRET_SECONDARY was refused too" in str(caught.value) and "AADSTS7000215" in str(caught.value)
    assert {"7000215", "7000222"} == SECRET_REFUSED_CODES  # wrong secret, expired secret


def test_both_keys_refused_is_an_auth_error_naming_both() -> None:
    with Simulator(client_secret=NEW_SECRET, supplier_key=NEW_KEY) as sim:
        settings = load_settings(
            command="test-endpoint",
            environ=rollover_env(
                sim, CLIENT_SECRET=NEW_SECRET, SUPPLIER_KEY=OLD_KEY, SUPPLIER_KEY_SECONDARY="also-old"
            ),
        )
        session = make_session(settings)
        client = ApiClient(
            settings, session, ClientCredentialsAuth.from_settings(settings, session), sleep=lambda s: None
        )
        with aborted(AuthError, match="refused both SUPPLIER_KEY and SUPPLIER_KEY_SECONDARY"):
            client.send(encoded([next(iter(make_children(1, seed=9)))]), batch_id="b")
        check = check_endpoint(client, inspect_tls=False)
    assert not check.ok and "SUPPLIER_KEY and SUPPLIER_KEY_SECONDARY" in check.message


def test_settings_list_every_secret_for_the_log_mask() -> None:
    environ = {
        "CLIENT_SECRET": OLD_SECRET,
        "CLIENT_SECRET_SECONDARY": NEW_SECRET,
        "SUPPLIER_KEY": OLD_KEY,
        "SUPPLIER_KEY_SECONDARY": NEW_KEY,
        "PROXY_URL": "http://svc:pw@proxy:8080",
        "DB_CONNECTION_STRING": "Driver={X};Server=s;UID=u;",
        "DB_PASSWORD": DB_SECRET,
    }
    shown = {secret.reveal() for secret in load_settings(command="demo", environ=environ).secrets()}
    assert {OLD_SECRET, NEW_SECRET, OLD_KEY, NEW_KEY, DB_SECRET, "http://svc:pw@proxy:8080"} <= shown
