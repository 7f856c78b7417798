"""A child's identity has one spelling, and both schema checks must pass a record (issue 23, items 1 and 4).

The schema is judged as JSON Schema defines it (patterns are ECMA-262 regular expressions, in
which ``$`` matches only at the very end), by both validators alike; a record either of them
would refuse is not sent. The ``la_child_id`` a record holds is compared, keys the ledger and
goes in the request exactly as written; ids that differ only in letter case are held back
together, and SQL Server's ledger compares them as two keys.
"""

from __future__ import annotations

import copy
import json
import re

import pytest

from api_pipeline.cli import diagnostics
from api_pipeline.dfe.schema import DISAGREEMENT, RecordValidator, ecma_pattern, load_bundled_schema
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.dfe_model import SimulatedDfeValidator as ModelValidator
from api_pipeline.rehearsal.dfe_model import load_default_schema
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.columns import LEDGER_SPEC, ColumnInfo
from api_pipeline.store.db import Database
from api_pipeline.store.dialects import MSSQL
from api_pipeline.store.sql_server import BINARY_COLLATION
from api_pipeline.store.staging import StagingTable
from api_pipeline.store.tables import check_columns, ledger_ddl
from conftest import ctx, db_env, insert, rows, run_cli, set_payload, settings_for, staging_on_every_database
from fake_sql_server import SQL_SERVER_COLUMNS, assert_tsql, stand_in_settings

# On SQL Server's dialect (Babelfish) too.
staging = staging_on_every_database()

FIRST = next(make_children(1, seed=230))


def _child(**changes) -> dict:
    record = copy.deepcopy(FIRST)
    record.update(changes)
    return record


# ---------------------------------------------------------------------------
# Patterns as JSON Schema matches them
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern,text,matches",
    [
        (r"^[A-Za-z0-9]+$", "C0000001", True),
        (r"^[A-Za-z0-9]+$", "C0000001\n", False),  # Python's $ matches before a final newline
        (r"^[A-Za-z0-9_-]*$", "M-1\n", False),
        (r"^\d+$", "\u0661\u0662", False),  # ECMA's \d is ASCII
        (r"^\w+$", "\u00e9", False),
        (r"^a\sb$", "a\u00a0b", True),  # ECMA's \s includes the no-break space
        (r"^[$]+$", "$$", True),  # a $ in a class is a dollar
        (r"^a\$$", "a$", True),
    ],
)
def test_patterns_match_as_ecma_262_does(pattern, text, matches):
    assert bool(ecma_pattern(pattern).search(text)) is matches


@pytest.mark.parametrize("fast", [True, False], ids=["jsonschema-rs first", "reference alone"])
@pytest.mark.parametrize(
    "change,path",
    [
        ({"la_child_id": FIRST["la_child_id"] + "\n"}, "la_child_id"),
        ({"mis_child_id": "MIS001\n"}, "mis_child_id"),
        ({"child_details": {**FIRST["child_details"], "date_of_birth": "0000-01-01"}}, "child_details.date_of_birth"),
    ],
    ids=["id with a final newline", "mis id with a final newline", "year 0"],
)
def test_both_validators_refuse_what_either_would(fast, change, path):
    validator = RecordValidator(load_bundled_schema(), fast=fast)
    assert validator.problems(_child()) == []
    problems = validator.problems(_child(**change))
    assert [p for p, _ in problems] == [path]
    assert "0000" not in problems[0][1]


