"""A database that fails under a run (DESIGN §7, §10; issue 22, items 6 and 7).

PostgreSQL through ODBC, for real: the server ends the run's own session (pg_terminate_backend, as a
restart or an administrator would) between two batches, in the middle of a write-back, or just after
a COMMIT it carried out but whose answer never reached the run. The run connects again once and
finishes; a second loss stops it with exit 3 and the words "connection ... lost", rows not written
back stay pending, and the next run finishes the job. And a SQLite file deleted or replaced while a
run works on it: the run stops with exit 3 naming the file, instead of writing to a file nobody will
read again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from api_pipeline.dfe.payload import records_equal
from api_pipeline.errors import DatabaseError, ExitCode
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from api_pipeline.store.lock import RunLock
from api_pipeline.store.odbc import CONNECTION_LOST
from api_pipeline.store.staging import StagingTable
from conftest import Staging, converged, db_env, end_session, insert, rows, run_cli, settings_for

RECONNECTED = "connected again, and carrying on"


def reconnections(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if RECONNECTED in r.getMessage()]


def end_session_after_write_backs(monkeypatch: pytest.MonkeyPatch, staging: Staging, *which: int) -> None:
    """After the write-backs numbered ``which`` (1: the first batch's) have committed, the server ends the session.

    Only write-backs of a batch's outcomes count, not a batch's record written before it is sent alone."""
    real = StagingTable.write_back
    done = [0]

    def write_back(self: StagingTable, updates, ledger, **doubt) -> int:
        skipped = real(self, updates, ledger, **doubt)
        if not ledger:
            return skipped
        done[0] += 1
        if done[0] in which:
            end_session(staging, self.db)
        return skipped

    monkeypatch.setattr(StagingTable, "write_back", write_back)


# ---------------------------------------------------------------------------
# PostgreSQL: the session ended under the run
# ---------------------------------------------------------------------------


def test_a_session_ended_between_batches_is_opened_again_and_the_run_finishes(
    simulator, postgres_table, monkeypatch, caplog
):
    caplog.set_level(logging.WARNING, logger="api_pipeline")
    postgres_table.insert(list(make_children(40, seed=90)))
    end_session_after_write_backs(monkeypatch, postgres_table, 1)
    summary = execute_run(settings_for(simulator, postgres_table, BATCH_SIZE="10"))
    assert summary.outcomes["sent"] == 40 and summary.problems == 0 and not summary.stopped_early
    assert {row["submission_status"] for row in rows(postgres_table)} == {"Sent"}
    assert len(postgres_table.ledger()) == 40
    converged(postgres_table, simulator)
    (warning,) = reconnections(caplog)
    assert "lost while writing back a batch" in warning and "the driver said" in warning
    with postgres_table.open() as db:  # released at the end, on the new connection
        assert db.scalar(f"SELECT COUNT(*) FROM {postgres_table.table}_run_lock") == 0


def test_a_session_ended_inside_a_write_back_writes_the_whole_batch_again(
    simulator, postgres_table, monkeypatch, caplog
):
    """The transaction dies before its COMMIT: nothing of it was kept, so it is written again from the start."""
    caplog.set_level(logging.WARNING, logger="api_pipeline")
    postgres_table.insert(list(make_children(40, seed=91)))
    real = StagingTable._locked_rows
    calls = [0]

    def locked_rows(self: StagingTable, row_ids):
        found = real(self, row_ids)
        calls[0] += bool(row_ids)  # a batch's outcomes (a record alone locks no rows)
        # The second batch's rows are locked, its ledger entries written: not yet committed.
        if calls[0] == 2 and row_ids:
            end_session(postgres_table, self.db)
        return found

    monkeypatch.setattr(StagingTable, "_locked_rows", locked_rows)
    summary = execute_run(settings_for(simulator, postgres_table, BATCH_SIZE="10"))
    assert calls[0] == 5  # four batches, the second one twice
    assert summary.outcomes["sent"] == 40 and summary.problems == 0
    assert summary.outcomes["changed_during_run"] == 0
    assert {row["submission_status"] for row in rows(postgres_table)} == {"Sent"}
    assert len(postgres_table.ledger()) == 40
    converged(postgres_table, simulator)
    assert len(reconnections(caplog)) == 1


class CuttingProxy:
    """A TCP relay to the PostgreSQL server that, once armed, lets the next COMMIT through to the
    server and then cuts the connection before the server's answer reaches the client: a commit
    that happened, with its answer lost (a network failure at just the wrong moment)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.armed = threading.Event()
        self.dropped_answer = b""  # what the server said to the COMMIT, which the client never got
        self.closed = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._cut: set[int] = set()  # connections (by index) whose next answer is dropped
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        """Stop taking connections: from now on, connecting is refused."""
        self.closed = True
        with suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
        self.listener.close()

    def _accept(self) -> None:
        index = 0
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.closed:
                client.close()
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._to_server, args=(index, client, server), daemon=True).start()
            threading.Thread(target=self._to_client, args=(index, server, client), daemon=True).start()
            index += 1

    def _to_server(self, index: int, client: socket.socket, server: socket.socket) -> None:
        # Only the COMMIT of a transaction that updated rows is cut: a write-back's, never the one
        # that records the next batch in flight on the run's other connection, which may come first.
        updated = False
        with _pumping(client, server):
            while data := client.recv(65536):
                updated = updated or b"UPDATE " in data
                if b"COMMIT\x00" in data:
                    if self.armed.is_set() and updated and b"Q" in data:
                        with self._lock:
                            self.armed.clear()
                            self._cut.add(index)
                    updated = False
                server.sendall(data)

    def _to_client(self, index: int, server: socket.socket, client: socket.socket) -> None:
        with _pumping(server, client):
            while data := server.recv(65536):
                with self._lock:
                    cut = index in self._cut
                if cut:
                    self.dropped_answer = data
                    return
                client.sendall(data)


