"""Bad staging data: each case gets a clear per-row reason, the rest of the batch goes through.

Each case puts one bad row among good ones, runs the real pipeline against the real
simulator, and checks the bad row's final status and reason, that the simulator
received nothing for it, and that every other record of the same batch was accepted.
"""

from __future__ import annotations

import contextlib
import json

import pytest

from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from api_pipeline.store.odbc import UnreadableText
from api_pipeline.store.staging import StagingTable
from api_pipeline.store.write_back import RowUpdate
from conftest import TABLE, insert, rows, settings_for

BAD_ID = "BADROW001"


def _record(**changes) -> dict:
    record = next(make_children(1, seed=99))
    record["la_child_id"] = BAD_ID
    record.update(changes)
    return record


def _set_row(db_path, **columns) -> None:
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with Database.open_sqlite(db_path) as db, db.transaction():
        db.execute(f"UPDATE {TABLE} SET {assignments} WHERE person_id = ?", (*columns.values(), BAD_ID))


def _text_with(old: str, new: str) -> str:
    """The bad row's record as JSON text with one edit that a dict cannot hold (a key written twice)."""
    text = json.dumps(_record())
    assert old in text
    return text.replace(old, new, 1)


# (case id, how to break the row, expected status, words expected in api_response)
CASES = [
    ("not json", {"json_payload": '{"la_child_id": "BADROW001", '}, "Invalid", "not valid JSON"),
    ("empty", {"json_payload": "   "}, "Invalid", "json_payload is empty"),
    (
        "NaN is not JSON",
        {"json_payload": '{"la_child_id": "BADROW001", "x": NaN}'},
        "Invalid",
        "NaN is not a JSON value",
    ),
    ("json array", {"json_payload": "[1, 2]"}, "Invalid", "JSON list, not an object"),
    ("json string", {"json_payload": '"hello"'}, "Invalid", "JSON str, not an object"),
    (
        "nested 1,000 levels deep",
        {"json_payload": '{"la_child_id": "BADROW001", "x": ' + "[" * 1000 + "]" * 1000 + "}"},
        "Invalid",
        "nested more than 64 levels deep",
    ),
    ("unknown row_state", {"row_state": "Archived"}, "Pending", "row_state 'Archived'"),
    (
        "over 1 MB",
        {"json_payload": json.dumps(_record(child_details={"first_name": "A" * 1_100_000}))},
        "Invalid",
        "larger than 1 MB",
    ),
    (
        "text where a boolean is expected",
        {"json_payload": json.dumps(_record(child_details={"uasc_flag": "yes"}))},
        "Invalid",
        "child_details.uasc_flag: expected boolean, got str",
    ),
    (
        "null value",
        {"json_payload": json.dumps(_record(child_details={"postcode": None}))},
        "Invalid",
        "child_details.postcode: expected string, got null",
    ),
    (
        "id over 20 characters",
        {"json_payload": json.dumps(_record(la_child_id="X" * 21)), "person_id": "X" * 21},
        "Invalid",
        "la_child_id: a value is longer than 20 characters",
    ),
    (
        "impossible date",
        {"json_payload": json.dumps(_record(child_details={"date_of_birth": "2024-02-30"}))},
        "Invalid",
        "child_details.date_of_birth: a value is not a valid date",
    ),
    (
        "duplicate episode id",
        {
            "json_payload": json.dumps(
                _record(
                    social_care_episodes=[
                        {"social_care_episode_id": "E1", "referral_date": "2024-01-01"},
                        {"social_care_episode_id": "E1", "referral_date": "2024-02-01"},
                    ]
                )
            )
        },
        "Invalid",
        "social_care_episodes[1].social_care_episode_id: the same id appears twice",
    ),
    # A key twice in one object: SQL Server's JSON_VALUE reads the first, a JSON parser the last.
    (
        "la_child_id twice",
        {"json_payload": _text_with('"la_child_id": "BADROW001"', '"la_child_id": "BADROW001", "la_child_id": "C7"')},
        "Invalid",
        "la_child_id: this key appears more than once in one object",
    ),
    (
        "a key twice in an episode",
        {"json_payload": _text_with('"referral_source": "', '"referral_source": "1B", "referral_source": "')},
        "Invalid",
        "social_care_episodes[0].referral_source: this key appears more than once",
    ),
    (
        "a key the schema does not declare, twice",
        {"json_payload": _text_with('"sex": ', '"AAAA_secret": 1, "AAAA_secret": 2, "sex": ')},
        "Invalid",
        "child_details.<key not in the schema>: this key appears more than once",
    ),
    (
        "byte-order mark",
        {"json_payload": "\ufeff" + json.dumps(_record())},
        "Invalid",
        "json_payload starts with a byte-order mark (U+FEFF)",
    ),
    (
        "an integer beyond 64 bits",
        {"json_payload": _text_with('"score": ', '"score": 184467440737095516160, "x": ')},
        "Invalid",
        "health_and_wellbeing.sdq_assessments[0].score: json_payload holds a number too large",
    ),
    (
        "a number beyond a double",
        {"json_payload": _text_with('"score": ', '"score": 1e400, "x": ')},
        "Invalid",
        "health_and_wellbeing.sdq_assessments[0].score: json_payload holds a number too large",
    ),
]