def test_a_record_the_two_validators_disagree_about_is_invalid():
    """The reference keeps Python's ASCII \\S inside a class, where jsonschema-rs follows ECMA:
    a real disagreement. A record either refuses is not sent."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": r"^[\S]+$"}}}
    assert RecordValidator(schema, fast=False).problems({"name": "a\u00a0b"}) == []
    assert RecordValidator(schema).problems({"name": "a\u00a0b"}) == [("(record)", DISAGREEMENT)]
    assert RecordValidator(schema).problems({"name": "ab"}) == []


def test_the_simulator_refuses_an_id_with_a_final_newline_as_dfe_would():
    model = ModelValidator(load_default_schema())
    assert model.errors(_child()) == []
    assert any(e.startswith("la_child_id:") for e in model.errors(_child(la_child_id="C1\n")))


# ---------------------------------------------------------------------------
# One spelling of a child's id, end to end
# ---------------------------------------------------------------------------


def test_an_id_changed_to_end_in_a_newline_is_invalid_and_dfe_keeps_one_child(simulator, staging, tmp_path):
    """The issue's case: DfE ended up holding the old id and a new one with a newline, holding
    only child_details, because the id was compared trimmed and sent as written."""
    children = list(make_children(3, seed=231))
    insert(staging, children)
    assert execute_run(settings_for(simulator, staging)).outcomes["sent"] == 3
    held = copy.deepcopy(simulator.snapshot())
    changed = copy.deepcopy(children[0])
    changed["la_child_id"] += "\n"
    changed["child_details"]["first_name"] = "Renamed"
    set_payload(staging, children[0]["la_child_id"], changed)
    simulator.clear_log()

    summary = execute_run(settings_for(simulator, staging))

    assert summary.outcomes["invalid"] == 1 and summary.outcomes["sent"] == 0
    assert simulator.snapshot() == held  # no second child, no change to the first
    assert simulator.records_accepted == 3
    (row,) = [r for r in rows(staging) if r["person_id"] == children[0]["la_child_id"]]
    assert row["submission_status"] == "Invalid" and "la_child_id" in row["api_response"]
    result = run_cli(["validate", "--all"], environ=db_env(staging), cwd=tmp_path)
    assert result.code == 1 and "la_child_id" in result.out + result.err


def test_an_id_with_a_space_at_either_end_is_invalid_whatever_the_schema_allows(simulator, db_path, tmp_path):
    """The id is sent as written, so one that is not its own normal form is refused even under a
    PAYLOAD_SCHEMA without DfE's pattern."""
    loose = load_bundled_schema()
    del loose["properties"]["la_child_id"]["pattern"]
    schema = tmp_path / "loose.json"
    schema.write_text(json.dumps(loose), encoding="utf-8")
    padded = _child(la_child_id=" " + FIRST["la_child_id"])
    insert(db_path, [padded, *make_children(2, seed=232, first=100)])
    summary = execute_run(settings_for(simulator, db_path, PAYLOAD_SCHEMA=str(schema)))
    assert summary.outcomes == {**summary.outcomes, "sent": 2, "invalid": 1}
    assert padded["la_child_id"] not in simulator.snapshot() and FIRST["la_child_id"] not in simulator.snapshot()
    assert summary.invalid_reasons["la_child_id padded"] == 1


def _set_person_id(staging, la_child_id: str, person_id: str) -> None:
    with staging.open() as db, db.transaction():
        db.execute(f"UPDATE {staging.table} SET person_id = ? WHERE person_id = ?", (person_id, la_child_id))


def test_ids_that_differ_only_in_case_are_held_back_together(simulator, staging):
    """SQL Server's usual collation takes AB12 and ab12 for one key, and DfE may take them for one
    child: neither is sent, each with a reason that says why; the others go."""
    upper, lower = _child(la_child_id="CASE0001"), _child(la_child_id="case0001")
    others = list(make_children(3, seed=233, first=100))
    insert(staging, [upper, *others, lower])

    summary = execute_run(settings_for(simulator, staging))

    assert summary.outcomes["sent"] == 3 and summary.outcomes["skipped"] == 2
    assert not {"CASE0001", "case0001"} & set(simulator.snapshot())
    held = [r for r in rows(staging) if r["person_id"].lower() == "case0001"]
    assert [r["submission_status"] for r in held] == ["Pending", "Pending"]
    assert all("differ only in letter case" in r["api_response"] for r in held)


def test_ids_that_differ_only_in_case_are_held_back_when_only_their_records_say_so(simulator, db_path):
    """Rows without a person_id are known by their record's la_child_id: the same rule."""
    upper, lower = _child(la_child_id="CASE0002"), _child(la_child_id="Case0002")
    insert(db_path, [upper, lower, *make_children(2, seed=234, first=100)])
    with Database.open_sqlite(db_path) as db, db.transaction():
        db.execute("UPDATE ssd_api_data_staging SET person_id = NULL WHERE LOWER(person_id) = 'case0002'")
    summary = execute_run(settings_for(simulator, db_path))
    assert summary.outcomes["sent"] == 2 and summary.outcomes["skipped"] == 2
    assert not {"CASE0002", "Case0002"} & set(simulator.snapshot())


