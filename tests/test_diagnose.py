"""``diagnose``: the support bundle holds what a helper needs, and never a secret or a record value.

Against the real parts: a SQLite (and PostgreSQL) staging table, the built-in simulator over
loopback HTTP (and no simulator at all with ``--offline``), a database that cannot be reached,
and a token endpoint that never answers. Every member of each zip is read back.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import zipfile
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from api_pipeline import __version__
from api_pipeline.cli.diagnose import BUNDLE_PREFIX, diagnose_command
from api_pipeline.cli.parser import build_parser, cmd_status, cmd_test_endpoint
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.context import Context
from conftest import MARKER, Staging, db_env, insert, run_cli
from hostile import Hostile, trickle_headers

CLIENT_SECRET = "Diag+client/secret=6b2e&\u00dc"  # differs URL-encoded and JSON-escaped
SUPPLIER_KEY = "Diag+supplier/key=40fd"
DB_PASSWORD = "Diag-db-password-9c17"
PLANTED_TOKEN = "Diag-planted-token-e83a"
ODD_NAME = "Zo\u00eb-Diagname"  # not ASCII: its JSON-escaped and UTF-16 forms differ from its UTF-8


def read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


def forms(value: str) -> list[bytes]:
    """Every way a value could sit in a file: as written, in UTF-16, URL-encoded, JSON-escaped."""
    return [
        value.encode("utf-8"),
        value.encode("utf-16-le"),
        value.encode("utf-16-be"),
        quote(value, safe="").encode("ascii"),
        quote_plus(value).encode("ascii"),
        json.dumps(value)[1:-1].encode("ascii"),
    ]


def assert_nowhere(members: dict[str, bytes], values: list[str]) -> None:
    for name, data in members.items():
        for value in values:
            for form in forms(value):
                assert form.lower() not in data.lower(), f"{value!r} is in {name} (as {form!r})"
                assert value.lower() not in name.lower()


def children_with_markers() -> list[dict]:
    children = list(make_children(8, seed=280))
    children[0]["child_details"].update(MARKER)
    children[1]["child_details"].update(MARKER, first_name=ODD_NAME)
    children[2]["child_details"].update(MARKER, sex="XX")  # invalid: status names the field, never the value
    return children


def bundle_cli(tmp_path: Path, env: dict[str, str], *argv: str):
    result = run_cli(["diagnose", *argv], environ=env, cwd=tmp_path)
    assert result.code == 0, result.err + result.out
    written = [line for line in result.out.splitlines() if line.startswith("Support bundle written: ")]
    assert len(written) == 1, result.out
    path = Path(written[0].removeprefix("Support bundle written: ").split(" (")[0])
    return result, path


def test_the_bundle_holds_versions_settings_checks_status_and_runs(db_path, tmp_path):
    insert(db_path, children_with_markers())
    logs = tmp_path / "logs"
    with Simulator() as sim:
        env = dict(sim.settings_env()) | db_env(db_path) | {"LOG_DIR": str(logs), "MAX_RETRIES": "1"}
        assert run_cli(["run"], environ=env, cwd=tmp_path).code == 1  # one invalid child
        result, path = bundle_cli(tmp_path, env, "--out", str(tmp_path / "help.zip"))

    assert path == tmp_path / "help.zip"
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    members = read_zip(path)
    text = {name: data.decode("utf-8") for name, data in members.items()}
    expected = {
        "README.txt",
        "versions.txt",
        "settings.txt",
        "network.txt",
        "checks/test-db.txt",
        "checks/test-schema.txt",
        "checks/test-endpoint.txt",
        "checks/status.txt",
        "status.json",
        "runs/README.txt",
    }
    assert expected <= set(members)
    for name in members:  # what it holds, printed
        assert f"  {name}" in result.out
    assert "Checks: test-db passed; test-schema passed; test-endpoint passed; status passed" in result.out

    assert __version__ in text["versions.txt"] and sys.version.split()[0] in text["versions.txt"]
    assert "ODBC drivers" in text["versions.txt"] or "pyodbc: not importable" in text["versions.txt"]
    settings = text["settings.txt"]
    assert "CLIENT_SECRET: set (hidden)" in settings and "SUPPLIER_KEY: set (hidden)" in settings
    assert "CLIENT_SECRET_SECONDARY: not set" in settings and "LA_CODE: 999" in settings
    assert "DB_CONNECTION_STRING: set (from DB_CONNECTION_STRING; any password hidden): sqlite:///" in settings
    assert "exit code: 0" in text["checks/test-db.txt"] and "SELECT 1 answered" in text["checks/test-db.txt"]
    assert "PASS: Token, SupplierKey, URL and LA code accepted" in text["checks/test-endpoint.txt"]
    assert "API endpoint 127.0.0.1: direct (no proxy)" in text["network.txt"]
    status = json.loads(text["status.json"])
    assert status["total_rows"] == 8 and status["runs"]["recent"][0]["invalid"] == 1
    assert any(p["reason"].startswith("invalid: ") for p in status["problems"])

    summaries = [name for name in members if name.endswith(".summary.json")]
    run_logs = [name for name in members if name.startswith("runs/") and name.endswith(".log")]
    assert len(summaries) == 1 and len(run_logs) == 1
    assert json.loads(text[summaries[0]])["rows_read"] == 8
    assert "The newest 1 run in" in text["runs/README.txt"]
    assert "test-endpoint passed" in text["README.txt"]


def test_offline_needs_no_simulator_and_writes_to_the_log_folder(db_path, tmp_path):
    insert(db_path, list(make_children(3, seed=281)))
    logs = tmp_path / "logs"
    env = db_env(db_path) | {"LOG_DIR": str(logs), "API_ENDPOINT": "https://127.0.0.1:9/x-test/1"}
    result, path = bundle_cli(tmp_path, env, "--offline")

    assert path.parent == logs and path.name.startswith(BUNDLE_PREFIX) and path.suffix == ".zip"
    assert "test-endpoint skipped (--offline)" in result.out
    members = read_zip(path)
    assert "skipped (--offline)" in members["checks/test-endpoint.txt"].decode()
    assert "not checked (--offline)" in members["network.txt"].decode()
    assert json.loads(members["status.json"])["total_rows"] == 3
    assert "No runs' files in" in members["runs/README.txt"].decode()
    assert "test-db passed" in result.out and "test-schema passed" in result.out

    given = tmp_path / "for-the-helper"
    given.mkdir()
    _, second = bundle_cli(tmp_path, env, "--offline", "--out", "for-the-helper")  # a folder: a new zip in it
    assert second.parent == given and second.name.startswith(BUNDLE_PREFIX)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_no_secret_and_no_record_value_is_anywhere_in_the_bundle(kind, tmp_path, request):
    if kind == "sqlite":
        staging = Staging.sqlite(tmp_path / "staging.db")
    else:
        from conftest import unique_table

        staging = Staging("postgresql", request.getfixturevalue("postgres_odbc"), unique_table("diag"))
    staging.create()
    request.addfinalizer(staging.drop)
    staging.insert(children_with_markers())
    logs = tmp_path / "logs"
    with Simulator(client_secret=CLIENT_SECRET, supplier_key=SUPPLIER_KEY) as sim:
        env = dict(sim.settings_env()) | staging.env | {"LOG_DIR": str(logs), "MAX_RETRIES": "1", "DEBUG": "true"}
        assert run_cli(["-vv", "run"], environ=env, cwd=tmp_path).code == 1
        # Written into a log by hand (or by a tool before this one): a token the pattern hides, and
        # the settings' secrets as they are, URL-encoded and JSON-escaped, which the registry hides.
        log = next(logs.glob("*.log"))
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"Authorization: Bearer {PLANTED_TOKEN}\n")
            for secret in (CLIENT_SECRET, SUPPLIER_KEY):
                handle.write(f"{secret} {quote_plus(secret)} {quote(secret, safe='')} {json.dumps(secret)}\n")
        result, path = bundle_cli(tmp_path, env, "-vv", "--out", str(tmp_path / "bundle.zip"))
        issued = [
            entry.headers.get("Authorization", "").removeprefix("Bearer ")
            for entry in sim.request_log()
            if entry.headers.get("Authorization")
        ]

    members = read_zip(path)
    assert issued and len(members) >= 10
    secrets = [CLIENT_SECRET, SUPPLIER_KEY, PLANTED_TOKEN, *issued]
    if kind == "postgresql":  # the test server's password, in the connection string
        secrets.append(staging.connection_string.split("Pwd=")[1].split(";")[0])
        assert "Pwd=<hidden>" in members["settings.txt"].decode()
    record_values = [*MARKER.values(), ODD_NAME]
    assert_nowhere(members, secrets + record_values)
    assert_nowhere({"(what it printed)": (result.out + result.err).encode()}, secrets + record_values)
    assert "test-endpoint passed" in result.out  # the secrets were there to be leaked


def test_a_bundle_is_written_when_the_database_cannot_be_reached(tmp_path):
    odbc = f"Driver={{PostgreSQL Unicode}};Server=127.0.0.1;Port=9;Database=none;Uid=svc;Pwd={DB_PASSWORD};"
    env = {"DB_CONNECTION_STRING": odbc, "LOG_DIR": str(tmp_path / "logs")}
    result, path = bundle_cli(tmp_path, env, "--offline")

    assert "test-db FAILED (exit 3)" in result.out
    assert "test-schema FAILED (exit 3)" in result.out and "status FAILED (exit 3)" in result.out
    assert "3 checks did not pass (test-db, test-schema, status)" in result.out
    members = read_zip(path)
    assert "status.json" not in members
    test_db = members["checks/test-db.txt"].decode()
    assert "exit code: 3" in test_db and "error: " in test_db
    assert "Server=127.0.0.1;Port=9" in members["settings.txt"].decode()
    assert_nowhere(members, [DB_PASSWORD])


def test_a_check_that_hangs_is_cut_short_and_the_bundle_still_written(tmp_path):
    """A token endpoint that never finishes its answer: test-endpoint is given its time, then left."""
    with Hostile(lambda exchange: exchange.receipts(), token_answer=trickle_headers(seconds=30)) as host:
        env = host.env() | {"HTTP_TIMEOUT": "30", "LOG_DIR": str(tmp_path / "logs")}
        out, err = io.StringIO(), io.StringIO()
        ctx = Context(environ=env, cwd=tmp_path, out=out, err=err, executable_dir=tmp_path / "no-exe")
        args = build_parser().parse_args(["diagnose", "--out", str(tmp_path / "b.zip")])
        code = diagnose_command(
            args, ctx, checks=(("test-endpoint", cmd_test_endpoint),), status=cmd_status, check_seconds=1.0
        )
    assert code == 0
    assert "test-endpoint did not finish within 1 seconds" in out.getvalue()
    members = read_zip(tmp_path / "b.zip")
    assert "exit code: none" in members["checks/test-endpoint.txt"].decode()
    assert_nowhere(members, ["hostile-client-secret-Do-Not-Show-1", "hostile-supplier-key-Do-Not-Show-2"])


def test_a_bundle_that_cannot_be_written_says_so_and_fails(tmp_path, db_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way", encoding="utf-8")
    result = run_cli(["diagnose", "--offline", "--out", str(blocker / "b.zip")], environ=db_env(db_path), cwd=tmp_path)
    assert result.code == 2
    assert "the support bundle could not be written" in result.err and str(blocker / "b.zip") in result.err
    assert not list(tmp_path.rglob("*.zip"))
