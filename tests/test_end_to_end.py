"""The real pipeline against the real simulator over loopback HTTP and a real database.

Every test runs three times through the ``staging`` fixture: on a SQLite file, on
PostgreSQL through pyodbc and psqlODBC, and on SQL Server's dialect (Babelfish) through
pyodbc and FreeTDS (each skipped, with the reason, when no server).
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import pytest

from api_pipeline.errors import DatabaseError
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.demo import apply_nightly_changes
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from api_pipeline.store.staging import StagingTable
from conftest import (
    TABLE,
    Staging,
    converged,
    insert,
    ledger,
    mark_deleted,
    rows,
    run_cli,
    sent_records,
    set_payload,
    settings_for,
    staging_on_every_database,
)

# On SQL Server's dialect (Babelfish) too.
staging = staging_on_every_database()


def return_children(db: Database, table: str, la_child_ids: Iterable[str]) -> list[str]:
    """Children who come back into the cohort after being deleted: ``Pending``/``New`` again."""
    back = []
    with db.transaction():
        for la_child_id in la_child_ids:
            db.execute(
                f"UPDATE {table} SET row_state = 'New', submission_status = 'Pending', last_updated = ? "
                "WHERE person_id = ?",
                (datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), la_child_id),
            )
            back.append(la_child_id)
    return back


def test_full_load_sends_every_child_and_fills_the_ledger(simulator, staging):
    children = list(make_children(60, seed=7))
    insert(staging, children)
    summary = execute_run(settings_for(simulator, staging, BATCH_SIZE="25"))
    assert summary.outcomes["sent"] == 60 and summary.problems == 0
    assert summary.batches == 3 and summary.requests == 3
    for row in rows(staging):
        assert row["submission_status"] == "Sent"  # the table's own case style
        assert row["row_state"] == "Unchanged"
        assert row["previous_json_payload"] == row["json_payload"]
        assert row["api_response"].endswith(".json")
        assert row["submission_timestamp"]
        assert len(row["previous_hash"]) == 32
    assert set(ledger(staging)) == {c["la_child_id"] for c in children}
    converged(staging, simulator)


def test_nothing_to_do_sends_nothing(simulator, staging):
    insert(staging, list(make_children(5, seed=3)))
    execute_run(settings_for(simulator, staging))
    simulator.clear_log()
    summary = execute_run(settings_for(simulator, staging))
    assert summary.rows_read == 0 and summary.requests == 0
    assert simulator.request_log() == []


@pytest.mark.parametrize("mode", ["partial", "full"])
def test_changes_converge_and_partial_sends_only_changed_entities(simulator, staging, mode):
    children = list(make_children(80, seed=11))
    insert(staging, children)
    settings = settings_for(simulator, staging, USE_PARTIAL_PAYLOAD="true" if mode == "partial" else "false")
    execute_run(settings)
    first_bytes = sum(len(e.body) for e in simulator.request_log() if e.body)

    by_id = {c["la_child_id"]: c for c in children}
    with staging.open() as db:
        night = apply_nightly_changes(db, staging.table, random.Random(5), update_fraction=0.2, delete_fraction=0.05)
    # Hand-made edits of each kind, on children the random night left alone.
    ids = [i for i in by_id if i not in set(night.updated) | set(night.deleted)]
    scalar = copy.deepcopy(by_id[ids[0]])
    scalar["child_details"]["sex"] = "F" if scalar["child_details"].get("sex") != "F" else "M"
    set_payload(staging, ids[0], scalar)
    ids[1] = next(i for i in ids[1:] if len(by_id[i].get("social_care_episodes", [])) > 1)
    no_episodes = copy.deepcopy(by_id[ids[1]])
    no_episodes["social_care_episodes"] = no_episodes["social_care_episodes"][1:]
    set_payload(staging, ids[1], no_episodes)
    ids[2] = next(i for i in ids[2:] if "health_and_wellbeing" in by_id[i] and i != ids[1])
    no_health = copy.deepcopy(by_id[ids[2]])
    no_health.pop("health_and_wellbeing")
    set_payload(staging, ids[2], no_health)
    ids[3] = next(i for i in ids[3:] if i not in ids[:3])
    mark_deleted(staging, ids[3])
    simulator.clear_log()

    summary = execute_run(settings)
    assert summary.problems == 0
    converged(staging, simulator)

    touched = set(night.updated) | set(night.deleted) | {ids[0], ids[1], ids[2], ids[3]}
    sent = sent_records(simulator)
    assert {r["la_child_id"] for r in sent} == touched
    purges = {r["la_child_id"] for r in sent if r.get("purge") is True}
    assert purges == set(night.deleted) | {ids[3]}
    if mode == "partial":
        only_scalar = next(r for r in sent if r["la_child_id"] == ids[0])
        assert set(only_scalar) <= {"la_child_id", "mis_child_id", "purge", "child_details"}
        second_bytes = sum(len(e.body) for e in simulator.request_log() if e.body)
        assert second_bytes < first_bytes * 0.5
    removed_episode = next(r for r in sent if r["la_child_id"] == ids[1])
    purged_ids = [
        e["social_care_episode_id"] for e in removed_episode.get("social_care_episodes", []) if e.get("purge")
    ]
    assert purged_ids == [by_id[ids[1]]["social_care_episodes"][0]["social_care_episode_id"]]
    health = next(r for r in sent if r["la_child_id"] == ids[2])
    assert health["health_and_wellbeing"] == {"purge": True}

    # Deleted children are purged once: the LA's SQL marks them Deleted again, nothing is re-sent.
    deleted_row = next(r for r in rows(staging) if r["person_id"] == ids[3])
    assert deleted_row["submission_status"] == "Sent" and deleted_row["row_state"] == "Deleted"
    assert ledger(staging)[ids[3]]["purged"] is True
    simulator.clear_log()
    again = execute_run(settings)
    assert again.requests == 0


def test_child_returning_after_purge_is_sent_whole(simulator, staging):
    children = list(make_children(10, seed=21))
    insert(staging, children)
    settings = settings_for(simulator, staging)
    execute_run(settings)
    gone = children[4]["la_child_id"]
    mark_deleted(staging, gone)
    execute_run(settings)
    assert gone not in simulator.snapshot()
    with staging.open() as db:
        return_children(db, staging.table, [gone])
    simulator.clear_log()
    execute_run(settings)
    (record,) = sent_records(simulator)
    assert record["la_child_id"] == gone
    assert len(record.get("social_care_episodes", [])) == len(children[4].get("social_care_episodes", []))
    converged(staging, simulator)


def test_names_arrive_byte_for_byte(simulator, staging):
    child = next(make_children(1, seed=1))
    child["child_details"]["first_name"] = "Zoë"
    child["child_details"]["surname"] = "O'Brien"
    insert(staging, [child])
    execute_run(settings_for(simulator, staging))
    (entry,) = [e for e in simulator.request_log() if e.path.endswith("/children")]
    assert "Zoë".encode() in entry.body and b"O'Brien" in entry.body
    assert b"\\u00eb" not in entry.body
    held = simulator.snapshot()[child["la_child_id"]]
    assert held["child_details"]["first_name"] == "Zoë" and held["child_details"]["surname"] == "O'Brien"


def test_invalid_record_is_not_sent_and_the_rest_of_the_batch_is(simulator, staging):
    children = list(make_children(100, seed=9))
    bad = children[42]
    bad["social_care_episodes"][0]["referral_source"] = "ABC"
    insert(staging, children)
    summary = execute_run(settings_for(simulator, staging))
    assert summary.outcomes["sent"] == 99 and summary.outcomes["invalid"] == 1
    assert bad["la_child_id"] not in {r["la_child_id"] for r in sent_records(simulator)}
    row = next(r for r in rows(staging) if r["person_id"] == bad["la_child_id"])
    assert row["submission_status"] == "Invalid"
    assert "social_care_episodes[0].referral_source" in row["api_response"]
    assert "longer than 2 characters" in row["api_response"]
    # Not retried until its payload changes.
    simulator.clear_log()
    assert execute_run(settings_for(simulator, staging)).rows_read == 0


def test_dry_run_writes_bodies_and_changes_nothing(simulator, staging, tmp_path):
    insert(staging, list(make_children(30, seed=2)))
    before = rows(staging)
    out = tmp_path / "review"
    summary = execute_run(settings_for(simulator, staging, BATCH_SIZE="10"), dry_run_dir=out)
    assert summary.outcomes["dry_run"] == 30
    assert rows(staging) == before
    assert simulator.request_log() == [] and simulator.token_requests == 0
    files = sorted(out.glob("*.json"))
    assert len(files) == 3
    assert sum(len(json.loads(f.read_text(encoding="utf-8"))) for f in files) == 30


def test_row_changed_during_the_run_stays_pending(simulator, staging):
    """Optimistic concurrency: the council's SQL rewrites a row between our read and our write-back."""
    children = list(make_children(3, seed=4))
    insert(staging, children)
    settings = settings_for(simulator, staging)
    newer = copy.deepcopy(children[1])
    newer["child_details"]["ethnicity"] = "WIRI"

    from api_pipeline.job import runner
    from api_pipeline.job.pipeline import Pipeline

    real_flush = Pipeline._flush

    def flush_after_council_edit(self):
        if self._batch:
            set_payload(staging, children[1]["la_child_id"], newer)
        real_flush(self)

    Pipeline._flush = flush_after_council_edit
    try:
        summary = runner.execute_run(settings)
    finally:
        Pipeline._flush = real_flush
    assert summary.outcomes["changed_during_run"] == 1
    row = next(r for r in rows(staging) if r["person_id"] == children[1]["la_child_id"])
    assert row["submission_status"] == "Pending"
    # The ledger still records what DfE acknowledged, so the next run sends only the change.
    simulator.clear_log()
    execute_run(settings)
    (record,) = sent_records(simulator)
    assert record["la_child_id"] == children[1]["la_child_id"]
    assert record["child_details"]["ethnicity"] == "WIRI"
    converged(staging, simulator)


