"""store/staging.py as a module: StagingTable's reads, write-back, ledger and in-doubt round trips,
through its public methods as the run (job/pipeline.py, job/rows.py, job/batches.py) uses them.

On real tables: SQLite, and PostgreSQL when available (the ``staging`` fixture).
"""

from __future__ import annotations

import json

from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.ledger import Doubt, InDoubt
from api_pipeline.store.staging import StagingTable
from api_pipeline.store.write_back import RowUpdate
from api_pipeline.timestamps import utc_now
from conftest import Staging, acknowledged, set_payload


def test_candidates_come_in_id_order_a_page_at_a_time_and_rows_sent_are_not_candidates(staging: Staging) -> None:
    children = list(make_children(5, seed=270))
    staging.insert(children)
    with staging.open() as db:
        table = StagingTable(db, staging.table)
        table.ensure_ledger()
        first = list(table.iter_candidates(page_size=2))
        assert [r.person_id for r in first] == [c["la_child_id"] for c in children]
        assert [r.id for r in first] == sorted(r.id for r in first)
        assert all(r.submission_status == "Pending" and r.row_state == "New" and not r.ledger_found for r in first)
        assert table.count_candidates() == 5
        assert [r.id for r in table.iter_candidates(limit=3)] == [r.id for r in first[:3]]
        updates, ledger = acknowledged(staging)
        assert table.write_back(updates[:2], ledger[:2]) == 0
        assert [r.id for r in table.iter_candidates(page_size=2)] == [r.id for r in first[2:]]
        assert table.count_candidates() == 3
        assert len(list(table.iter_candidates(all_rows=True))) == 5


def test_write_back_marks_rows_sent_and_the_ledger_says_what_dfe_holds(staging: Staging) -> None:
    children = list(make_children(3, seed=271))
    staging.insert(children)
    updates, ledger = acknowledged(staging)
    with staging.open() as db:
        table = StagingTable(db, staging.table)
        assert table.ledger_entry(children[0]["la_child_id"]) is None  # before the ledger exists
        table.ensure_ledger()
        assert table.write_back(updates, ledger) == 0
        for written, child in zip(ledger, children, strict=True):
            entry = table.ledger_entry(child["la_child_id"])
            assert entry is not None
            assert (entry.la_child_id, entry.staging_id, entry.receipt, entry.purged) == (
                child["la_child_id"],
                written.staging_id,
                "receipt.json",
                False,
            )
            assert json.loads(entry.record_json or "") == child and entry.record_hash == written.record_hash
        (row,) = table.rows_by_id([ledger[1].staging_id])
        assert row.ledger_found and row.ledger_json == ledger[1].record_json and row.is_sent
    assert [(r["submission_status"], r["api_response"], r["row_state"]) for r in staging.rows()] == [
        ("Sent", "receipt.json", "Unchanged")
    ] * 3
    assert all(r["previous_hash"] == u.previous_hash for r, u in zip(staging.rows(), updates, strict=True))


def test_write_back_leaves_a_row_the_councils_sql_changed_since_it_was_read(staging: Staging) -> None:
    children = list(make_children(2, seed=272))
    staging.insert(children)
    updates, ledger = acknowledged(staging)
    changed = dict(children[1], la_child_id=children[1]["la_child_id"])
    changed["child_details"] = dict(changed["child_details"], first_name="Changed")
    set_payload(staging, children[1]["la_child_id"], changed)
    with staging.open() as db:
        table = StagingTable(db, staging.table)
        table.ensure_ledger()
        assert table.write_back(updates, ledger) == 1
    assert [r["submission_status"] for r in staging.rows()] == ["Sent", "Pending"]


def test_a_note_on_an_unsent_row_is_written_on_one_line_and_leaves_the_row_waiting(staging: Staging) -> None:
    staging.insert(list(make_children(1, seed=273)))
    with staging.open() as db:
        table = StagingTable(db, staging.table)
        table.ensure_ledger()
        (row,) = table.iter_candidates()
        assert table.write_back([RowUpdate.unsent(row, "", "DfE said:\nno")], []) == 0
        assert table.count_candidates() == 1
    (written,) = staging.rows()
    assert written["submission_status"] == "Pending" and "\n" not in written["api_response"]
    assert written["api_response"].startswith("DfE said:")


def test_a_batch_recorded_in_flight_stays_there_until_it_lands_and_its_children_stay_in_doubt_until_a_receipt(
    staging: Staging,
) -> None:
    children = list(make_children(2, seed=274))
    staging.insert(children)
    with staging.open() as db:
        table = StagingTable(db, staging.table)
        assert table.left_in_flight() == [] and table.doubt_outline(children[0]["la_child_id"]) is None
        table.ensure_ledger()
        rows = list(table.iter_candidates())
        outline = '{"child_details":{}}'
        batch = [InDoubt(r.person_id or "", r.id, outline, "batch-1", utc_now()) for r in rows]
        table.write_back([], [], doubt=Doubt(in_flight=batch))
        (left,) = table.left_in_flight()
        assert left.batch_id == "batch-1" and left.readable
        assert [(c.la_child_id, c.staging_id, json.loads(c.outline_json)) for c in left.children] == [
            (r.person_id, r.id, {"child_details": {}}) for r in rows
        ]
        # DfE answered the first child's record with a receipt and nothing usable for the second.
        updates, ledger = acknowledged(staging)
        table.write_back(updates[:1], ledger[:1], doubt=Doubt(landed=["batch-1"], in_doubt=batch[1:]))
        assert table.left_in_flight() == []
        second = children[1]["la_child_id"]
        assert table.doubt_outline(children[0]["la_child_id"]) is None
        assert json.loads(table.doubt_outline(second) or "") == {"child_details": {}}
        assert table.in_doubt_totals()[0] == 1
        (waiting,) = table.iter_candidates()
        assert waiting.person_id == second and waiting.in_doubt
        # A later run's receipt ends the doubt.
        table.write_back(updates[1:], ledger[1:], doubt=Doubt(resolved=[second]))
        assert table.doubt_outline(second) is None and table.in_doubt_totals()[0] == 0


def test_who_is_who_reads_person_ids_duplicates_and_rows_without_one(staging: Staging) -> None:
    children = list(make_children(3, seed=275))
    twin = dict(children[0])
    staging.insert([*children, twin])
    with staging.open() as db, db.transaction():
        db.execute(f"UPDATE {staging.table} SET person_id = NULL WHERE person_id = ?", (children[2]["la_child_id"],))
    with staging.open() as db:
        table = StagingTable(db, staging.table)
        assert table.person_ids() == {children[0]["la_child_id"], children[1]["la_child_id"]}
        assert table.duplicate_person_ids() == {children[0]["la_child_id"].lower()}
        ((row_id, payload),) = list(table.rows_without_person_id())
        assert json.loads(payload) == children[2]
        assert json.loads(table.payload_of(row_id)) == children[2]
        assert [r.id for r in table.rows_by_id([row_id])] == [row_id]
