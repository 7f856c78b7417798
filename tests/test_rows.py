"""job/rows.py as a module: a row's record, the child it speaks for, and whether it is that child's
only row. On real SQLite staging tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api_pipeline import reasons
from api_pipeline.errors import Invalid, Later, Skip
from api_pipeline.job.rows import DUPLICATE_CHILD, Identities, child_key, child_of, parse_payload
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from api_pipeline.store.staging import StagingTable
from conftest import TABLE, insert


def test_child_of_is_the_records_la_child_id_exactly_as_written() -> None:
    assert child_of({"la_child_id": "Child-01"}) == "Child-01"
    for record in ({}, {"la_child_id": None}, {"la_child_id": "  "}, {"la_child_id": 7}):
        with pytest.raises(Invalid) as caught:
            child_of(record)
        assert caught.value.reason == reasons.NO_CHILD_ID
    with pytest.raises(Invalid) as caught:
        child_of({"la_child_id": "Child-01 "})
    assert caught.value.reason == reasons.CHILD_ID_PADDED


def test_ids_that_differ_only_in_case_or_trailing_spaces_share_a_key() -> None:
    assert child_key("Child-01") == child_key("CHILD-01 ") == child_key("child-01")
    assert child_key("Child-01") != child_key("Child-02")


def test_parse_payload_gives_a_record_or_says_why_not() -> None:
    assert parse_payload('{"la_child_id": "A1"}') == {"la_child_id": "A1"}
    assert parse_payload(b'{"la_child_id": "A1"}') == {"la_child_id": "A1"}
    for text, key in [("", "empty payload"), ("{", "not JSON"), ("[1]", "not a JSON object"), (7, "not text")]:
        with pytest.raises(Invalid) as caught:
            parse_payload(text)
        assert caught.value.keys == (key,), text
    with pytest.raises(Invalid):
        parse_payload('{"la_child_id": "A1", "la_child_id": "A2"}')  # a key twice: readers differ


def identities(db_path: Path) -> tuple[Database, Identities]:
    db = Database.open_sqlite(db_path)
    return db, Identities(StagingTable(db, TABLE))


def test_a_child_on_two_rows_is_known_before_anything_is_sent_and_neither_row_goes(db_path: Path) -> None:
    children = list(make_children(3, seed=276))
    twin = dict(children[0], la_child_id=children[0]["la_child_id"].lower())  # another row, another case
    insert(db_path, [*children, twin])
    db, who = identities(db_path)
    with db:
        who.find_duplicates()
        assert who.duplicates == {child_key(children[0]["la_child_id"])}
        rows = list(who.table.iter_candidates())
        for row in rows:
            if child_key(row.person_id or "") in who.duplicates:
                with pytest.raises(Skip) as caught:
                    who.check_row(row)
                assert (caught.value.reason, caught.value.key) == DUPLICATE_CHILD
            else:
                who.check_row(row)
                assert who.identify(row, child_of(parse_payload(row.json_payload))) is row


def test_a_row_whose_person_id_is_another_id_is_looked_at_last_with_its_ledger(db_path: Path) -> None:
    children = list(make_children(2, seed=277))
    insert(db_path, children)
    with Database.open_sqlite(db_path) as db, db.transaction():
        db.execute(f"UPDATE {TABLE} SET person_id = 'MIS-77' WHERE person_id = ?", (children[1]["la_child_id"],))
    db, who = identities(db_path)
    with db:
        who.find_duplicates()
        first, second = who.table.iter_candidates()
        assert who.identify(first, children[0]["la_child_id"]) is first
        with pytest.raises(Later):
            who.identify(second, children[1]["la_child_id"])
        assert who.has_later and who.waiting == 1
        (again,) = who.second_look_rows()
        assert again.id == second.id and who.waiting == 1
        who.took_second_look_row()
        found = who.identify(again, children[1]["la_child_id"])
        assert found.id == second.id and not found.ledger_found and who.waiting == 0


def test_a_row_with_an_unknown_row_state_waits_and_a_status_this_tool_never_writes_reads_as_pending(
    db_path: Path,
) -> None:
    insert(db_path, list(make_children(2, seed=278)))
    with Database.open_sqlite(db_path) as db, db.transaction():
        db.execute(f"UPDATE {TABLE} SET row_state = 'Archived' WHERE id = 1")
        db.execute(f"UPDATE {TABLE} SET submission_status = 'Queued' WHERE id = 2")
    db, who = identities(db_path)
    with db:
        archived, queued = who.table.iter_candidates()
        with pytest.raises(Skip) as caught:
            who.check_row(archived)
        assert caught.value.key == "unknown row_state"
        who.check_row(queued)
        assert json.loads(queued.json_payload)["la_child_id"] == queued.person_id