def test_lower_case_statuses_are_understood(simulator, staging):
    insert(staging, list(make_children(4, seed=8)), status="pending", state="new")
    execute_run(settings_for(simulator, staging))
    assert {r["submission_status"] for r in rows(staging)} == {"sent"}
    assert {r["row_state"] for r in rows(staging)} == {"unchanged"}


def test_a_run_puts_sqlite_in_wal_mode_and_status_does_not(simulator, db_path, tmp_path):
    """Write-ahead logging for a run's many small commits; read-only commands leave the file alone."""
    insert(db_path, list(make_children(3, seed=15)))
    environ = dict(simulator.settings_env()) | {"DB_CONNECTION_STRING": f"sqlite:///{db_path}"}
    assert run_cli(["status"], environ=environ, cwd=tmp_path).code == 0
    with Database.open_sqlite(db_path) as db:
        assert list(db.query("PRAGMA journal_mode")) == [("delete",)]
    execute_run(settings_for(simulator, db_path))
    with Database.open_sqlite(db_path) as db:
        assert list(db.query("PRAGMA journal_mode")) == [("wal",)]


@pytest.mark.parametrize("keyed", [True, False], ids=["ledger with its key", "ledger made without a key"])
def test_write_back_replaces_ledger_entries(staging: Staging, keyed: bool, caplog: pytest.LogCaptureFixture) -> None:
    """One entry per child, the newest, whether the ledger is updated in place (its key) or
    not: a ledger made by hand without the key gets a warning and the delete-and-insert way."""
    from datetime import datetime

    from api_pipeline.store.ledger import LedgerEntry
    from api_pipeline.store.staging import StagingTable
    from api_pipeline.store.tables import ledger_ddl

    at = datetime(2026, 3, 8, 21, 4, 33)

    def entry(child: str, receipt: str, record: dict | None, purged: bool = False) -> LedgerEntry:
        text = None if record is None else json.dumps(record)
        return LedgerEntry(child, None, 1, text, None, receipt, at, purged)

    with staging.open() as db:
        table = StagingTable(db, staging.table)
        if keyed:
            table.create_ledger()
        else:
            with db.transaction():
                db.execute(ledger_ddl(db.dialect, table.ledger).replace(" PRIMARY KEY", ""))
        table.write_back([], [entry("C1", "r1", {"v": 1}), entry("C2", "r1", {"v": 1})])
        table.write_back([], [entry("C1", "r2", {"v": 2}), entry("C3", "r2", None, purged=True)])
        table.write_back([], [entry("C2", "r3", {"v": 3})])
        counts = dict(db.query(f"SELECT la_child_id, COUNT(*) FROM {table.ledger} GROUP BY la_child_id"))
    assert counts == {"C1": 1, "C2": 1, "C3": 1}
    assert ledger(staging) == {
        "C1": {"record": {"v": 2}, "receipt": "r2", "purged": False},
        "C2": {"record": {"v": 3}, "receipt": "r3", "purged": False},
        "C3": {"record": None, "receipt": "r2", "purged": True},
    }
    warned = [r for r in caplog.records if "no primary key on la_child_id" in r.getMessage()]
    # SQL Server's dialect always deletes and inserts, so it never needs the key and never warns.
    assert len(warned) == (0 if keyed or staging.kind == "mssql" else 1)


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-checkpoint"]