@contextmanager
def _pumping(*sockets: socket.socket) -> Iterator[None]:
    """Both ends are closed when either direction stops (or fails)."""
    try:
        yield
    except OSError:
        pass
    finally:
        for each in sockets:
            with suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            each.close()


@pytest.fixture
def proxy(postgres_odbc: str) -> Iterator[CuttingProxy]:
    found = re.search(r"(?i)\bPort=(\d+)", postgres_odbc)
    relay = CuttingProxy(int(found.group(1)) if found else 5432)
    try:
        yield relay
    finally:
        relay.close()


def through(relay: CuttingProxy, staging: Staging) -> Staging:
    """The same table, reached through the relay (unencrypted, so that it can see the COMMIT)."""
    text = re.sub(r"(?i)\bPort=\d+", f"Port={relay.port}", staging.connection_string)
    text = re.sub(r"(?i)\bSSLmode=[^;]*;?", "", text).rstrip(";") + ";SSLmode=disable;"
    return Staging("postgresql", text, staging.table)


def test_a_write_back_whose_commit_answer_was_lost_is_written_again_to_the_same_result(
    simulator, postgres_table, proxy, monkeypatch, caplog
):
    """DfE acknowledged the batch, the database committed its write-back, the answer to the COMMIT
    was lost: the run cannot know the commit happened, so it writes the batch again on a new
    connection. Setting rows to values twice leaves them as once: nothing is counted as changed."""
    caplog.set_level(logging.WARNING, logger="api_pipeline")
    postgres_table.insert(list(make_children(40, seed=92)))
    real = StagingTable._locked_rows
    calls = [0]

    def locked_rows(self: StagingTable, row_ids):
        calls[0] += bool(row_ids)  # a batch's outcomes (a record alone locks no rows)
        if calls[0] == 2 and row_ids:  # inside the second batch's write-back: its COMMIT is the next one sent
            proxy.armed.set()
        return real(self, row_ids)

    monkeypatch.setattr(StagingTable, "_locked_rows", locked_rows)
    summary = execute_run(settings_for(simulator, through(proxy, postgres_table), BATCH_SIZE="10"))
    assert b"COMMIT" in proxy.dropped_answer  # the server did commit it; the run never heard so
    assert calls[0] == 5
    assert summary.outcomes["sent"] == 40 and summary.problems == 0
    assert summary.outcomes["changed_during_run"] == 0
    assert {row["submission_status"] for row in rows(postgres_table)} == {"Sent"}
    assert all(row["previous_json_payload"] == row["json_payload"] for row in rows(postgres_table))
    assert len(postgres_table.ledger()) == 40
    converged(postgres_table, simulator)
    assert len(reconnections(caplog)) == 1


