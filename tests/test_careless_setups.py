"""What a careless set-up or a hand-edited file must not break (issue 15, items 8, 9 and 10).

Receipts as long as the tool accepts fit the ledger on every database; ``demo`` never deletes
a folder it did not make; an unreadable ``.env`` line is a configuration error; the live
interlock judges the receiver's host and path only; a staging table name too long for
PostgreSQL is refused before anything is made; what the tool writes is the owner's alone;
``status`` skips a summary it cannot read.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from api_pipeline.errors import ConfigError, ExitCode
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import load_settings
from api_pipeline.store.catalogue import column_names
from api_pipeline.store.columns import LEDGER_SPEC
from api_pipeline.store.db import Database
from api_pipeline.store.dialects import POSTGRES
from api_pipeline.store.staging import StagingTable
from api_pipeline.store.tables import ledger_ddl
from conftest import Staging, db_env, insert, ledger, rows, run_cli, staging_on_every_database, unique_table
from hostile import Exchange, Hostile

# On SQL Server's dialect (Babelfish) too.
staging = staging_on_every_database()

# -- item 8: receipts as long as the tool accepts fit the ledger ------------------------------------------


def long_receipts(exchange: Exchange) -> None:
    exchange.receipts(length=255)


def test_the_ledger_holds_the_longest_receipt_the_tool_accepts() -> None:
    from api_pipeline.settings.options import MAX_RECEIPT_LENGTH

    (receipt,) = [c for c in LEDGER_SPEC if c.name == "receipt"]
    assert receipt.size >= MAX_RECEIPT_LENGTH and receipt.min_size >= MAX_RECEIPT_LENGTH


def test_a_255_character_receipt_is_written_back_on_every_database(staging: Staging, tmp_path: Path) -> None:
    insert(staging, list(make_children(3, seed=180)))
    with Hostile(long_receipts) as host:
        result = run_cli(["run"], environ=host.env() | staging.env | {"MAX_RETRIES": "0"}, cwd=tmp_path)
    assert result.code == ExitCode.OK, result.err
    assert [str(r["submission_status"]).lower() for r in rows(staging)] == ["sent"] * 3
    assert {len(entry["receipt"]) for entry in ledger(staging).values()} == {255}


def _old_ledger(staging: Staging) -> None:
    """The ledger as earlier builds made it, with room for 200-character receipts."""
    ddl = ledger_ddl(POSTGRES, f"{staging.table}_ledger")
    with staging.open() as db, db.transaction():
        db.execute(ddl.replace("VARCHAR(255)", "VARCHAR(200)"))


def test_test_schema_flags_a_ledger_too_narrow_for_receipts(postgres_table: Staging, tmp_path: Path) -> None:
    _old_ledger(postgres_table)
    result = run_cli(["test-schema"], environ=postgres_table.env, cwd=tmp_path)
    assert result.code == ExitCode.DATABASE, result.out
    assert "- receipt is CHARACTER VARYING(200): too short" in result.out and "up to 255 characters" in result.out
    assert f"ALTER TABLE {postgres_table.table}_ledger ALTER COLUMN receipt TYPE VARCHAR(255)" in result.out


def test_a_run_refuses_a_ledger_too_narrow_before_sending(postgres_table: Staging, tmp_path: Path) -> None:
    _old_ledger(postgres_table)
    insert(postgres_table, list(make_children(2, seed=181)))
    with Simulator() as sim:
        result = run_cli(["run"], environ=sim.settings_env() | postgres_table.env, cwd=tmp_path)
        assert sim.records_accepted == 0
    assert result.code == ExitCode.DATABASE
    assert "receipt" in result.err and "test-schema" in result.err


# -- item 9: demo --dir never deletes a folder it did not make --------------------------------------------


def demo(folder: Path | str, cwd: Path) -> object:
    return run_cli(["demo", "--children", "4", "--dir", str(folder)], cwd=cwd)


def test_demo_refuses_a_folder_with_someone_elses_files(tmp_path: Path) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    result = demo(folder, tmp_path)
    assert result.code == ExitCode.USAGE and "--dir" in result.err and str(folder) in result.err
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_demo_dir_dot_refuses_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # "." must be this test's folder whichever way the tool resolves it
    (tmp_path / "important.db").write_bytes(b"council data")
    result = demo(".", tmp_path)
    assert result.code == ExitCode.USAGE
    assert (tmp_path / "important.db").read_bytes() == b"council data"


def test_demo_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x", encoding="utf-8")
    assert demo(target, tmp_path).code == ExitCode.USAGE
    assert target.read_text(encoding="utf-8") == "x"


def test_demo_reuses_its_own_folder_and_an_empty_one(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    first = demo(empty, tmp_path)
    second = demo(empty, tmp_path)  # the demo made what is in it now
    assert (first.code, second.code) == (0, 0), second.err + second.out
    assert "4/4 children" in second.out
    assert demo(tmp_path / "new" / "deeper", tmp_path).code == 0


# -- item 10: .env lines, the live interlock, long table names, file modes, hand-edited summaries ----------


def test_an_env_line_with_an_unbalanced_quote_is_a_configuration_error(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "CLIENT_ID=abc\nCLIENT_SECRET=\"s3cr3t-value-Do-Not-Show\nSCOPE=api://x/.default\nLA_CODE='999\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(command="demo", environ={}, env_file=env_file)
    problems = caught.value.problems
    assert any(p.startswith("CLIENT_SECRET:") and "line 2" in p and "quote" in p for p in problems), problems
    assert any(p.startswith("LA_CODE:") and "line 4" in p for p in problems), problems
    assert "s3cr3t" not in str(caught.value)
    result = run_cli(["test-endpoint", "--env-file", str(env_file)], cwd=tmp_path)
    assert result.code == ExitCode.USAGE and "line 2" in result.err


LIVE = "https://api.example.invalid/children-in-social-care-data-receiver/1"


@pytest.mark.parametrize(
    ("endpoint", "is_test"),
    [
        ("https://pp-api.education.gov.uk/children-in-social-care-data-receiver-test/1", True),
        ("https://pp-api.example.invalid/CHILDREN-in-social-care-data-receiver-TEST/1", True),
        ("https://receiver-test.example.invalid/children/1", True),
        (LIVE, False),
        ("https://svc-test:pw@api.example.invalid/children-in-social-care-data-receiver/1", False),
        ("https://api.example.invalid/children-in-social-care-data-receiver/1?x=-test", False),
        ("https://api.example.invalid/children-in-social-care-data-receiver/1#-test", False),
        ("http://127.0.0.1:8080/children-in-social-care-data-receiver/1", False),
        ("http://localhost:3128/live", False),
    ],
)
def test_the_live_interlock_judges_host_and_path(endpoint: str, is_test: bool) -> None:
    settings = load_settings(command="demo", environ={"API_ENDPOINT": endpoint})
    assert settings.is_test_receiver is is_test


def test_a_loopback_relay_to_live_needs_permission(db_path: Path) -> None:
    insert(db_path, list(make_children(1, seed=182)))
    with Hostile(lambda exchange: exchange.receipts()) as relay:
        environ = relay.env() | db_env(db_path) | {"API_ENDPOINT": relay.base_url + "/children-in-social-care/1"}
        refused = run_cli(["run"], environ=environ, cwd=db_path.parent)
        allowed = run_cli(["run", "--live"], environ=environ, cwd=db_path.parent)
    assert refused.code == ExitCode.USAGE and "--live" in refused.err
    assert allowed.code == ExitCode.OK, allowed.err


def test_the_simulator_is_still_the_test_receiver() -> None:
    with Simulator() as sim:
        assert load_settings(
            command="run", environ=sim.settings_env() | {"DB_CONNECTION_STRING": "sqlite:///x.db"}
        ).is_test_receiver


# Issue 23, item 8: an address that reads as the test receiver but resolves to the live one.
LIVE_PATH = "/children-in-social-care-data-receiver/1"
TWO_WAYS = [
    "/x-test/.." + LIVE_PATH,
    "/x-test/%2e%2e" + LIVE_PATH,
    "/x-test/%2E%2E" + LIVE_PATH,
    "/x-test/.%2e" + LIVE_PATH,
    "/x-test/%252e%252e" + LIVE_PATH,
    "/x-test%2f..%2f" + LIVE_PATH.lstrip("/"),
    "/x-test/..;" + LIVE_PATH,
    "/x-test/./.." + LIVE_PATH,
    "/x-test\\.." + LIVE_PATH,
    "/x-test%5c.." + LIVE_PATH,
]


@pytest.mark.parametrize("path", TWO_WAYS)
@pytest.mark.parametrize("variable", ["API_ENDPOINT", "TOKEN_ENDPOINT"])
def test_an_address_with_dot_segments_or_a_backslash_is_refused(variable: str, path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(command="demo", environ={variable: "https://api.example.invalid" + path})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{variable}: ") and "as DfE (or Azure) gives it" in problem


def test_a_backslash_that_moves_the_host_is_refused() -> None:
    # urlsplit reads the host as receiver-test.example.invalid; requests connects to api.example.invalid.
    endpoint = "https://api.example.invalid\\@receiver-test.example.invalid" + LIVE_PATH
    with pytest.raises(ConfigError, match="API_ENDPOINT: .* contains a backslash"):
        load_settings(command="demo", environ={"API_ENDPOINT": endpoint})


@pytest.mark.parametrize("path", TWO_WAYS)
def test_an_address_that_reads_two_ways_counts_as_live(path: str) -> None:
    from api_pipeline.settings.config import Settings

    assert not Settings(api_endpoint="https://api.example.invalid" + path).is_test_receiver


@pytest.mark.parametrize("path", ["/x-test/.." + LIVE_PATH, "/x-test/%2e%2e" + LIVE_PATH])
def test_dot_segments_cannot_reach_the_live_receiver_unasked(db_path: Path, path: str) -> None:
    insert(db_path, list(make_children(1, seed=231)))
    with Hostile(lambda exchange: exchange.receipts()) as relay:
        environ = relay.env() | db_env(db_path) | {"API_ENDPOINT": relay.base_url + path}
        refused = run_cli(["run"], environ=environ, cwd=db_path.parent)
        also_live = run_cli(["run", "--live"], environ=environ, cwd=db_path.parent)
    assert refused.code == ExitCode.USAGE and "API_ENDPOINT" in refused.err and "'..'" in refused.err
    assert also_live.code == ExitCode.USAGE  # written as it is sent, or not at all
    assert relay.seen == []  # not even a token was asked for
    assert [r["submission_status"] for r in rows(db_path)] == ["Pending"]


def test_a_table_name_too_long_for_postgresql_is_refused(postgres_odbc: str, tmp_path: Path) -> None:
    name = (unique_table("pg") + "_" + "x" * 63)[:63]  # PostgreSQL would cut name_ledger back to name itself
    staging = Staging("postgresql", postgres_odbc, name)
    for command in (["run"], ["test-schema"], ["init-db"], ["status"]):
        with Simulator() as sim:
            result = run_cli(command, environ=sim.settings_env() | staging.env, cwd=tmp_path)
        assert result.code == ExitCode.USAGE, (command, result.err)
        assert result.err.startswith("error: TABLE_NAME:") and "63" in result.err and "PostgreSQL" in result.err
    with Database.connect(postgres_odbc) as db:
        assert column_names(db, name[:63]) is None and column_names(db, name) is None  # nothing was made
    printed = run_cli(["init-db", "--print", "--dialect", "postgresql"], environ={"TABLE_NAME": name}, cwd=tmp_path)
    assert printed.code == ExitCode.USAGE


def test_the_longest_table_name_postgresql_allows_works(postgres_odbc: str, tmp_path: Path) -> None:
    name = (unique_table("pg") + "_" + "x" * 42)[:42]
    staging = Staging("postgresql", postgres_odbc, name)
    try:
        staging.create()
        insert(staging, list(make_children(2, seed=183)))
        with Simulator() as sim:
            result = run_cli(["run"], environ=sim.settings_env() | staging.env, cwd=tmp_path)
        assert result.code == ExitCode.OK, result.err
        with Database.connect(postgres_odbc) as db:
            table = StagingTable(db, name)
            assert table.has_ledger() and column_names(db, f"{name}_run_lock") is not None
    finally:
        staging.drop()


def test_long_table_names_are_fine_on_sqlite(db_path: Path) -> None:
    name = "t" + "x" * 70
    with Database.open_sqlite(db_path) as db:
        StagingTable(db, name).create_staging_table()
    with Simulator() as sim:
        environ = sim.settings_env() | db_env(db_path) | {"TABLE_NAME": name}
        assert run_cli(["run"], environ=environ, cwd=db_path.parent).code == ExitCode.OK


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes; Windows keeps its own ACLs")
def test_logs_summaries_reports_and_dry_run_files_are_the_owners_alone(db_path: Path) -> None:
    tmp_path = db_path.parent
    insert(db_path, list(make_children(3, seed=184)))
    previous = os.umask(0o022)  # the usual default, which would make them readable by everyone
    try:
        with Simulator() as sim:
            environ = sim.settings_env() | db_env(db_path) | {"LOG_DIR": str(tmp_path / "new" / "logs")}
            review = tmp_path / "review"
            assert run_cli(["run", "--dry-run", str(review)], environ=environ, cwd=tmp_path).code == 0
            assert run_cli(["run"], environ=environ, cwd=tmp_path).code == 0
    finally:
        os.umask(previous)
    logs = tmp_path / "new" / "logs"
    files = [*logs.iterdir(), *review.iterdir()]
    kinds = {p.name.split("Z-", 1)[-1].split(".", 1)[-1] for p in files}  # a run id has a "." before "Z-"
    assert {"log", "summary.json", "report.html", "json"} <= kinds, kinds
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in (logs, review):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_a_rewritten_report_and_summary_stay_private(tmp_path: Path) -> None:
    from api_pipeline.job.report import write_report

    summary = tmp_path / "csc_api_pipeline_20260101T000000Z.summary.json"
    summary.write_text(json.dumps({"run_id": "20260101T000000Z", "exit_code": 0}), encoding="utf-8")
    report = write_report(summary)
    assert stat.S_IMODE(report.stat().st_mode) == 0o600


def test_status_skips_a_hand_edited_summary_with_a_warning(db_path: Path) -> None:
    logs = db_path.parent / "logs"
    logs.mkdir()

    def summary(run_id: str, text: str) -> None:
        (logs / f"csc_api_pipeline_{run_id}.summary.json").write_text(text, encoding="utf-8")

    good = {"run_id": "20260301T010000Z", "started_at": "2026-03-01T01:00:00Z", "rows_read": 5, "exit_code": 0}
    summary("20260301T010000Z", json.dumps(good))
    summary("20260302T010000Z", json.dumps(good | {"run_id": "x2"}).replace('"rows_read": 5', '"rows_read": NaN'))
    summary("20260303T010000Z", json.dumps(good | {"run_id": "x3", "outcomes": [1, 2, 3]}))
    summary("20260304T010000Z", json.dumps(good | {"run_id": "x4", "rows_read": {"a": 1}}))
    summary("20260305T010000Z", json.dumps(good | {"run_id": "x5", "seconds": 1e400}).replace("Infinity", "1e999"))
    summary("20260306T010000Z", json.dumps(good | {"run_id": "x6", "exit_code": "zero"}))
    summary("20260307T010000Z", "[1, 2]")
    for argv in (["status"], ["status", "--json"]):
        result = run_cli(argv, environ=db_env(db_path), cwd=db_path.parent)
        assert result.code == ExitCode.OK, result.err
        for run_id in ("0302", "0303", "0304", "0305", "0306", "0307"):
            assert f"csc_api_pipeline_2026{run_id}T010000Z.summary.json" in result.err, result.err
        assert "warning" in result.err
    shown = json.loads(result.out)
    assert [run["run_id"] for run in shown["runs"]["recent"]] == ["20260301T010000Z"]
    assert shown["runs"]["unreadable_summaries"] == 6