def test_bulk_writes_tune_sqlite_and_finish_with_the_log_copied_in(db_path, monkeypatch):
    """A run's connection keeps a bigger page cache, and whatever of the write-ahead log is
    not yet in the database is copied in when the run finishes (before its time is taken)."""
    from api_pipeline.store import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "CHECKPOINT_EVERY", 3600.0)  # no background pass in this test
    insert(db_path, list(make_children(3, seed=16)))
    marker = b"written-by-this-test-7f3a"
    with Database.open_sqlite(db_path) as db:
        db.finish_bulk_writes()  # not prepared: nothing to do
        db.prepare_for_bulk_writes()
        assert list(db.query("PRAGMA cache_size")) == [(-sqlite_module.BULK_CACHE_KIB,)]
        assert list(db.query("PRAGMA wal_autocheckpoint")) == [(sqlite_module.BULK_CHECKPOINT_PAGES,)]
        assert len(_checkpointers()) == 1
        with db.transaction():
            db.execute(f"UPDATE {TABLE} SET api_response = ?", (marker.decode(),))
        assert marker not in db_path.read_bytes()  # committed to the log only
        db.finish_bulk_writes()
        assert marker in db_path.read_bytes()
        assert _checkpointers() == []
        db.prepare_for_bulk_writes()
    assert _checkpointers() == []  # closing the connection stops it too


