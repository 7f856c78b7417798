"""job/batches.py as a module: batches sent to the real simulator, their outcomes written back in
the order they were sent, no more in flight than allowed, every batch recorded before it is sent.
On real SQLite staging tables."""

from __future__ import annotations

import hashlib
from pathlib import Path

from api_pipeline.dfe.api import ApiClient
from api_pipeline.dfe.auth import ClientCredentialsAuth
from api_pipeline.dfe.json_text import encode_record
from api_pipeline.dfe.transport import make_session
from api_pipeline.job.batches import Batches, Item, in_case_of
from api_pipeline.job.rows import child_of, parse_payload
from api_pipeline.job.run_files import RunSummary
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from api_pipeline.store.staging import StagingRow, StagingTable
from api_pipeline.store.write_back import RowUpdate
from conftest import TABLE, insert, ledger, rows, settings_for


def test_a_status_is_written_in_the_case_the_table_uses() -> None:
    assert [in_case_of(example, "sent") for example in ("Pending", "PENDING", "pending", "P", "", None)] == [
        "Sent",
        "SENT",
        "sent",
        "Sent",
        "sent",
        "sent",
    ]


def item_for(row: StagingRow) -> Item:
    """A first send of the row's record, as the pipeline prepares it."""
    record = parse_payload(row.json_payload)
    body = encode_record(record)
    text = body.decode("utf-8")
    return Item(row, child_of(record), None, record, body, False, text, hashlib.sha256(body).digest())


def client(sim: Simulator, db_path: Path) -> ApiClient:
    settings = settings_for(sim, db_path)
    session = make_session(settings)
    return ApiClient(settings, session, ClientCredentialsAuth.from_settings(settings, session))


def sent_ids(db_path: Path) -> list[int]:
    """The rows marked sent, read on a connection of their own."""
    with Database.open_sqlite(db_path) as db:
        return [int(r[0]) for r in db.query(f"SELECT id FROM {TABLE} WHERE submission_status = 'Sent' ORDER BY id")]


def test_batches_are_written_back_in_the_order_they_were_sent_and_leave_nothing_in_flight(db_path: Path) -> None:
    children = list(make_children(6, seed=278))
    insert(db_path, children)
    seen: list[list[int]] = []
    with Simulator(latency=0.05) as sim, Database.open_sqlite(db_path) as db:
        table = StagingTable(db, TABLE)
        table.ensure_ledger()
        candidates = list(table.iter_candidates())
        summary = RunSummary(run_id="batches", mode="partial")

        def after_write(_: RunSummary) -> None:
            seen.append(sent_ids(db_path))

        batches = Batches(table, client(sim, db_path), summary, 3, True, on_progress=after_write)
        try:
            for n in range(3):
                batch = [item_for(row) for row in candidates[2 * n : 2 * n + 2]]
                batches.submit(f"batch-{n}", batch, [], [])
            batches.drain()
        finally:
            batches.shutdown()
        assert table.left_in_flight() == []
        held = sim.snapshot()
    ids = [row.id for row in candidates]
    assert seen == [ids[:2], ids[:4], ids]
    assert summary.outcomes["sent"] == 6
    assert set(held) == set(ledger(db_path)) == {c["la_child_id"] for c in children}
    assert [r["submission_status"] for r in rows(db_path)] == ["Sent"] * 6


def test_no_more_than_twice_max_in_flight_batches_wait_to_be_written_back(db_path: Path) -> None:
    """With one request at a time, the third batch is taken only once the first two are written back."""
    insert(db_path, list(make_children(3, seed=279)))
    with Simulator(latency=0.3) as sim, Database.open_sqlite(db_path) as db:
        table = StagingTable(db, TABLE)
        table.ensure_ledger()
        candidates = list(table.iter_candidates())
        summary = RunSummary(run_id="batches", mode="partial")
        batches = Batches(table, client(sim, db_path), summary, 1, True)
        try:
            for n, row in enumerate(candidates):
                batches.submit(f"batch-{n}", [item_for(row)], [], [])
            written_when_the_third_was_taken = summary.outcomes["sent"]
            batches.drain()
        finally:
            batches.shutdown()
    assert written_when_the_third_was_taken == 2
    assert summary.outcomes["sent"] == 3


def test_without_a_sender_outcomes_are_written_at_once_and_only_when_the_run_writes(db_path: Path) -> None:
    insert(db_path, list(make_children(1, seed=280)))
    progress: list[int] = []
    with Database.open_sqlite(db_path) as db:
        table = StagingTable(db, TABLE)
        table.ensure_ledger()
        (row,) = table.iter_candidates()
        note = [RowUpdate.unsent(row, "Invalid", "not valid")]
        for writes in (False, True):
            summary = RunSummary(run_id="validate", mode="partial")
            Batches(table, None, summary, 1, writes, on_progress=lambda s: progress.append(1)).write(note, [])
            assert rows(db_path)[0]["submission_status"] == ("Invalid" if writes else "Pending")
    assert progress == [1, 1]
