"""``status`` against a real SQLite staging table in a known state, and run summaries on disk."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from api_pipeline.cli.status import describe_age, format_status, status_command
from api_pipeline.cli.status_report import HIDDEN_REASON, ReasonKeys, age_seconds, collect_status, schema_field_names
from api_pipeline.dfe.schema import load_bundled_schema
from api_pipeline.errors import DatabaseError, ExitCode, Invalid
from api_pipeline.job.rows import parse_payload
from api_pipeline.reasons import INVALID
from api_pipeline.rehearsal.demo import load_children
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import load_settings
from api_pipeline.settings.context import Context
from api_pipeline.store.db import Database
from api_pipeline.store.ledger import Doubt, InDoubt, LedgerEntry
from api_pipeline.store.staging import StagingTable
from api_pipeline.timestamps import parse_timestamp
from conftest import TABLE, Staging, run_cli, staging_on_every_database

# On SQL Server's dialect (Babelfish) too.
staging = staging_on_every_database()

# Values that must never be shown, whatever the table's api_response says.
MARKER_VALUE = "Zqxmarkervalue"
MARKER_NAME = "Zqxmarkername"
PLAN_FIELD = "social_care_episodes[0].child_protection_plans[1].end_reason"
NOW = datetime(2026, 3, 10, 12, 0, 0, tzinfo=timezone.utc)


def summary_file(log_dir: Path, run_id: str, **fields) -> Path:
    data = {
        "run_id": run_id,
        "mode": "partial",
        "dry_run": False,
        "started_at": f"{run_id[0:4]}-{run_id[4:6]}-{run_id[6:8]}T{run_id[9:11]}:{run_id[11:13]}:{run_id[13:15]}Z",
        "finished_at": None,
        "seconds": 12.5,
        "rows_read": 10,
        "outcomes": {"sent": 8, "invalid": 2},
        "invalid_reasons": {"schema: child_details.sex": 2},
        "examples": {},
        "batches": 1,
        "requests": 1,
        "retries": {},
        "bytes_sent": 1000,
        "fatal_error": None,
        "exit_code": 1,
        "stopped_early": False,
    } | fields
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"csc_api_pipeline_{run_id}.summary.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def known_state(staging: Staging) -> Staging:
    """12 children in a state chosen row by row (ids 1..12), on SQLite and on PostgreSQL."""
    children = list(make_children(12, seed=21))
    for child in children:
        child["child_details"]["first_name"] = MARKER_NAME
    t = staging.table
    with staging.open() as db:
        load_children(db, t, children)
        table = StagingTable(db, t)
        stamp = db.dialect.timestamp_param
        with db.transaction():
            # 1-2 stay Pending/New; 3 lower-case 'pending' must group with them.
            db.execute(f"UPDATE {t} SET submission_status = 'pending' WHERE id = 3")
            # 4-7 sent; 7 then deleted by the council's SQL (purge acknowledged below).
            db.execute(f"UPDATE {t} SET submission_status = 'Sent', row_state = 'Unchanged' WHERE id IN (4, 5, 6)")
            db.execute(f"UPDATE {t} SET submission_status = 'Sent', row_state = 'Deleted' WHERE id = 7")
            # 8 updated and pending; 9 deleted, purge not yet sent.
            db.execute(f"UPDATE {t} SET row_state = 'Updated' WHERE id = 8")
            db.execute(f"UPDATE {t} SET row_state = 'Deleted' WHERE id = 9")
            # 10, 11 invalid (the tool's wording, with a value after the field); 12 rejected by DfE.
            db.execute(
                f"UPDATE {t} SET submission_status = 'Invalid', api_response = ? WHERE id IN (10, 11)",
                (f"invalid: {PLAN_FIELD}: '{MARKER_VALUE}' is longer than 1 characters",),
            )
            db.execute(
                f"UPDATE {t} SET submission_status = 'Error', api_response = ? WHERE id = 12",
                (f"rejected by DfE: DfE rejected this record: {MARKER_VALUE} is not allowed",),
            )
            # 2: the last attempt was skipped (duplicate person_id), still pending.
            db.execute(
                f"UPDATE {t} SET api_response = ? WHERE id = 2",
                ("not sent: person_id is used by more than one row of the staging table; fix the staging SQL",),
            )
            # Known ages for the pending rows: row 8 is the oldest (3 days 4 hours before NOW).
            db.execute(f"UPDATE {t} SET last_updated = ?", (stamp(datetime(2026, 3, 9, 9)),))
            db.execute(f"UPDATE {t} SET last_updated = ? WHERE id = 8", (stamp(datetime(2026, 3, 7, 8)),))
            db.execute(f"UPDATE {t} SET last_updated = ? WHERE id IN (4, 10)", (stamp(datetime(2026, 1, 1)),))
        table.create_ledger()
        at = datetime(2026, 3, 8, 21, 4, 33)
        entries = [
            LedgerEntry(c["la_child_id"], None, i + 1, "{}", None, f"receipt-{i}", at, False)
            for i, c in enumerate(children)
            if i + 1 in (4, 5, 6)
        ]
        entries.append(LedgerEntry(children[6]["la_child_id"], None, 7, None, None, "receipt-p", at, True))
        table.write_back([], entries)
        # 5 (Sent) was in a later batch whose answer was lost: in doubt, so read again.
        lost = datetime(2026, 3, 9, 2, 0, 5)
        table.write_back(
            [], [], doubt=Doubt(in_doubt=[InDoubt(children[4]["la_child_id"], 5, "{}", "run-00002", lost)])
        )
    return staging


def settings_for_db(staging: Staging, **env: str):
    return load_settings(command="status", environ=staging.env | env)


def run_status(staging: Staging, cwd: Path, **kwargs) -> tuple[int, str]:
    out = io.StringIO()
    ctx = Context(environ={}, cwd=cwd, out=out, err=io.StringIO(), executable_dir=cwd)
    code = status_command(settings_for_db(staging, LOG_DIR=str(cwd / "logs")), ctx, **kwargs)
    return code, out.getvalue()


def write_runs(log_dir: Path) -> None:
    summary_file(log_dir, "20260308T020000Z", outcomes={"sent": 120, "purged": 1}, exit_code=0, invalid_reasons={})
    summary_file(log_dir, "20260309T020000Z", seconds=75.0)
    summary_file(log_dir, "20260310T020000Z", outcomes={"sent": 3, "failed": 4}, exit_code=5, seconds=4000.0)
    (log_dir / "csc_api_pipeline_20260307T020000Z.summary.json").write_text("{not json", encoding="utf-8")


def test_status_json_has_counts_problems_age_ledger_and_runs(known_state, tmp_path):
    write_runs(tmp_path / "logs")
    settings = settings_for_db(known_state)
    with known_state.open() as db:
        report = collect_status(db, settings, tmp_path / "logs", runs=2, now=NOW).to_dict()

    t = known_state.table
    assert report["format_version"] == 1 and report["table"] == t and report["total_rows"] == 12
    counts = {(c["submission_status"], c["row_state"]): c["rows"] for c in report["counts"]}
    assert counts == {
        ("Pending", "New"): 3,  # 'Pending' twice and 'pending' once: one group, shown as the table has it
        ("Pending", "Updated"): 1,
        ("Pending", "Deleted"): 1,
        ("Sent", "Unchanged"): 3,
        ("Sent", "Deleted"): 1,
        ("Invalid", "New"): 2,
        ("Error", "New"): 1,
    }
    problems = {(p["submission_status"], p["reason"]): (p["rows"], p["example_row_ids"]) for p in report["problems"]}
    assert problems == {
        ("Invalid", "invalid: social_care_episodes[].child_protection_plans[].end_reason"): (2, [10, 11]),
        ("Error", f"rejected by DfE: {HIDDEN_REASON}"): (1, [12]),
        ("Pending", "skipped: duplicate child"): (1, [2]),
    }
    # Pending: 1, 2, 3 (new), 5 (in doubt), 8 (updated), 9 (deleted, purge not acknowledged), 12 (error: retried).
    assert report["pending"]["rows"] == 7
    assert (report["pending"]["records"], report["pending"]["deletions"], report["pending"]["adopt"]) == (6, 1, 0)
    assert report["pending"]["oldest_last_updated"] == "2026-03-07T08:00:00"
    assert report["pending"]["oldest_age_seconds"] == (3 * 24 + 4) * 3600
    assert report["ledger"] == {
        "table": f"{t}_ledger",
        "exists": True,
        "children_acknowledged": 3,
        "children_purged": 1,
        "last_acknowledged_at": "2026-03-08T21:04:33Z",  # the ledger's times are UTC, as the tool writes them
        # Rows whose child the ledger does not know: 1, 2, 3, 8 and 12 are sent whole, 9 purged.
        "rows_without_entry": {"adopt": 0, "changed_since_sent": 0, "with_purges": 0, "whole": 5, "purge": 1},
        "children_in_doubt": 1,
        "in_doubt_since": "2026-03-09T02:00:05Z",
        "orphans": {"count": 0, "examples": []},  # every child the ledger holds, or in doubt, has its row
    }
    recent = report["runs"]["recent"]
    assert [r["run_id"] for r in recent] == ["20260310T020000Z", "20260309T020000Z"]  # newest first, --runs 2
    assert recent[0]["sent"] == 3 and recent[0]["failed"] == 4
    assert recent[0]["exit_code"] == 5 and recent[0]["seconds"] == 4000.0
    assert set(recent[0]) == {
        "run_id", "started_at", "seconds", "dry_run", "rows_read", "sent", "purged", "unchanged", "adopted",
        "written_for_review", "invalid", "skipped", "rejected", "failed", "in_doubt", "changed_during_run",
        "not_reached", "exit_code",
    }  # fmt: skip


def test_status_text_output(known_state, tmp_path):
    write_runs(tmp_path / "logs")
    code, out = run_status(known_state, tmp_path)
    assert code == ExitCode.OK
    lines = out.splitlines()
    t = known_state.table
    assert lines[0] == f"Staging table {t}: 12 rows"
    header = next(line for line in lines if line.strip().startswith("submission_status"))
    assert header.split() == ["submission_status", "New", "Updated", "Unchanged", "Deleted", "total"]
    start = lines.index(header)
    matrix = lines[start : lines.index("", start)]
    row = {line.split()[0]: line.split()[1:] for line in matrix}
    assert row["Pending"] == ["3", "1", "-", "1", "5"]
    assert row["total"] == ["6", "1", "3", "2", "12"]
    # The rows waiting add up, as the table above shows them: Pending New, Updated and Error (5), the
    # child in doubt (Sent, Unchanged), and the deleted child whose purge is not acknowledged.
    assert "Waiting for the next run: 7 rows: 6 records to send, 1 deletion to send; the oldest was last updated" in out
    assert "invalid: social_care_episodes[].child_protection_plans[].end_reason" in out
    assert "skipped: duplicate child" in out
    assert f"Submission ledger {t}_ledger: 3 children acknowledged by DfE, 1 purged" in out
    assert "In doubt: 1 child in a batch that was sent but whose answer was never recorded" in out
    assert "Last 3 runs" in out and "2026-03-10 02:00" in out and "1 h 06 min" in out and "1 min 15 s" in out
    assert "(1 run summary file could not be read and was left out.)" in out


def test_status_never_shows_values(known_state, tmp_path):
    for as_json in (False, True):
        _, out = run_status(known_state, tmp_path, as_json=as_json)
        assert MARKER_VALUE not in out and MARKER_NAME not in out
        assert "C000000" not in out  # no la_child_id either


def test_status_is_read_only_and_says_when_the_ledger_is_missing(db_path, tmp_path):
    with Database.open_sqlite(db_path) as db:
        load_children(db, TABLE, make_children(3, seed=2))
        before = sorted(r[0] for r in db.query("SELECT name FROM sqlite_master"))
    code, out = run_status(Staging.sqlite(db_path), tmp_path)
    assert code == ExitCode.OK
    assert "does not exist yet" in out and "No run summaries" in out
    _, text = run_status(Staging.sqlite(db_path), tmp_path, as_json=True)
    data = json.loads(text)
    assert data["ledger"]["exists"] is False and data["ledger"]["children_acknowledged"] is None
    assert data["pending"]["rows"] == 3 and data["runs"]["recent"] == []
    with Database.open_sqlite(db_path) as db:
        assert sorted(r[0] for r in db.query("SELECT name FROM sqlite_master")) == before
    assert not (tmp_path / "logs").exists()


def test_status_on_a_missing_table_is_a_database_error(tmp_path):
    path = tmp_path / "empty.db"
    Database.open_sqlite(path).close()
    with pytest.raises(DatabaseError, match="was not found"):
        run_status(Staging.sqlite(path), tmp_path)


def test_count_candidates_matches_what_a_run_reads(known_state):
    with known_state.open() as db:
        table = StagingTable(db, known_state.table)
        read = [row.id for row in table.iter_candidates()]
        assert table.count_candidates() == len(read) == 7
        assert 5 in read  # sent, but in doubt
        assert table.count_candidates(limit=4) == 4
        assert table.count_candidates(all_rows=True) == 12
        # validate's: the rows held back as invalid too (10 and 11), counted as read.
        checked = [row.id for row in table.iter_candidates(held_back=True)]
        assert table.count_candidates(held_back=True) == len(checked) == 9 and {10, 11} <= set(checked)


def test_reason_keys_show_only_schema_fields_and_the_tools_own_words():
    keys = ReasonKeys(schema_field_names(load_bundled_schema()))
    assert keys.key("invalid: child_details.postcode: value is longer than 8 characters") == (
        "invalid: child_details.postcode"
    )
    assert keys.key("invalid: json_payload is not valid JSON (line 3, column 7)") == (
        "invalid: json_payload is not valid JSON"
    )
    assert keys.key("invalid: the request built for this record is invalid: x: 'Smith'") == (
        "invalid: the request built for this record is invalid"
    )
    # A value where a field path would be, or text the tool did not write: a category only.
    assert keys.key("invalid: Smith: is wrong") == f"invalid: {HIDDEN_REASON}"
    assert keys.key("rejected by DfE: DfE rejected this record: child_details.sex: 'Q'") == (
        "rejected by DfE: child_details.sex"
    )
    assert keys.key("Error 400: Smith, John, 2015-01-01") == HIDDEN_REASON
    assert keys.key("not sent, will retry next run: DfE answered 204") == "not sent, will be retried next run"
    assert keys.key("not sent: row_state 'Zz' is not one of New, Updated, Unchanged, Deleted").startswith(
        "skipped: row_state"
    )
    assert keys.key(None) == "no reason recorded"


@pytest.mark.parametrize(
    "text,key",
    [
        ('{"la_child_id": "C1", "la_child_id": "C2"}', "invalid: la_child_id"),
        ('{"child_details": {"sex": "F", "sex": "M"}}', "invalid: child_details.sex"),
        (f'{{"child_details": {{"{MARKER_NAME}": 1, "{MARKER_NAME}": 2}}}}', f"invalid: {HIDDEN_REASON}"),
        ('\ufeff{"la_child_id": "C1"}', "invalid: json_payload starts with a byte-order mark"),
        (
            '{"health_and_wellbeing": {"sdq_assessments": [{"score": 1e400}]}}',
            "invalid: health_and_wellbeing.sdq_assessments[].score",
        ),
    ],
)
def test_status_names_a_record_that_means_two_things_by_its_field(text, key):
    """What the run writes for a key written twice, a byte-order mark or a number too large, as status shows it."""
    with pytest.raises(Invalid) as problem:
        parse_payload(text)
    keys = ReasonKeys(schema_field_names(load_bundled_schema()))
    assert keys.key(INVALID + problem.value.reason) == key
    assert MARKER_NAME not in problem.value.reason and "1e400" not in problem.value.reason


def test_reason_keys_for_text_that_is_not_utf8_name_the_column_and_nothing_it_holds():
    from api_pipeline import reasons
    from api_pipeline.job.rows import unreadable
    from api_pipeline.store.odbc import decode_utf8_text

    keys = ReasonKeys(schema_field_names(load_bundled_schema()))
    text = decode_utf8_text(b'{"first_name": "Bront\xe9"}')
    payload, _ = unreadable("json_payload", text)
    assert keys.key(reasons.INVALID + payload) == "invalid: json_payload is not UTF-8 text"
    for column in ("person_id", "row_state"):
        reason, _ = unreadable(column, text)
        assert keys.key(reasons.SKIPPED + reason) == f"skipped: {column} is not UTF-8 text"


def test_timestamps_from_sqlite_text_and_odbc_datetimes():
    assert parse_timestamp("2026-03-01 21:04:33") == datetime(2026, 3, 1, 21, 4, 33)
    assert parse_timestamp("2026-03-01 21:04:33.1234567") == datetime(2026, 3, 1, 21, 4, 33, 123456)
    assert parse_timestamp("2026-03-01T21:04:33Z") == datetime(2026, 3, 1, 21, 4, 33, tzinfo=timezone.utc)
    assert parse_timestamp(datetime(2026, 3, 1, 9, 0)) == datetime(2026, 3, 1, 9, 0)
    assert parse_timestamp("") is None and parse_timestamp(None) is None and parse_timestamp("soon") is None
    then = datetime(2026, 3, 1, 12, 0)
    assert age_seconds(then, naive_is_utc=True, now=then.replace(tzinfo=timezone.utc) + timedelta(hours=2)) == 7200
    assert age_seconds(then.replace(tzinfo=timezone.utc), naive_is_utc=False, now=NOW) > 0
    assert age_seconds(NOW + timedelta(days=1), naive_is_utc=False, now=NOW) == 0  # clock skew: never negative
    assert describe_age(3 * 86400 + 4 * 3600 + 59) == "3 days 4 hours"
    assert describe_age(3600 + 60) == "1 hour 1 minute"
    assert describe_age(59) == "0 minutes"


def test_format_status_without_last_updated_column():
    from api_pipeline.cli.status_report import StatusReport

    report = StatusReport(table="t", pending_rows=4, last_updated_column=False)
    assert (
        "Waiting for the next run: 4 rows: 4 records to send (age unknown: the table has no last_updated column)."
        in format_status(report)
    )


def test_status_through_the_cli(known_state, tmp_path):
    env = known_state.env | {"LOG_DIR": str(tmp_path / "logs")}
    write_runs(tmp_path / "logs")
    result = run_cli(["status", "--runs", "1", "--json"], environ=env, cwd=tmp_path)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["total_rows"] == 12 and len(data["runs"]["recent"]) == 1
    text = run_cli(["status"], environ=env, cwd=tmp_path)
    assert text.code == 0 and text.out.startswith(f"Staging table {known_state.table}: 12 rows")