def test_the_background_checkpointer_copies_the_log_and_keeps_it_short(db_path, monkeypatch):
    """While a run commits, a thread of its own copies the log into the database; once the
    log holds RESTART_FRAMES pages it is started over, so the -wal file stops growing."""
    from api_pipeline.store import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "CHECKPOINT_EVERY", 0.02)
    monkeypatch.setattr(sqlite_module, "RESTART_FRAMES", 1)
    insert(db_path, list(make_children(3, seed=17)))
    wal = Path(f"{db_path}-wal")
    sizes = []
    with Database.open_sqlite(db_path) as db:
        db.prepare_for_bulk_writes()
        for n in range(8):
            marker = f"commit-{n}-of-this-test".encode()
            with db.transaction():  # 18 KB a row: a few pages each commit
                db.execute(f"UPDATE {TABLE} SET api_response = ?", (marker.decode() + "x" * 18_000,))
            deadline = time.monotonic() + 20
            while marker not in db_path.read_bytes():  # copied in by the background thread
                assert time.monotonic() < deadline, f"commit {n} never reached the database file"
                time.sleep(0.02)
            sizes.append(wal.stat().st_size)
        db.finish_bulk_writes()
    assert max(sizes) < 3 * sizes[0], sizes  # without restarts: about 8 times the first


def test_during_bulk_writes_pages_are_read_while_a_batch_is_being_written(db_path):
    """SQLite in WAL mode: the run's pages of rows come from a connection of their own, so a
    write-back in progress (its transaction open, the writer's lock held) holds no page back,
    and the page shows what is committed, not the write under way."""
    children = list(make_children(4, seed=18))
    insert(db_path, children)
    with Database.open_sqlite(db_path) as db:
        table = StagingTable(db, TABLE)
        table.ensure_ledger()
        assert db.reader is db  # not a run: one connection, taking turns
        db.prepare_for_bulk_writes()
        assert db.reader is not db
        with pytest.raises(DatabaseError):
            db.reader.execute(f"UPDATE {TABLE} SET api_response = 'x'")  # it only reads
        writing, done = threading.Event(), threading.Event()

        def write_back() -> None:
            with db.transaction():
                db.execute(f"UPDATE {TABLE} SET submission_status = 'Invalid'")
                writing.set()
                done.wait(30)

        writer = threading.Thread(target=write_back)
        writer.start()
        assert writing.wait(10)
        pages: list = []
        reading = threading.Thread(target=lambda: pages.extend(table.iter_candidates()))
        reading.start()
        reading.join(10)
        finished_while_writing = not reading.is_alive()
        done.set()
        writer.join()
        reading.join()
        assert finished_while_writing, "the page waited for the write-back"
        assert [r.person_id for r in pages] == [c["la_child_id"] for c in children]  # none yet 'Invalid'
        assert list(table.iter_candidates()) == []  # committed now
        db.finish_bulk_writes()
        assert db.reader is db


def test_a_runs_outcomes_are_counted_under_the_summarys_outcome_keys(simulator, staging):
    from api_pipeline.job.run_files import OUTCOME_KEYS

    insert(staging, list(make_children(30, seed=5)))
    first = execute_run(settings_for(simulator, staging))
    with staging.open() as db:
        apply_nightly_changes(db, staging.table, random.Random(5))
    second = execute_run(settings_for(simulator, staging))
    assert set(first.outcomes) | set(second.outcomes) <= set(OUTCOME_KEYS)
