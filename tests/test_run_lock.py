"""The run lock on SQLite and PostgreSQL (issue 18.4, issue 15.7): one lock per table however
TABLE_NAME spells it, a lock taken over mid-run stops that run, and only a duplicate key means
another run holds it. The SQL Server side is in test_sql_server.py."""

from __future__ import annotations

import os
import re
import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from api_pipeline.errors import DatabaseError, ExitCode, RunLocked
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.columns import LOCK_NAME_SIZE
from api_pipeline.store.lock import RunLock, lock_key
from conftest import Staging, run_cli, staging_on_every_database

# On SQL Server's dialect (Babelfish) too.
staging = staging_on_every_database()


def live_holder(run_id: str) -> str:
    """A holder that is a live process on this machine other than this one (our parent)."""
    return f"{socket.gethostname()} pid {os.getppid()} run {run_id}"


def spellings(staging: Staging) -> list[str]:
    """Three names for the one table: as created, schema-qualified, and in capitals."""
    schema = {"sqlite": "main", "postgresql": "public", "mssql": "dbo"}[staging.kind]
    return [staging.table, f"{schema}.{staging.table}", staging.table.upper()]


def test_one_lock_however_table_name_spells_the_table(staging: Staging, simulator: Simulator, tmp_path: Path):
    """Issue 15.7: three spellings once took three locks on one table and ran at once."""
    staging.insert(list(make_children(3, seed=157)))
    first, qualified, capitals = spellings(staging)
    environ = dict(simulator.settings_env()) | staging.env
    with staging.open() as db:
        holder = RunLock(db, first, run_id="first")
        holder.holder = live_holder("first")
        holder.acquire()
        try:
            for other in (qualified, capitals):
                with pytest.raises(RunLocked, match=f"another run is already working on {other}"):
                    RunLock(db, other, run_id="second").acquire()
                result = run_cli(["run"], environ=environ | {"TABLE_NAME": other}, cwd=tmp_path)
                assert result.code == ExitCode.RUN_IN_PROGRESS, result.err
        finally:
            holder.release()
    assert simulator.request_log() == []
    assert run_cli(["run"], environ=environ | {"TABLE_NAME": capitals}, cwd=tmp_path).code == 0
    assert {row["submission_status"] for row in staging.rows()} == {"Sent"}