def test_a_second_loss_stops_the_run_with_exit_3_saying_the_connection_was_lost(
    simulator, postgres_table, monkeypatch, tmp_path
):
    postgres_table.insert(list(make_children(40, seed=93)))
    end_session_after_write_backs(monkeypatch, postgres_table, 1, 2)
    environ = simulator.settings_env() | postgres_table.env | {"BATCH_SIZE": "10", "MAX_RETRIES": "2"}
    result = run_cli(["run"], environ=environ, cwd=tmp_path)

    assert result.code == ExitCode.DATABASE, result.err
    (line,) = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert "the connection to the database server was lost while the run was working" in line
    assert "stay pending and are sent again next run" in line and "already lost its connection once" in line
    assert "SERVER=" not in line and "firewall" not in line  # the advice for a server never reached
    password = re.search(r"(?i)\bPwd=([^;]+)", postgres_table.connection_string)
    assert password is None or password.group(1) not in result.err
    (summary_file,) = (tmp_path / "logs").glob("*.summary.json")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    assert summary["exit_code"] == 3 and "connection to the database server was lost" in summary["fatal_error"]

    # The first two batches were written (the second after connecting again); the rest stay pending.
    held = simulator.snapshot()
    found = rows(postgres_table)
    assert [row["submission_status"] for row in found].count("Sent") == 20
    assert {row["submission_status"] for row in found} == {"Sent", "Pending"}
    for row in found:
        if row["submission_status"] == "Sent":
            assert records_equal(held.get(row["person_id"]), json.loads(row["json_payload"]))
    monkeypatch.undo()
    summary_again = execute_run(settings_for(simulator, postgres_table, BATCH_SIZE="10"))
    assert summary_again.outcomes["sent"] == 20 and summary_again.problems == 0
    assert {row["submission_status"] for row in rows(postgres_table)} == {"Sent"}
    converged(postgres_table, simulator)


def test_a_server_that_does_not_come_back_stops_the_run_without_the_advice_for_a_wrong_address(
    simulator, postgres_table, proxy, monkeypatch
):
    """The session ends and the server cannot be reached again (here: the relay stops listening)."""
    monkeypatch.setattr("api_pipeline.store.retry.RECONNECT_PAUSES", (0.0, 0.2))
    postgres_table.insert(list(make_children(20, seed=94)))
    real = StagingTable.write_back

    def write_back(self: StagingTable, updates, ledger, **doubt) -> int:
        skipped = real(self, updates, ledger, **doubt)
        if not ledger:
            return skipped  # a batch's record, before it is sent
        proxy.close()
        end_session(postgres_table, self.db)
        return skipped

    monkeypatch.setattr(StagingTable, "write_back", write_back)
    with pytest.raises(DatabaseError) as caught:
        execute_run(settings_for(simulator, through(proxy, postgres_table), BATCH_SIZE="10"))
    text = str(caught.value)
    assert caught.value.kind == CONNECTION_LOST
    assert text.startswith("the connection to the database server was lost while the run was working")
    assert "Connecting again failed for 0 s" in text and "Run again once the server is back" in text
    assert "SERVER=" not in text and "firewall" not in text
    assert [row["submission_status"] for row in rows(postgres_table)].count("Sent") == 10


# ---------------------------------------------------------------------------
# PostgreSQL: what is read again after a loss, and what is not
# ---------------------------------------------------------------------------


def test_a_read_outside_a_transaction_is_run_again_on_a_new_connection_with_the_session_settings(
    postgres_table, caplog
):
    caplog.set_level(logging.WARNING, logger="api_pipeline")
    with postgres_table.open() as db:
        first = db.scalar("SELECT pg_backend_pid()")
        end_session(postgres_table, db)
        assert db.scalar("SELECT 1") == 1
        assert db.scalar("SELECT pg_backend_pid()") != first
        assert db.scalar("SHOW lock_timeout") == "30s"  # _start_session's settings, again
        (warning,) = reconnections(caplog)
        assert "lost while reading from the database" in warning
        end_session(postgres_table, db)  # once a run: the second loss is the caller's
        with pytest.raises(DatabaseError) as caught:
            db.scalar("SELECT 1")
    assert caught.value.kind == CONNECTION_LOST and "already lost its connection once" in str(caught.value)


def test_the_run_lock_is_still_this_runs_after_connecting_again(postgres_table):
    """The lock is a row naming its holder: a new session of the same run goes on beating it."""
    with postgres_table.open() as db, RunLock(db, postgres_table.table, run_id="r22") as lock:
        end_session(postgres_table, db)
        lock.heartbeat(force=True)
        with postgres_table.open() as other:
            sql = f"SELECT holder, heartbeat_at FROM {postgres_table.table}_run_lock"
            ((holder, beat),) = other.fetch_all(sql)
        assert holder == lock.holder and beat is not None
        lock.heartbeat(force=True)  # and again, on the same new connection
    with postgres_table.open() as other:
        assert other.scalar(f"SELECT COUNT(*) FROM {postgres_table.table}_run_lock") == 0