@pytest.mark.parametrize("case,change,status,reason", CASES, ids=[c[0] for c in CASES])
def test_bad_row_is_isolated(simulator, db_path, case, change, status, reason):
    good = list(make_children(20, seed=31))
    insert(db_path, good[:10] + [_record()] + good[10:])
    _set_row(db_path, **change)
    summary = execute_run(settings_for(simulator, db_path))
    assert summary.outcomes["sent"] == 20
    assert summary.batches == 1  # the bad row shared a batch with the good ones
    assert set(simulator.snapshot()) == {c["la_child_id"] for c in good}
    (bad,) = [r for r in rows(db_path) if r["person_id"] not in {c["la_child_id"] for c in good}]
    assert bad["submission_status"] == status
    assert reason in bad["api_response"]
    # Nothing personal in the reason, whatever the case: no value, no key the schema does not declare.
    assert "AAAA" not in bad["api_response"] and "2024-02-30" not in bad["api_response"]
    assert "18446744" not in bad["api_response"] and "1e400" not in bad["api_response"]
    # A later run does not resend invalid rows; skipped rows are looked at again (and skipped again).
    simulator.clear_log()
    again = execute_run(settings_for(simulator, db_path))
    assert again.outcomes["sent"] == 0
    assert again.rows_read == (1 if status == "Pending" else 0)


def test_two_rows_for_one_child_are_skipped(simulator, db_path):
    good = list(make_children(5, seed=32))
    twin = dict(good[2])
    insert(db_path, good + [twin])
    summary = execute_run(settings_for(simulator, db_path))
    assert summary.outcomes["sent"] == 4 and summary.outcomes["skipped"] == 2
    assert good[2]["la_child_id"] not in simulator.snapshot()
    skipped = [r for r in rows(db_path) if r["person_id"] == good[2]["la_child_id"]]
    assert [r["submission_status"] for r in skipped] == ["Pending", "Pending"]
    assert all("the same child" in r["api_response"] for r in skipped)
    assert summary.invalid_reasons["duplicate child"] == 2


def test_a_bare_number_in_a_column_declared_json_is_invalid_and_the_rest_are_sent(simulator, tmp_path):
    """SQLite gives a column declared JSON numeric affinity: a bare number comes back as an int."""
    path = tmp_path / "json.db"
    with Database.open_sqlite(path) as db:
        db.execute(
            f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, person_id TEXT, legacy_id TEXT, "
            "json_payload JSON NOT NULL, previous_json_payload JSON, partial_json_payload JSON, current_hash BLOB, "
            "previous_hash BLOB, submission_status TEXT DEFAULT 'Pending', submission_timestamp TEXT, "
            "api_response TEXT, row_state TEXT DEFAULT 'New', last_updated TEXT)"
        )
    good = list(make_children(4, seed=36))
    insert(path, good[:2] + [_record()] + good[2:])
    with Database.open_sqlite(path) as db:
        db.execute(f"UPDATE {TABLE} SET json_payload = 12345 WHERE person_id = ?", (BAD_ID,))
        assert db.scalar(f"SELECT typeof(json_payload) FROM {TABLE} WHERE person_id = ?", (BAD_ID,)) == "integer"
    summary = execute_run(settings_for(simulator, path))
    assert summary.outcomes["sent"] == 4 and summary.outcomes["invalid"] == 1
    (bad,) = [r for r in rows(path) if r["person_id"] == BAD_ID]
    assert bad["submission_status"] == "Invalid" and "json_payload is a int, not JSON text" in bad["api_response"]


def test_unknown_status_is_treated_as_pending(simulator, db_path):
    insert(db_path, list(make_children(3, seed=33)), status="Queued", state="New")
    summary = execute_run(settings_for(simulator, db_path))
    assert summary.outcomes["sent"] == 3


def test_bad_previous_json_payload_does_not_matter(simulator, db_path):
    """The ledger, not previous_json_payload, is the baseline: garbage there changes nothing."""
    children = list(make_children(3, seed=34))
    insert(db_path, children)
    with Database.open_sqlite(db_path) as db, db.transaction():
        db.execute(f"UPDATE {TABLE} SET previous_json_payload = '{{not json'")
    assert execute_run(settings_for(simulator, db_path)).outcomes["sent"] == 3