def test_a_lock_taken_over_mid_run_stops_the_run_and_marks_nothing_wrongly(
    staging: Staging, simulator: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Issue 18.4: while the first batch is at DfE, another run takes the lock over (as one would
    after an hour without a heartbeat). The run's next heartbeat sees it no longer holds the lock:
    it sends nothing more, records what DfE acknowledged, and stops with exit code 6."""
    monkeypatch.setattr("api_pipeline.store.lock.BEAT_EVERY", timedelta(0))  # beat at every chance
    children = list(make_children(30, seed=184))
    staging.insert(children)
    store = simulator._store_batch
    thief = "otherhost pid 4242 run thief"

    def store_then_lose_the_lock(records: list[dict]) -> list[str]:
        receipts = store(records)
        with staging.open() as other, other.transaction():
            assert other.execute(f"UPDATE {staging.table}_run_lock SET holder = ?", (thief,)) == 1
        return receipts

    monkeypatch.setattr(simulator, "_store_batch", store_then_lose_the_lock)
    environ = dict(simulator.settings_env()) | staging.env | {"BATCH_SIZE": "10"}
    result = run_cli(["run"], environ=environ, cwd=tmp_path)
    assert result.code == ExitCode.RUN_IN_PROGRESS == 6, result.err
    assert f"another run ({thief}) took over the run lock on {staging.table}" in result.err
    # One batch went, and was recorded; nothing was sent after the lock was lost.
    posts = [e for e in simulator.request_log() if e.path.endswith("/children")]
    assert len(posts) == 1
    held = simulator.snapshot()
    rows = staging.rows()
    sent = [r for r in rows if r["submission_status"] == "Sent"]
    assert len(sent) == 10 and {r["person_id"] for r in sent} == set(held) == set(staging.ledger())
    assert all(r["submission_status"] == "Pending" for r in rows if r["person_id"] not in held)
    with staging.open() as db:  # the thief's lock is left alone
        assert db.scalar(f"SELECT holder FROM {staging.table}_run_lock") == thief


def test_a_heartbeat_ahead_of_the_database_clock_counts_from_now(staging: Staging):
    """Issue 22.3: an earlier version wrote its machine's clock; one 2 days fast left a lock that read
    "last active -172800 s ago" and blocked every run for 2 days. Such a heartbeat now counts as
    written when it is found, by the database's clock: refused with a sane age, then stale as any."""
    ahead = timedelta(days=2)
    with staging.open() as db:
        left = RunLock(db, staging.table, run_id="fast")
        left.holder = "otherhost pid 7 run fast"
        left.acquire()
        with db.transaction():
            db.execute(
                f"UPDATE {staging.table}_run_lock SET heartbeat_at = ?",
                (db.dialect.timestamp_param(datetime.now(timezone.utc) + ahead),),
            )
        with pytest.raises(RunLocked) as refused:
            RunLock(db, staging.table, run_id="next").acquire()
        message = str(refused.value)
        assert "(otherhost pid 7 run fast, last active 0 s ago by the database's clock" in message
        skew = re.search(r"its last heartbeat was (\d+) s ahead of the database's clock", message)
        assert skew and abs(int(skew[1]) - ahead.total_seconds()) < 60, message
        assert message.endswith("expires 60 minutes after its last activity, counted from now.")
        ((stored, age),) = db.fetch_all(
            f"SELECT heartbeat_at, {db.dialect.seconds_since('heartbeat_at')} FROM {staging.table}_run_lock"
        )
        assert 0 <= age < 60  # rewritten as the database's now
        if staging.kind == "sqlite":  # in the form the tool's own times take there
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", stored), stored
        time.sleep(1.1)
        RunLock(db, staging.table, run_id="later", stale_after=timedelta(seconds=1)).acquire()  # stale by now


def test_a_lock_row_removed_mid_run_stops_the_run_too(staging: Staging):
    with staging.open() as db:
        lock = RunLock(db, staging.table, run_id="r1")
        lock.acquire()
        lock.heartbeat(force=True)  # still ours
        with staging.open() as other, other.transaction():
            other.execute(f"DELETE FROM {staging.table}_run_lock")
        with pytest.raises(RunLocked, match="was removed"):
            lock.heartbeat(force=True)
        with pytest.raises(RunLocked):  # and every heartbeat after that: no thread sends on
            lock.heartbeat()
        lock.release()


def test_a_missing_grant_is_a_database_error_not_another_run(postgres_table: Staging):
    reader = os.environ.get("CSC_TEST_POSTGRES_ODBC_READER")
    if not reader:
        pytest.skip("CSC_TEST_POSTGRES_ODBC_READER (a SELECT-only role) is not set; .ci/postgres.sh sets it")
    with postgres_table.open() as owner:  # the lock table exists, readable by the reader
        RunLock(owner, postgres_table.table, run_id="r0").acquire()
        with owner.transaction():
            owner.execute(f"DELETE FROM {postgres_table.table}_run_lock")
    reading = Staging("postgresql", reader, postgres_table.table)
    with reading.open() as db, pytest.raises(DatabaseError) as caught:
        RunLock(db, postgres_table.table, run_id="r1").acquire()
    assert not isinstance(caught.value, RunLocked)
    assert "could not take the run lock" in str(caught.value) and "lacks a permission" in str(caught.value)


def test_a_lock_name_too_long_for_a_dba_made_table_is_a_database_error_not_another_run(postgres_table: Staging):
    with postgres_table.open() as db:
        with db.transaction():
            db.execute(
                f"CREATE TABLE {postgres_table.table}_run_lock (lock_name VARCHAR(10) PRIMARY KEY, "
                "holder TEXT NOT NULL, acquired_at TIMESTAMP NOT NULL, heartbeat_at TIMESTAMP NOT NULL)"
            )
        with pytest.raises(DatabaseError) as caught:
            RunLock(db, postgres_table.table, run_id="r1").acquire()
    assert not isinstance(caught.value, RunLocked) and "too long" in str(caught.value)


def test_long_names_get_a_key_that_fits_and_stays_unique():
    short = "dbo.ssd_api_data_staging"
    assert lock_key(short) == short
    long_a, long_b = "s" * 128 + ".a" + "t" * 120, "s" * 128 + ".b" + "t" * 120
    assert len(lock_key(long_a)) == LOCK_NAME_SIZE and lock_key(long_a) == lock_key(long_a)
    assert lock_key(long_a) != lock_key(long_b)