def test_rows_half_read_when_the_connection_goes_are_not_read_again_from_the_start(postgres_table):
    """A result being read cannot be picked up where it stopped: the reader gets the failure (no
    row twice, none skipped), and the next statement connects again."""
    with postgres_table.open() as db:
        numbers = db.query("SELECT g FROM generate_series(1, 5000) AS g ORDER BY g", chunk=10)
        seen = [next(numbers)[0]]
        end_session(postgres_table, db)
        with pytest.raises(DatabaseError) as caught:
            seen.extend(row[0] for row in numbers)
        assert caught.value.kind == CONNECTION_LOST
        assert seen == list(range(1, len(seen) + 1)) and len(seen) < 5000
        assert db.scalar("SELECT COUNT(*) FROM generate_series(1, 5000)") == 5000


# ---------------------------------------------------------------------------
# SQLite: the file deleted or replaced under the run
# ---------------------------------------------------------------------------


def companions(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def on_second_request(simulator: Simulator, action: Callable[[], None]) -> None:
    """``action`` runs when DfE receives the second batch, before it answers: the first batch has
    been answered, and may or may not have been written back yet."""
    real = simulator._receive
    received = [0]

    def receive(*args, **kwargs):
        received[0] += 1
        if received[0] == 2:
            action()
        return real(*args, **kwargs)

    simulator._receive = receive  # type: ignore[method-assign]


def run_stopped_on_the_file(simulator: Simulator, db_path: Path, words: str) -> None:
    environ = simulator.settings_env() | db_env(db_path) | {"BATCH_SIZE": "10", "MAX_RETRIES": "0"}
    result = run_cli(["run"], environ=environ, cwd=db_path.parent)
    assert result.code == ExitCode.DATABASE, result.err
    (line,) = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert str(db_path) in line and words in line
    assert "The SQLite file was deleted or replaced" in line
    (summary_file,) = (db_path.parent / "logs").glob("*.summary.json")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    assert summary["exit_code"] == 3 and summary["stopped_early"] and words in summary["fatal_error"]
    (report,) = (db_path.parent / "logs").glob("*.report.html")
    assert "finished normally" not in report.read_text(encoding="utf-8")


def test_a_sqlite_file_deleted_mid_run_stops_the_run_naming_the_file(simulator, db_path):
    insert(db_path, list(make_children(50, seed=95)))
    on_second_request(simulator, lambda: [each.unlink(missing_ok=True) for each in companions(db_path)])
    run_stopped_on_the_file(simulator, db_path, "was deleted or moved away while the run was working")
    assert not db_path.exists()


def test_a_sqlite_file_replaced_mid_run_stops_the_run_naming_the_file(simulator, db_path):
    insert(db_path, list(make_children(50, seed=96)))
    older = db_path.with_name("older-copy.db")
    shutil.copyfile(db_path, older)  # the table before the run, as a backup would have it

    def put_back_the_copy() -> None:
        os.replace(older, db_path)
        for each in companions(db_path)[1:]:
            each.unlink(missing_ok=True)

    on_second_request(simulator, put_back_the_copy)
    run_stopped_on_the_file(simulator, db_path, "was replaced by another file while the run was working")
    # The file now at the path is the copy: nothing the run wrote went into it.
    assert {row["submission_status"] for row in rows(db_path)} == {"Pending"}


def test_a_sqlite_file_deleted_after_the_last_write_back_is_noticed_when_the_run_ends(db_path):
    with Database.open_sqlite(db_path) as db:
        db.prepare_for_bulk_writes()
        StagingTable(db, "ssd_api_data_staging").create_ledger()
        for each in companions(db_path):
            each.unlink(missing_ok=True)
        with pytest.raises(DatabaseError, match="was deleted or moved away"):
            db.finish_bulk_writes()


def test_a_sqlite_file_deleted_outside_wal_mode_is_named_not_called_read_only(db_path):
    """Outside WAL mode SQLite itself refuses the write (SQLITE_READONLY_DBMOVED): the message says why."""
    with Database.open_sqlite(db_path) as db:
        db_path.unlink()
        with pytest.raises(DatabaseError, match="was deleted or moved away") as caught:
            StagingTable(db, "ssd_api_data_staging").create_ledger()
    assert "readonly" not in str(caught.value)