def test_invalid_row_is_retried_once_its_payload_changes(simulator, db_path):
    insert(db_path, [_record(child_details={"sex": "Female"})])
    execute_run(settings_for(simulator, db_path))
    assert rows(db_path)[0]["submission_status"] == "Invalid"
    fixed = _record(child_details={"sex": "F"})
    with Database.open_sqlite(db_path) as db, db.transaction():
        db.execute(
            f"UPDATE {TABLE} SET json_payload = ?, submission_status = 'Pending', row_state = 'Updated'",
            (json.dumps(fixed),),
        )
    assert execute_run(settings_for(simulator, db_path)).outcomes["sent"] == 1
    assert simulator.snapshot()[BAD_ID]["child_details"] == {"sex": "F"}


def test_summary_counts_invalid_records_by_reason(simulator, db_path):
    children = list(make_children(6, seed=35))
    children[0]["child_details"]["sex"] = "Female"
    children[1]["child_details"]["sex"] = "Male"
    children[2]["social_care_episodes"][0]["referral_source"] = "ABC"
    insert(db_path, children)
    summary = execute_run(settings_for(simulator, db_path))
    assert summary.invalid_reasons["schema: child_details.sex"] == 2
    assert summary.invalid_reasons["schema: social_care_episodes[].referral_source"] == 1
    assert len(summary.examples["schema: child_details.sex"]) == 2


def test_a_record_naming_two_children_claims_neither(simulator, db_path):
    """Rows without a person_id are known by their record when duplicates are looked for: one whose
    la_child_id is written twice (SQL Server reads the first, a JSON parser the last) is invalid, and
    does not hold back the child its second la_child_id names."""
    children = list(make_children(3, seed=37))
    other = children[2]["la_child_id"]
    insert(db_path, children + [_record()])
    text = json.dumps(_record()).replace(
        f'"la_child_id": "{BAD_ID}"', f'"la_child_id": "{BAD_ID}", "la_child_id": "{other}"'
    )
    with Database.open_sqlite(db_path) as db, db.transaction():
        db.execute(f"UPDATE {TABLE} SET json_payload = ?, person_id = NULL WHERE person_id = ?", (text, BAD_ID))
        db.execute(f"UPDATE {TABLE} SET person_id = NULL WHERE person_id = ?", (other,))
    summary = execute_run(settings_for(simulator, db_path))
    assert summary.outcomes["sent"] == 3 and summary.outcomes["invalid"] == 1 and summary.outcomes["skipped"] == 0
    assert simulator.snapshot()[other]["child_details"] == children[2]["child_details"]
    (bad,) = [r for r in rows(db_path) if r["submission_status"] == "Invalid"]
    assert bad["api_response"].startswith("invalid: la_child_id: this key appears more than once")


# ---------------------------------------------------------------------------
# Text that is not UTF-8 as stored (issue 23.2): a name saved as Windows-1252 in SQLite
# ---------------------------------------------------------------------------

PLANTED_NAME = "Bront\u00e9"  # é is one byte (0xE9) in Windows-1252, which is not UTF-8
PLANTED_UPN = "LEAKUPN000023"


def windows_1252_record() -> tuple[dict, bytes]:
    """A record holding a planted name and UPN, and its JSON as Windows-1252 bytes."""
    record = _record()
    record["child_details"].update(first_name=PLANTED_NAME, unique_pupil_number=PLANTED_UPN)
    return record, json.dumps(record, ensure_ascii=False).encode("cp1252")