def test_a_person_id_in_another_case_than_its_record_is_one_child_sent_as_the_record_spells_it(simulator, staging):
    """One row, person_id 'case0003' and la_child_id 'CASE0003': not a duplicate of itself."""
    child = _child(la_child_id="CASE0003")
    insert(staging, [child])
    _set_person_id(staging, "CASE0003", "case0003")
    summary = execute_run(settings_for(simulator, staging))
    assert summary.outcomes["sent"] == 1 and summary.outcomes["skipped"] == 0
    assert set(simulator.snapshot()) == {"CASE0003"}
    simulator.clear_log()
    again = execute_run(settings_for(simulator, staging))
    assert again.outcomes["sent"] == 0 and not simulator.request_log()


# ---------------------------------------------------------------------------
# SQL Server: the tool's keys compare character for character
# ---------------------------------------------------------------------------


def test_sql_server_ledger_in_doubt_and_lock_keys_have_a_binary_collation(recorder):
    assert diagnostics.init_db(stand_in_settings(), ctx(), False) == 0
    created = [s for s in recorder.statements if "CREATE TABLE" in s]
    for suffix, key in (("_ledger", "la_child_id"), ("_in_doubt", "la_child_id"), ("_run_lock", "lock_name")):
        (ddl,) = [s for s in created if f"CREATE TABLE ssd_development.ssd_api_data_staging{suffix} (" in s]
        assert re.search(rf"\({key} NVARCHAR\(\d+\) COLLATE {BINARY_COLLATION} NOT NULL PRIMARY KEY", ddl), ddl
        assert_tsql(ddl)


def test_init_db_print_gives_the_dba_the_binary_collation(tmp_path):
    result = run_cli(["init-db", "--print", "--dialect", "mssql"], cwd=tmp_path)
    assert result.code == 0
    assert f"la_child_id NVARCHAR(36) COLLATE {BINARY_COLLATION} NOT NULL PRIMARY KEY" in result.out
    assert f"lock_name NVARCHAR(128) COLLATE {BINARY_COLLATION} NOT NULL PRIMARY KEY" in result.out


def test_sql_server_joins_the_ledger_by_a_binary_comparison(recorder):
    recorder.tables["ssd_api_data_staging"] = SQL_SERVER_COLUMNS
    recorder.tables["ssd_api_data_staging_ledger"] = [("la_child_id", "nvarchar", 36)]
    recorder.tables["ssd_api_data_staging_in_flight"] = [("batch_id", "nvarchar", 64)]
    recorder.tables["ssd_api_data_staging_in_doubt"] = [("la_child_id", "nvarchar", 36)]
    with Database.connect(stand_in_settings().db_connection_string) as db:  # type: ignore[arg-type]
        list(StagingTable(db, "ssd_api_data_staging").iter_candidates())
    (read,) = [s for s in recorder.statements if "LEFT JOIN ssd_api_data_staging_ledger l" in s]
    person = f"LTRIM(RTRIM(t.person_id)) COLLATE {BINARY_COLLATION}"
    assert f"l.la_child_id = {person}" in read and f"f.la_child_id = {person}" in read
    assert_tsql(read)


def test_duplicate_person_ids_are_found_ignoring_case(recorder):
    recorder.tables["ssd_api_data_staging"] = SQL_SERVER_COLUMNS
    with Database.connect(stand_in_settings().db_connection_string) as db:  # type: ignore[arg-type]
        StagingTable(db, "ssd_api_data_staging").duplicate_person_ids()
    (sql,) = [s for s in recorder.statements if "HAVING COUNT(*) > 1" in s]
    assert "GROUP BY LOWER(LTRIM(RTRIM(person_id)))" in sql
    assert_tsql(sql)


def test_test_schema_warns_of_a_ledger_key_that_ignores_case():
    case_blind = [ColumnInfo("la_child_id", "nvarchar", 36, nullable=False, key=True, collation="Latin1_General_CI_AS")]
    (issue,) = [i for i in check_columns(MSSQL, "t_ledger", LEDGER_SPEC, case_blind) if i.column == "la_child_id"]
    assert not issue.blocking and "Latin1_General_CI_AS" in issue.reason and BINARY_COLLATION in issue.reason
    for exact in ("Latin1_General_100_BIN2", "Latin1_General_BIN", "bbf_unicode_bin2"):
        binary = [ColumnInfo("la_child_id", "nvarchar", 36, nullable=False, key=True, collation=exact)]
        assert not [i for i in check_columns(MSSQL, "t_ledger", LEDGER_SPEC, binary) if i.column == "la_child_id"]
    assert f"COLLATE {BINARY_COLLATION}" in ledger_ddl(MSSQL, "t_ledger")