def store_bytes(path, column: str, raw: bytes, *, row_id: int) -> None:
    """Put ``raw`` in a TEXT column as it is: SQLite stores it without checking it is UTF-8."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"UPDATE {TABLE} SET {column} = CAST(? AS TEXT) WHERE id = ?", (raw, row_id))
        assert conn.execute(f"SELECT typeof({column}) FROM {TABLE} WHERE id = ?", (row_id,)).fetchone() == ("text",)


def test_a_payload_that_is_not_utf8_is_invalid_and_the_rest_are_sent(simulator, db_path):
    good = list(make_children(6, seed=37))
    record, raw = windows_1252_record()
    insert(db_path, good[:3] + [record] + good[3:])
    store_bytes(db_path, "json_payload", raw, row_id=4)
    summary = execute_run(settings_for(simulator, db_path))
    assert summary.outcomes["sent"] == 6 and summary.outcomes["invalid"] == 1
    assert set(simulator.snapshot()) == {c["la_child_id"] for c in good}
    assert summary.invalid_reasons == {"json_payload is not UTF-8 text": 1}
    (bad,) = [r for r in rows(db_path) if r["id"] == 4]
    byte = raw.index(b"\xe9") + 1
    assert bad["submission_status"] == "Invalid"
    assert bad["api_response"].startswith(f"invalid: json_payload is not UTF-8 text (byte {byte}): ")
    assert "Windows-1252" in bad["api_response"]
    # Marked by its bytes as stored (no altered copy was written over them), and not read again.
    assert bad["json_payload"].raw == raw
    again = execute_run(settings_for(simulator, db_path))
    assert again.rows_read == 0 and again.outcomes["sent"] == 0


@pytest.mark.parametrize(
    "column, status, reason",
    [
        ("person_id", "Pending", "not sent: person_id is not UTF-8 text (byte 6): "),
        ("row_state", "Pending", "not sent: row_state is not UTF-8 text (byte 3): "),
    ],
)
def test_a_key_column_that_is_not_utf8_holds_its_row_back_and_the_rest_are_sent(
    simulator, db_path, column, status, reason
):
    good = list(make_children(4, seed=38))
    insert(db_path, good[:2] + [_record()] + good[2:])
    store_bytes(db_path, column, {"person_id": b"Bront\xe9", "row_state": b"Ne\xe9"}[column], row_id=3)
    summary = execute_run(settings_for(simulator, db_path))
    assert summary.outcomes["sent"] == 4 and summary.outcomes["skipped"] == 1
    assert set(simulator.snapshot()) == {c["la_child_id"] for c in good}
    assert summary.invalid_reasons == {f"{column} is not UTF-8 text": 1}
    (held,) = [r for r in rows(db_path) if r["id"] == 3]
    assert held["submission_status"] == status and held["api_response"].startswith(reason)
    # Looked at again next run, and sent once the column is fixed.
    with Database.open_sqlite(db_path) as db, db.transaction():
        db.execute(f"UPDATE {TABLE} SET person_id = ?, row_state = 'New' WHERE id = 3", (BAD_ID,))
    assert execute_run(settings_for(simulator, db_path)).outcomes["sent"] == 1
    assert BAD_ID in simulator.snapshot()


def test_other_columns_that_are_not_utf8_do_not_stop_the_row(simulator, db_path):
    """A status that is not UTF-8 is an unknown status (pending); an earlier tool's copy or note
    that is not says nothing usable, and the record is sent whole."""
    children = list(make_children(3, seed=39))
    insert(db_path, children)
    store_bytes(db_path, "submission_status", b"Pend\xe9", row_id=1)
    store_bytes(db_path, "previous_json_payload", windows_1252_record()[1], row_id=2)
    store_bytes(db_path, "api_response", b"caf\xe9", row_id=3)
    summary = execute_run(settings_for(simulator, db_path))
    assert summary.outcomes["sent"] == 3 and not summary.problems
    assert [r["submission_status"] for r in rows(db_path)] == ["Sent", "Sent", "Sent"]


def test_the_optimistic_check_compares_text_that_is_not_utf8_by_its_bytes(db_path):
    """The write-back's check binds the bytes as stored, never the text as read (with U+FFFD)."""
    insert(db_path, [_record()])
    raw = windows_1252_record()[1]
    store_bytes(db_path, "json_payload", raw, row_id=1)
    with Database.open_sqlite(db_path) as db:
        table = StagingTable(db, TABLE)
        (row,) = table.iter_candidates()
        assert isinstance(row.json_payload, UnreadableText) and row.json_payload.raw == raw
        d = db.dialect
        same = f"SELECT COUNT(*) FROM {TABLE} WHERE id = 1 AND {d.same_stored_text('json_payload')}"
        assert db.scalar(same, (d.expected_text(row.json_payload),)) == 1
        assert db.scalar(same, (str(row.json_payload),)) == 0  # the text as read is not what is stored
        # Changed by the council's SQL since it was read (still not UTF-8): the row is left alone.
        store_bytes(db_path, "json_payload", raw.replace(b"\xe9", b"\xe8"), row_id=1)
        note = RowUpdate.unsent(row, "Invalid", "invalid: ...")
        assert table.write_back([note], []) == 1
    assert rows(db_path)[0]["submission_status"] == "Pending"


def test_sqlites_own_message_about_text_it_cannot_decode_is_never_shown():
    """Behind the text factory, a guard: sqlite3's own decoding fails with the start of the value in its
    message, and the error the tool makes of it (what stderr, the log and the report show) names the column only."""
    import sqlite3

    from api_pipeline.store.db import _sqlite_error

    raw = windows_1252_record()[1]
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE t (json_payload TEXT)")
        conn.execute("INSERT INTO t VALUES (CAST(? AS TEXT))", (raw,))
        with pytest.raises(sqlite3.OperationalError) as caught:
            conn.execute("SELECT json_payload FROM t").fetchall()
    assert BAD_ID in str(caught.value)  # what sqlite3 says
    error = _sqlite_error(caught.value)
    assert error.kind == "undecodable"
    assert str(error) == "database error: Could not decode to UTF-8 column 'json_payload'"
